"""Readiness and metrics on the real test control plane.

Readiness follows the kube-apiserver and S3 going away and coming back, each through its
own loopback TCP proxy (``tests.faults.TcpProxy``), with no restart of the service. The
metrics follow jobs that complete, fail and are aborted on the Kubernetes backend, read
by several services at once (as several instances of a function would): each job's end
is counted once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient

from ocps_jobs.composition import build_service
from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import Caller, JobRecord, JobRequest, Phase
from ocps_jobs.service import JobService
from ocps_jobs.uploader.record import final_record
from ocps_jobs.uploader.upload import Uploader
from tests.cluster.conftest import ControlPlane, cluster_settings
from tests.cluster.test_cluster_faults import proxied_kubeconfig
from tests.faults import TcpProxy
from tests.helpers import wait_until
from tests.test_observability import scrape, value

ANYONE = Caller(name="", admin=True)


@pytest.fixture
def api_proxy(control_plane: ControlPlane) -> Iterator[TcpProxy]:
    """A cuttable loopback proxy in front of the test apiserver."""
    import yaml

    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    server = urlsplit(config["clusters"][0]["cluster"]["server"])
    assert server.hostname == "127.0.0.1" and server.port
    with TcpProxy((server.hostname, server.port)) as proxy:
        yield proxy


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[TcpProxy]:
    """A cuttable loopback proxy in front of moto's S3 server."""
    upstream = urlsplit(s3_endpoint)
    assert upstream.hostname and upstream.port
    with TcpProxy((upstream.hostname, upstream.port)) as proxy:
        yield proxy


def test_readiness_follows_the_apiserver_and_s3_down_and_up(
    control_plane: ControlPlane,
    namespace: str,
    bucket: str,
    tmp_path: Path,
    api_proxy: TcpProxy,
    s3_proxy: TcpProxy,
) -> None:
    settings = cluster_settings(
        control_plane,
        namespace,
        s3_proxy.url,
        bucket,
        tmp_path,
        kubeconfig=proxied_kubeconfig(control_plane, api_proxy, tmp_path),
    )
    service = build_service(settings)
    service.store.ensure_ready()
    client = create_embedded_app(service).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    report = ready.get_json()
    assert report["backend"]["reachable"] is True
    assert report["settings"]["namespace"] == namespace
    client.get("/api/v1/job")  # starts the watches: readiness now waits for them too
    wait_until(lambda: client.get("/readyz").get_json()["backend"]["watch"] == "synced")

    api_proxy.cut()
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.get_json()["failing"] == ["backend"]
    assert "Kubernetes" in down.get_json()["backend"]["error"]
    assert client.get("/healthz").status_code == 200
    api_proxy.restore()
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout=30)

    s3_proxy.cut()
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.get_json()["failing"] == ["object_store"]
    s3_proxy.restore()
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout=30)

    errors = scrape(client)
    assert value(errors, "ocps_backend_errors_total", system="kubernetes", action="list jobs") > 0
    assert value(errors, "ocps_backend_errors_total", system="s3", action="head bucket") > 0


def act_as_sidecar(service: JobService, record: JobRecord, tmp_path: Path) -> None:
    """What the uploader does in the pod of a job that succeeded: outputs, manifest, job.json."""
    output = tmp_path / record.job_id / "out"
    output.mkdir(parents=True)
    (output / "result.txt").write_text("1234567890")
    manifest = Uploader(service.store, record.job_id, output).finish(exitCode=0)
    seed = json.loads(record.model_dump_json(exclude={"environment"}))
    archived = final_record(seed, manifest, 0, "")
    service.store.put_bytes(
        f"jobs/{record.job_id}/job.json", json.dumps(archived).encode(), "application/json"
    )


def final_phase(service: JobService, job_id: str) -> Phase:
    phase: Phase = wait_until(
        lambda: (
            (phase := service.get_job(job_id, ANYONE).phase)
            in {Phase.COMPLETED, Phase.ERROR, Phase.ABORTED}
            and phase
        ),
        timeout=30,
    )
    return phase


def test_metrics_follow_the_jobs_on_the_control_plane(
    make_cluster_service: Callable[..., JobService],
    namespace: str,
    tmp_path: Path,
) -> None:
    plain = make_cluster_service()
    failing = make_cluster_service(
        pod_annotations={"ocps.test/exit-code": "3", "ocps.test/exit-message": "boom"}
    )
    slow = make_cluster_service(pod_annotations={"ocps.test/run-seconds": "60"})
    client: FlaskClient = create_embedded_app(plain).test_client()
    before = scrape(client)

    succeeded = plain.create_job(JobRequest(command="echo ok"), ANYONE)
    failed = failing.create_job(JobRequest(command="exit 3"), ANYONE)
    aborted = slow.create_job(JobRequest(command="sleep 60"), ANYONE)
    wait_until(lambda: slow.get_job(aborted.job_id, ANYONE).phase is Phase.EXECUTING, timeout=30)
    assert slow.abort_job(aborted.job_id, ANYONE, wait=10).phase is Phase.ABORTED
    wait_until(lambda: plain.get_job(succeeded.job_id, ANYONE).phase is Phase.EXECUTING, timeout=30)
    act_as_sidecar(plain, plain.get_job(succeeded.job_id, ANYONE), tmp_path)

    # Every service reads every job, several times: as instances behind one route would.
    expected = {
        succeeded.job_id: Phase.COMPLETED,
        failed.job_id: Phase.ERROR,
        aborted.job_id: Phase.ABORTED,
    }
    for service in (plain, failing, slow):
        for job_id, phase in expected.items():
            assert final_phase(service, job_id) is phase
            service.get_job(job_id, ANYONE)
    for service in (plain, failing, slow):
        assert service.events.flush(15)
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("ocps_jobs_created_total") == 3
    assert moved("ocps_jobs_ended_total", phase="completed") == 1
    assert moved("ocps_jobs_ended_total", phase="error") == 1
    assert moved("ocps_jobs_ended_total", phase="aborted") == 1
    assert moved("ocps_job_executing_seconds_count", phase="completed") == 1
    assert moved("ocps_results_uploaded_files_total") == 1
    assert moved("ocps_results_uploaded_bytes_total") == 10
    assert value(after, "ocps_jobs_current", phase="completed") == 1
    assert value(after, "ocps_jobs_current", phase="error") == 1
    assert value(after, "ocps_jobs_current", phase="aborted") == 1
