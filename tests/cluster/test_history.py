"""History past the Kubernetes TTL: jobs whose Job is gone stay listed until destroyed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from lxml import etree
from waitress import create_server

from ocps_jobs import cli
from ocps_jobs.conventions import archive_key, job_name
from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import Caller, JobRequest, Phase, utcnow
from ocps_jobs.objectstore.history import HISTORY_ROOT
from ocps_jobs.service import JobService, ListQuery
from ocps_jobs.uploader.record import index_record
from tests.cluster.test_kubernetes_backend import act_as_sidecar, job_condition
from tests.helpers import wait_until

ALICE = Caller(name="alice")
BOB = Caller(name="bob")
ADMIN = Caller(name="root", admin=True)
UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"


def job_gone(kube: k8s.ApiClient, namespace: str, job_id: str) -> bool:
    """True once Kubernetes (the TTL controller) has removed the job's Job object."""
    try:
        k8s.BatchV1Api(kube).read_namespaced_job(job_name(job_id), namespace)
    except ApiException as error:
        return error.status == 404
    return False


def archive_as_uploader(service: JobService, job_id: str, tmp_path: Path) -> None:
    """What the uploader does at the end: outputs, manifest, job.json and its history entry."""
    act_as_sidecar(service, job_id, tmp_path)
    index_record(service.store, json.loads(service.store.get_bytes(archive_key(job_id)) or b""))


def history_keys(service: JobService) -> list[str]:
    return [info.key for info in service.store.list_objects(HISTORY_ROOT)]


def uws_ids(client: object, query: str) -> list[str]:
    response = client.get(f"/uws/async?{query}")  # type: ignore[attr-defined]
    assert response.status_code == 200
    return [ref.get("id") for ref in etree.fromstring(response.data).iter(f"{UWS}jobref")]


@pytest.fixture
def served(cluster_history_service: JobService) -> Iterator[str]:
    """The embedded app on the Kubernetes backend over a real socket, for the CLI."""
    server = create_server(
        create_embedded_app(cluster_history_service), host="127.0.0.1", port=0, threads=4
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    host, port = server.socket.getsockname()[:2]
    yield f"http://{host}:{port}"
    server.close()
    thread.join(timeout=5)


@pytest.fixture
def cluster_history_service(make_cluster_service: Callable[..., JobService]) -> JobService:
    """Jobs removed by Kubernetes 3 s after they finish, as the TTL controller does."""
    return make_cluster_service(job_ttl_seconds=3)


def test_jobs_removed_by_the_ttl_stay_in_every_list(
    cluster_history_service: JobService,
    served: str,
    kube: k8s.ApiClient,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = cluster_history_service
    client = create_embedded_app(service).test_client()
    started = utcnow() - timedelta(seconds=1)
    # by_uploader: the uploader indexed it; by_list: only a list saw it finish (no read).
    by_uploader = client.put("/api/v1/job", json={"command": "true"}).get_json()["jobId"]
    time.sleep(1.1)  # creation times are to the second: one apart, oldest first is clear
    by_list = client.put("/api/v1/job", json={"command": "true"}).get_json()["jobId"]
    alices = service.create_job(JobRequest(command="true"), ALICE).job_id
    for job_id in (by_uploader, by_list, alices):
        wait_until(lambda job_id=job_id: job_condition(kube, namespace, job_id, "Complete"))
    archive_as_uploader(service, by_uploader, tmp_path / "a")
    archive_as_uploader(service, alices, tmp_path / "c")
    act_as_sidecar(service, by_list, tmp_path / "b")  # job.json, but no history entry
    wait_until(
        lambda: (
            {r.job_id: r.phase for r in service.list_jobs(ADMIN)}.get(by_list) is Phase.COMPLETED
        )
    )
    for job_id in (by_uploader, by_list, alices):
        wait_until(lambda job_id=job_id: job_gone(kube, namespace, job_id), timeout=60)
    live = service.create_job(JobRequest(command="sleep"), Caller(), start=False).job_id
    finished = [by_uploader, by_list]

    # JSON, as the CSC asks: every job, oldest first, the archived ones included.
    listed = client.get("/api/v1/job").get_json()
    assert [job["jobId"] for job in listed] == [*finished, live]
    assert [job["phase"] for job in listed] == ["completed", "completed", "pending"]
    assert client.get("/api/v1/job?phase=completed").get_json() == listed[:2]
    # JSON pages: newest first, a Link to the next page, whose cursor continues it.
    first = client.get("/api/v1/job?limit=2")
    assert [job["jobId"] for job in first.get_json()] == [live, by_list]
    link = first.headers["Link"]
    assert link.endswith('; rel="next"')
    second = client.get(link[1 : link.index(">")])
    assert [job["jobId"] for job in second.get_json()] == [by_uploader]
    assert "Link" not in second.headers

    # UWS: LAST, AFTER, PHASE over the history too.
    assert uws_ids(client, "LAST=2") == [live, by_list]
    assert uws_ids(client, "PHASE=COMPLETED") == finished
    assert uws_ids(client, f"AFTER={started:%Y-%m-%dT%H:%M:%SZ}&PHASE=COMPLETED&LAST=5") == [
        by_list,
        by_uploader,
    ]

    # The CLI, as a user runs it against the server.
    assert cli.main(["list", "--url", served, "--json"]) == cli.EXIT_OK
    assert [job["jobId"] for job in json.loads(capsys.readouterr().out)] == [*finished, live]
    assert cli.main(["list", "--url", served, "--json", "--limit", "1"]) == cli.EXIT_OK
    out = capsys.readouterr()
    assert [job["jobId"] for job in json.loads(out.out)] == [live]
    cursor = out.err.strip().rsplit(" ", 1)[1]
    arguments = ["list", "--url", served, "--json", "--limit", "5", "--cursor", cursor]
    assert cli.main(arguments) == cli.EXIT_OK
    assert [job["jobId"] for job in json.loads(capsys.readouterr().out)] == finished[::-1]

    # Owner isolation: alice's archived job is hers (and an admin's) only.
    assert [r.job_id for r in service.list_jobs(ALICE)] == [alices]
    assert service.list_jobs(BOB) == []
    assert alices in [r.job_id for r in service.list_jobs(ADMIN, ListQuery(last=10))]

    # Destruction (a DELETE) removes a job from the history too.
    assert client.delete(f"/api/v1/job/{by_list}").status_code == 200
    assert [job["jobId"] for job in client.get("/api/v1/job").get_json()] == [by_uploader, live]
    assert not [key for key in history_keys(service) if by_list in key]


def test_sweep_destroys_archived_jobs_whose_job_is_gone(
    cluster_history_service: JobService, kube: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    service = cluster_history_service
    destruction = utcnow() + timedelta(seconds=12)
    doomed = service.create_job(JobRequest(command="true"), Caller(), destruction=destruction)
    kept = service.create_job(JobRequest(command="true"), Caller())
    for job_id in (doomed.job_id, kept.job_id):
        wait_until(lambda job_id=job_id: job_condition(kube, namespace, job_id, "Complete"))
        archive_as_uploader(service, job_id, tmp_path / job_id)
    for job_id in (doomed.job_id, kept.job_id):
        wait_until(lambda job_id=job_id: job_gone(kube, namespace, job_id), timeout=60)
    assert service.destroy_expired() == []  # not yet: destruction still ahead
    wait_until(lambda: utcnow() > destruction, timeout=30, interval=0.5)
    assert service.list_jobs(Caller()) == [service.get_job(kept.job_id, Caller())]
    assert service.destroy_expired() == [doomed.job_id]
    assert service.store.list_objects(f"jobs/{doomed.job_id}/") == []
    assert not [key for key in history_keys(service) if doomed.job_id in key]
    assert [r.job_id for r in service.list_jobs(Caller())] == [kept.job_id]
    assert service.destroy_expired() == []
