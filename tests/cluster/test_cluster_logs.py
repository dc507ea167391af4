"""Job logs on the test control plane: KWOK serves a file as each pod's log through the
apiserver's own ``pods/log`` endpoint (a ``Logs`` object per pod), live and after the Job."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from ocps_jobs.conventions import LABEL_JOB_ID, LOG_RESULT_NAME, archive_key, job_name
from ocps_jobs.http import create_embedded_app
from ocps_jobs.service import JobService
from ocps_jobs.uploader.record import final_record
from ocps_jobs.uploader.upload import Uploader
from tests.chaos import CLI, ServeProcess
from tests.cluster.conftest import ControlPlane
from tests.helpers import wait_until

pytestmark = pytest.mark.slow


def cri_lines(*texts: str) -> str:
    """Lines as the kubelet's CRI log files hold them (what KWOK reads)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
    return "".join(f"{stamp} stdout F {text}\n" for text in texts)


def pods_of(kube: k8s.ApiClient, namespace: str, job_id: str) -> list[k8s.V1Pod]:
    pods = k8s.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector=f"{LABEL_JOB_ID}={job_id}"
    )
    return list(pods.items)


def serve_log(kube: k8s.ApiClient, namespace: str, pod: str, path: Path) -> None:
    """A KWOK ``Logs`` object: the job container's log of ``pod`` is ``path``, followed."""
    k8s.CustomObjectsApi(kube).create_namespaced_custom_object(
        "kwok.x-k8s.io",
        "v1alpha1",
        namespace,
        "logs",
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": pod},
            "spec": {"logs": [{"containers": ["job"], "logsFile": str(path), "follow": True}]},
        },
    )


def upload_outputs(service: JobService, job_id: str, tmp_path: Path, logs: dict[str, str]) -> None:
    """What the sidecar does when the pod ends: its log files kept as results, the manifest,
    then the archived record."""
    output = tmp_path / job_id / "out"
    output.mkdir(parents=True)
    extra = {}
    for name, text in logs.items():
        (tmp_path / job_id / name).write_text(text)
        extra[name] = tmp_path / job_id / name
    manifest = Uploader(service.store, job_id, output).finish(extra, exitCode=0)
    seed = service.backend.get(job_id)
    assert seed is not None
    record = final_record(
        json.loads(seed.model_dump_json(exclude={"environment"})), manifest, 0, ""
    )
    service.store.put_bytes(archive_key(job_id), json.dumps(record).encode(), "application/json")


def job_gone(kube: k8s.ApiClient, namespace: str, job_id: str) -> bool:
    try:
        k8s.BatchV1Api(kube).read_namespaced_job(job_name(job_id), namespace)
    except ApiException as error:
        return error.status == 404
    return False


def test_logs_follow_shows_a_kwok_pods_lines_as_they_come_and_after_the_job(
    control_plane: ControlPlane,
    make_cluster_service: Callable[..., JobService],
    namespace: str,
    s3_endpoint: str,
    bucket: str,
    kube: k8s.ApiClient,
    tmp_path: Path,
) -> None:
    uploads = make_cluster_service()  # the sidecar's view of the store
    environment = {
        "OCPS_AUTH_REQUIRED": "false",
        "OCPS_WAIT_MAX_SECONDS": "2",  # follows end early: the CLI reconnects
        "OCPS_JOB_TTL_SECONDS": "2",
        "OCPS_POD_ANNOTATIONS": json.dumps({"ocps.test/run-seconds": "12"}),
    }
    server = ServeProcess(
        tmp_path / "data",
        "--backend",
        "kubernetes",
        "--namespace",
        namespace,
        "--kubeconfig",
        str(control_plane.kubeconfig),
        "--s3-endpoint",
        s3_endpoint,
        "--bucket",
        bucket,
        env=environment,
    ).start()
    try:
        submitted = subprocess.run(
            [str(CLI), "submit", "echo simulated", "--json", "--url", server.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = json.loads(submitted.stdout)["jobId"]
        (pod,) = wait_until(lambda: pods_of(kube, namespace, job_id))
        log_file = tmp_path / "pod.log"
        log_file.write_text(cri_lines("line 1"))
        serve_log(kube, namespace, pod.metadata.name, log_file)

        with subprocess.Popen(
            [str(CLI), "logs", "-f", job_id, "--url", server.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as follower:
            assert follower.stdout is not None and follower.stderr is not None
            assert follower.stdout.readline() == "line 1\n"
            with open(log_file, "a") as appended:
                appended.write(cri_lines("line 2"))
            assert follower.stdout.readline() == "line 2\n"  # as it came, the job running
            wait_until(lambda: pods_of(kube, namespace, job_id)[0].status.phase == "Succeeded")
            with open(log_file, "a") as appended:
                appended.write(cri_lines("line 3"))
            whole = "line 1\nline 2\nline 3\n"
            upload_outputs(uploads, job_id, tmp_path, {LOG_RESULT_NAME: whole})
            rest = follower.stdout.read()
            assert follower.wait(timeout=60) == 0, follower.stderr.read()
        assert rest == "line 3\n"  # each line once, across reconnections, then the end

        # After Kubernetes removed the Job and its pods: the uploaded log.
        wait_until(lambda: job_gone(kube, namespace, job_id), timeout=60, interval=0.5)
        after = subprocess.run(
            [str(CLI), "logs", job_id, "--tail", "2", "--url", server.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (after.returncode, after.stdout) == (0, "line 2\nline 3\n"), after.stderr
    finally:
        server.stop()


def test_every_replica_is_read_and_its_lines_marked(
    make_cluster_service: Callable[..., JobService],
    namespace: str,
    kube: k8s.ApiClient,
    tmp_path: Path,
) -> None:
    service = make_cluster_service(pod_annotations={"ocps.test/run-seconds": "60"})
    client: FlaskClient = create_embedded_app(service).test_client()
    job_id = client.put("/api/v1/job", json={"command": "true", "replicas": 2}).get_json()["jobId"]
    pods = wait_until(lambda: len(found := pods_of(kube, namespace, job_id)) == 2 and found)
    for pod in pods:
        index = pod.metadata.annotations["batch.kubernetes.io/job-completion-index"]
        path = tmp_path / f"replica-{index}.log"
        path.write_text(cri_lines(f"replica {index} says a", f"replica {index} says b"))
        serve_log(kube, namespace, pod.metadata.name, path)
    wait_until(
        lambda: all(
            s.state.running
            for p in pods_of(kube, namespace, job_id)
            for s in p.status.container_statuses or []
        )
    )
    answer = wait_until(
        lambda: (
            (got := client.get(f"/api/v1/job/{job_id}/log")).status_code == 200
            and got.get_data(as_text=True).count("\n") == 4
            and got
        )
    )
    assert answer.headers["X-OCPS-Log-Replicas"] == "2"
    # What exactly ran: the job container's image as the runtime (KWOK) resolved it.
    job = client.get(f"/api/v1/job/{job_id}").get_json()
    assert job["jobInfo"]["imageDigest"].startswith(f"kwok://{service.settings.job_image}:")
    assert answer.get_data(as_text=True).splitlines() == [
        "[0] replica 0 says a",
        "[0] replica 0 says b",
        "[1] replica 1 says a",
        "[1] replica 1 says b",
    ]
    tail = client.get(f"/api/v1/job/{job_id}/log?tail=1").get_data(as_text=True)
    assert tail == "[0] replica 0 says b\n[1] replica 1 says b\n"
    skipped = client.get(f"/api/v1/job/{job_id}/log?skip=2,1").get_data(as_text=True)
    assert skipped == "[1] replica 1 says b\n"
    assert client.delete(f"/api/v1/job/{job_id}").status_code == 200
