"""The Kubernetes backend on the real test control plane (KWOK runs the pods)."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from flask.testing import FlaskClient
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from ocps_jobs.backends import JobUpdate
from ocps_jobs.backends.kubernetes import KubernetesBackend
from ocps_jobs.backends.kubernetes.client import Kind
from ocps_jobs.backends.kubernetes.spec import GIT_CLONE_SCRIPT, WRAPPER_SCRIPT, build_job
from ocps_jobs.backends.kubernetes.watch import WatchCache
from ocps_jobs.conventions import (
    ANNOTATIONS,
    archive_key,
    job_name,
    manifest_key,
    output_key,
    replica_manifest_key,
)
from ocps_jobs.errors import BackendUnavailableError
from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import Caller, JobRecord, JobRequest, Phase
from ocps_jobs.service import JobService, ListQuery
from ocps_jobs.uploader.record import final_record
from ocps_jobs.uploader.upload import Uploader
from tests.cluster.conftest import ControlPlane
from tests.helpers import container_view, wait_until

ANYONE = Caller()


def kube_job(kube: k8s.ApiClient, namespace: str, job_id: str) -> k8s.V1Job:
    return k8s.BatchV1Api(kube).read_namespaced_job(job_name(job_id), namespace)


def seen_by_service(service: JobService, job_id: str, phase: Phase) -> JobRecord:
    """The job once the service reports ``phase``.

    The service reads its watched copy of the Jobs, which sees a change a moment after the API.
    """
    found: JobRecord = wait_until(
        lambda: (job := service.get_job(job_id, ANYONE)).phase is phase and job
    )
    return found


def job_condition(kube: k8s.ApiClient, namespace: str, job_id: str, kind: str) -> bool:
    job = kube_job(kube, namespace, job_id)
    return any(c.type == kind and c.status == "True" for c in job.status.conditions or [])


def act_as_sidecar(service: JobService, job_id: str, tmp_path: Path, exit_code: int = 0) -> dict:
    """What the uploader does in the pod: outputs, then the manifest, then job.json."""
    output = tmp_path / job_id / "out"
    (output / "sub").mkdir(parents=True)
    (output / "result.txt").write_text(f"result of {job_id}\n")
    (output / "sub" / "table.csv").write_text("a,b\n1,2\n")
    uploader = Uploader(service.store, job_id, output)
    manifest = uploader.finish(exitCode=exit_code)
    seed = service.backend.get(job_id)
    assert seed is not None
    record = final_record(
        json.loads(seed.model_dump_json(exclude={"environment"})), manifest, exit_code, ""
    )
    service.store.put_bytes(
        f"jobs/{job_id}/job.json", json.dumps(record).encode(), "application/json"
    )
    return manifest


def test_created_job_reads_back_field_by_field(
    cluster_service: JobService, kube: k8s.ApiClient, namespace: str
) -> None:
    request = JobRequest(
        command="cd $JOB_SOURCE_DIR && bash bin/pipetask.sh 'a: b' # c",
        run_id="run 42",
        environment=[{"name": "PIPE_ARGS", "value": "x\ny: 'z'"}],
        url="https://github.com/lsst-dm/uws-api-server",
        commit_ref="tickets/DM-1",
    )
    record = cluster_service.create_job(request, Caller(name="ocps-csc"))
    job = kube_job(kube, namespace, record.job_id)
    expected = build_job(record.model_copy(deep=True), cluster_service.settings, suspend=False)
    sanitize = kube.sanitize_for_serialization
    assert sanitize(job.metadata.labels) == sanitize(expected.metadata.labels)
    assert job.metadata.labels == {
        "app.kubernetes.io/managed-by": "ocps-jobs",
        "ocps.lsst.io/job-id": record.job_id,
        "ocps.lsst.io/owner": "ocps-csc",
    }
    annotations = job.metadata.annotations
    assert annotations[ANNOTATIONS.RUN_ID] == "run 42"
    assert annotations[ANNOTATIONS.OWNER] == "ocps-csc"
    assert json.loads(annotations[ANNOTATIONS.PARAMETERS])["command"] == request.command
    spec = job.spec
    assert spec.backoff_limit == 0
    assert spec.ttl_seconds_after_finished == 3600
    assert spec.active_deadline_seconds is None
    assert spec.suspend is False
    pod = spec.template.spec
    assert pod.restart_policy == "Never"
    assert pod.automount_service_account_token is False
    assert [c.name for c in pod.init_containers] == ["uploader", "git-clone"]
    uploader, clone = pod.init_containers
    assert uploader.restart_policy == "Always"
    assert uploader.command == ["python", "-m", "ocps_jobs.uploader"]
    assert uploader.env_from[0].secret_ref.name == "ocps-jobs-s3"
    # What each process sees once the kubelet has expanded the spec ($ is kept literal).
    command, clone_env = container_view(clone, {})
    assert command == ["/bin/bash", "-c", GIT_CLONE_SCRIPT]
    assert clone_env["SRC_GIT_URL"] == request.url
    (main,) = pod.containers
    command, main_env = container_view(main, {})
    assert command == ["/bin/bash", "-c", WRAPPER_SCRIPT, "ocps-job", request.command]
    assert main.image == "lsstsqre/centos:d_latest"
    env = list(main_env.items())
    work = f"/uws/jobs/{record.job_id}"
    assert env == [
        ("JOB_ID", record.job_id),
        ("JOB_OUTPUT_DIR", f"{work}/out"),
        ("JOB_SOURCE_DIR", f"{work}/src"),
        ("SRC_GIT_URL", request.url),
        ("GIT_COMMIT_REF", "tickets/DM-1"),
        ("PIPE_ARGS", "x\ny: 'z'"),
    ]
    assert main.termination_message_policy == "FallbackToLogsOnError"
    assert main.resources.requests == {"cpu": "500m", "memory": "1Gi"}
    # What the API returns for the job is what was asked for.
    answered = cluster_service.get_job(record.job_id, Caller(name="ocps-csc"))
    assert answered.run_id == "run 42"
    assert answered.parameters.command == request.command
    assert [(e.name, e.value) for e in answered.environment] == env


def test_success_stays_executing_until_the_manifest_is_uploaded(
    cluster_service: JobService, kube: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    client = create_embedded_app(cluster_service).test_client()
    created = client.put("/api/v1/job", json={"command": "echo hi > $JOB_OUTPUT_DIR/out.txt"})
    assert created.status_code == 200
    job_id = created.get_json()["jobId"]
    phase = lambda: client.get(f"/api/v1/job/{job_id}/phase").get_json()  # noqa: E731
    seen = set()
    wait_until(lambda: seen.add(phase()) or job_condition(kube, namespace, job_id, "Complete"))
    seen.add(phase())
    assert "executing" in seen
    assert "unknown" not in seen
    time.sleep(1)
    assert phase() == "executing"  # Complete, but nothing uploaded yet
    assert client.get(f"/api/v1/job/{job_id}/results").get_json() == []

    act_as_sidecar(cluster_service, job_id, tmp_path)
    wait_until(lambda: phase() == "completed", timeout=15)
    job = client.get(f"/api/v1/job/{job_id}").get_json()
    condition_time = kube_job(kube, namespace, job_id).status.completion_time
    assert job["endTime"] == str(condition_time.replace(microsecond=0))
    names = sorted(item["uri"].split("/out/")[1] for item in job["results"])
    assert names == ["result.txt", "sub/table.csv"]
    listed = client.get("/api/v1/job?phase=completed").get_json()
    assert [item["jobId"] for item in listed] == [job_id]
    result = next(item for item in job["results"] if item["uri"].endswith("result.txt"))
    assert client.get(f"/api/v1/job/result/{result['id']}").data == f"result of {job_id}\n".encode()


def test_failing_pod_is_error_with_its_message(
    make_cluster_service: Callable[..., JobService],
    namespace: str,
    tmp_path: Path,
    kube: k8s.ApiClient,
) -> None:
    service = make_cluster_service(
        pod_annotations={
            "ocps.test/exit-code": "3",
            "ocps.test/exit-message": "Command exited with code 3:\nboom",
        },
    )
    record = service.create_job(JobRequest(command="exit 3"), ANYONE)
    wait_until(lambda: job_condition(kube, namespace, record.job_id, "Failed"))
    job = seen_by_service(service, record.job_id, Phase.ERROR)
    assert job.error_message == "Command exited with code 3:\nboom"
    assert job.end_time is not None


def test_failed_git_clone_is_error_with_git_message(
    make_cluster_service: Callable[..., JobService],
    namespace: str,
    tmp_path: Path,
    kube: k8s.ApiClient,
) -> None:
    service = make_cluster_service(
        pod_annotations={
            "ocps.test/init-exit-code": "128",
            "ocps.test/init-container": "git-clone",
            "ocps.test/exit-message": "fatal: repository not found",
        },
    )
    record = service.create_job(
        JobRequest(command="true", url="https://example.org/missing.git"), ANYONE
    )
    wait_until(lambda: job_condition(kube, namespace, record.job_id, "Failed"))
    job = seen_by_service(service, record.job_id, Phase.ERROR)
    assert job.error_message.startswith("git clone failed: ")
    assert "repository not found" in job.error_message


def test_abort_stops_the_pods_and_reports_aborted(
    make_cluster_service: Callable[..., JobService],
    namespace: str,
    tmp_path: Path,
    kube: k8s.ApiClient,
) -> None:
    service = make_cluster_service(
        pod_annotations={"ocps.test/run-seconds": "60"},
    )
    record = service.create_job(JobRequest(command="sleep 60"), ANYONE)
    wait_until(lambda: service.get_job(record.job_id, ANYONE).phase is Phase.EXECUTING)
    aborted = service.abort_job(record.job_id, ANYONE)
    assert aborted.phase is Phase.ABORTED
    core = k8s.CoreV1Api(kube)
    selector = f"ocps.lsst.io/job-id={record.job_id}"
    wait_until(lambda: not core.list_namespaced_pod(namespace, label_selector=selector).items)
    job = service.get_job(record.job_id, ANYONE)
    assert job.phase is Phase.ABORTED
    assert job.end_time is not None
    assert kube_job(kube, namespace, record.job_id).spec.suspend is True
    assert service.abort_job(record.job_id, ANYONE).phase is Phase.ABORTED  # idempotent


def replica_pods(kube: k8s.ApiClient, namespace: str, job_id: str) -> list[k8s.V1Pod]:
    selector = f"ocps.lsst.io/job-id={job_id}"
    pods: list[k8s.V1Pod] = (
        k8s.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=selector).items
    )
    return sorted(
        pods, key=lambda pod: pod.metadata.annotations["batch.kubernetes.io/job-completion-index"]
    )


def replica_succeeds(kube: k8s.ApiClient, namespace: str, pod: k8s.V1Pod) -> None:
    """What the kubelet reports once a replica's command exited 0 and its uploader finished."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def ended(container: k8s.V1ContainerStatus) -> dict[str, Any]:
        return {
            "name": container.name,
            "image": container.image,
            "imageID": container.image_id,
            "ready": False,
            "restartCount": 0,
            "state": {
                "terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": now,
                    "finishedAt": now,
                }
            },
        }

    status = pod.status
    body = {
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [ended(c) for c in status.container_statuses],
            "initContainerStatuses": [ended(c) for c in status.init_container_statuses],
        }
    }
    k8s.CoreV1Api(kube).patch_namespaced_pod_status(pod.metadata.name, namespace, body)


def api_only(service: JobService) -> KubernetesBackend:
    """A backend of another process whose watches cannot list: it reads the API each time."""
    backend = KubernetesBackend(service.settings, service.store)

    def refusing(kind: Kind, selector: str) -> list[dict[str, Any]]:
        raise BackendUnavailableError(f"Kubernetes unavailable (list {kind})")

    backend._watched = WatchCache(refusing, backend.kube.watch)
    return backend


@pytest.mark.parametrize("aborted_by", ["watch-cache", "api"])
def test_an_abort_after_one_replica_succeeded_stops_the_others(
    make_cluster_service: Callable[..., JobService],
    kube: k8s.ApiClient,
    namespace: str,
    aborted_by: str,
) -> None:
    service = make_cluster_service(pod_annotations={"ocps.test/run-seconds": "60"})
    cached = service.backend
    assert isinstance(cached, KubernetesBackend)
    uncached = api_only(service)
    try:
        record = service.create_job(JobRequest(command="run-part", replicas=3), ANYONE)
        job_id = record.job_id
        wait_until(
            lambda: (
                [p.status.phase for p in replica_pods(kube, namespace, job_id)] == ["Running"] * 3
            ),
            timeout=30,
        )
        replica_succeeds(kube, namespace, replica_pods(kube, namespace, job_id)[0])

        def cache_saw_the_success() -> bool:
            view = cached._informed().view(job_id)
            return view is not None and any(
                (pod.get("status") or {}).get("phase") == "Succeeded" for pod in view[1]
            )

        wait_until(cache_saw_the_success, timeout=15)
        assert cached._informed().synced and uncached._watched is not None
        assert not uncached._watched.synced
        assert service.get_job(job_id, ANYONE).phase is Phase.EXECUTING

        backend = cached if aborted_by == "watch-cache" else uncached
        answered = backend.abort(job_id, "stop")
        assert answered.phase is Phase.ABORTED

        assert kube_job(kube, namespace, job_id).spec.suspend is True
        wait_until(
            lambda: all(
                p.status.phase in ("Succeeded", "Failed")
                for p in replica_pods(kube, namespace, job_id)
            ),
            timeout=30,
        )
        # Every reader sees it aborted: the synced cache's copy and the API's alike.
        for reader in (cached, uncached):
            seen = wait_until(
                lambda reader=reader: (
                    (job := reader.get(job_id)) and job.phase is Phase.ABORTED and job
                ),
                timeout=15,
            )
            assert seen.error_message == "stop"
            listed = {job.job_id: job.phase for job in reader.list_records()}
            assert listed == {job_id: Phase.ABORTED}
            # The phase decided before the record is built: only the Jobs asked for.
            aborted = reader.list_records(phases=frozenset({Phase.ABORTED}))
            assert [job.job_id for job in aborted] == [job_id]
            assert list(reader.list_records(phases=frozenset({Phase.EXECUTING}))) == []
        phases = service.list_jobs(ANYONE, ListQuery(phases=frozenset({Phase.ABORTED})))
        assert [job.job_id for job in phases] == [job_id]
    finally:
        uncached.close()


def test_replicas_are_one_indexed_job_whose_pods_know_their_index(
    cluster_service: JobService, kube: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    record = cluster_service.create_job(JobRequest(command="true", replicas=2), ANYONE)
    job_id = record.job_id
    job = kube_job(kube, namespace, job_id)
    assert (job.spec.completion_mode, job.spec.completions) == ("Indexed", 2)
    wait_until(lambda: job_condition(kube, namespace, record.job_id, "Complete"))
    pods = k8s.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector=f"ocps.lsst.io/job-id={record.job_id}"
    )
    indexes = sorted(
        pod.metadata.annotations["batch.kubernetes.io/job-completion-index"] for pod in pods.items
    )
    assert indexes == ["0", "1"]  # what JOB_REPLICA_INDEX reads in each pod
    for pod in pods.items:  # what each uploader reads as its record file
        assert json.loads(pod.metadata.annotations[ANNOTATIONS.RECORD])["job_id"] == job_id
    seen = seen_by_service(cluster_service, record.job_id, Phase.EXECUTING)  # not merged yet
    assert "JOB_REPLICA_INDEX" not in {entry.name for entry in seen.environment}
    act_as_sidecar(cluster_service, record.job_id, tmp_path)  # the merged manifest.json
    done = seen_by_service(cluster_service, record.job_id, Phase.COMPLETED)
    assert done.parameters.replicas == 2


def test_a_replicated_job_that_failed_lists_what_its_replicas_uploaded(
    make_cluster_service: Callable[..., JobService], kube: k8s.ApiClient, namespace: str
) -> None:
    service = make_cluster_service(
        pod_annotations={
            "ocps.test/exit-code": "3",
            "ocps.test/exit-message": "Command exited with code 3:\nboom",
        },
    )
    record = service.create_job(JobRequest(command="exit 3", replicas=2), ANYONE)
    job_id = record.job_id
    # Replica 0's uploader had its last pass; replica 1's never ran (its pod was stopped).
    store = service.store
    store.put_bytes(output_key(job_id, "part-0.txt"), b"part 0", "text/plain")
    entry = {"path": "part-0.txt", "key": output_key(job_id, "part-0.txt"), "size": 6}
    replica_0 = {"jobId": job_id, "files": [{**entry, "sha256": "-", "contentType": "text/plain"}]}
    store.put_bytes(
        replica_manifest_key(job_id, 0), json.dumps({**replica_0, "exitCode": 3}).encode(), "x"
    )
    wait_until(lambda: job_condition(kube, namespace, job_id, "Failed"), timeout=30)

    def listed() -> JobRecord | None:
        job = service.get_job(job_id, ANYONE)
        return job if job.phase is Phase.ERROR and job.results else None

    job = wait_until(listed, timeout=30)
    assert [result.key for result in job.results or []] == [output_key(job_id, "part-0.txt")]
    merged = json.loads(store.get_bytes(manifest_key(job_id)) or b"{}")
    assert [item["exitCode"] for item in merged["replicas"]] == [3, None]
    archived = JobRecord.model_validate_json(store.get_bytes(archive_key(job_id)) or b"{}")
    assert (archived.phase, archived.results) == (Phase.ERROR, job.results)


def test_an_abort_while_the_results_upload_leaves_the_job_completed(
    cluster_service: JobService, kube: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    record = cluster_service.create_job(JobRequest(command="true"), ANYONE)
    wait_until(lambda: job_condition(kube, namespace, record.job_id, "Complete"))
    seen_by_service(cluster_service, record.job_id, Phase.EXECUTING)  # no manifest yet
    answered = cluster_service.abort_job(record.job_id, ANYONE)
    assert answered.phase is Phase.EXECUTING  # too late to abort: the command succeeded
    annotations = kube_job(kube, namespace, record.job_id).metadata.annotations
    assert ANNOTATIONS.ABORT_REQUESTED not in annotations
    act_as_sidecar(cluster_service, record.job_id, tmp_path)
    job = seen_by_service(cluster_service, record.job_id, Phase.COMPLETED)
    assert sorted(result.key.rsplit("/out/", 1)[1] for result in job.results or []) == [
        "result.txt",
        "sub/table.csv",
    ]


def test_execution_duration_overrun_is_aborted(
    make_cluster_service: Callable[..., JobService],
    namespace: str,
    tmp_path: Path,
    kube: k8s.ApiClient,
) -> None:
    service = make_cluster_service(
        pod_annotations={"ocps.test/run-seconds": "60"},
    )
    record = service.create_job(JobRequest(command="sleep 60"), ANYONE, start=False)
    assert service.get_job(record.job_id, ANYONE).phase is Phase.PENDING
    assert not k8s.CoreV1Api(kube).list_namespaced_pod(namespace).items
    service.update_job(record.job_id, ANYONE, JobUpdate(execution_duration=2))
    assert kube_job(kube, namespace, record.job_id).spec.active_deadline_seconds == 2
    service.start_job(record.job_id, ANYONE)
    wait_until(lambda: job_condition(kube, namespace, record.job_id, "Failed"), timeout=30)
    job = seen_by_service(service, record.job_id, Phase.ABORTED)
    assert "execution duration of 2 s" in job.error_message


def test_ttl_deleted_job_is_answered_from_its_archive(
    make_cluster_service: Callable[..., JobService],
    namespace: str,
    tmp_path: Path,
    kube: k8s.ApiClient,
) -> None:
    service = make_cluster_service(job_ttl_seconds=3)
    client: FlaskClient = create_embedded_app(service).test_client()
    body = {"command": "true", "run_id": "kept", "environment": [{"name": "A", "value": "$(B)"}]}
    job_id = client.put("/api/v1/job", json=body).get_json()["jobId"]
    wait_until(lambda: job_condition(kube, namespace, job_id, "Complete"))
    act_as_sidecar(service, job_id, tmp_path)  # archives what a pod knows: no environment
    before = wait_until(
        lambda: (
            (job := client.get(f"/api/v1/job/{job_id}").get_json())["phase"] == "completed" and job
        )
    )

    def gone() -> bool:
        try:
            kube_job(kube, namespace, job_id)
        except ApiException as error:
            return error.status == 404
        return False

    wait_until(gone, timeout=60, interval=0.5)
    after = client.get(f"/api/v1/job/{job_id}").get_json()
    assert after == before  # the whole job as it was last seen live, environment included
    assert after["phase"] == "completed"
    assert after["runId"] == "kept"
    assert {"name": "A", "value": "$(B)"} in after["parameters"]["environment"]
    result = next(item for item in after["results"] if item["uri"].endswith("result.txt"))
    assert client.get(f"/api/v1/job/result/{result['id']}").status_code == 200
    assert client.delete(f"/api/v1/job/{job_id}").status_code == 200
    assert client.get(f"/api/v1/job/{job_id}").status_code == 404


def test_delete_removes_job_pods_and_objects(
    cluster_service: JobService, kube: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    client = create_embedded_app(cluster_service).test_client()
    job_id = client.put("/api/v1/job", json={"command": "true"}).get_json()["jobId"]
    wait_until(lambda: job_condition(kube, namespace, job_id, "Complete"))
    act_as_sidecar(cluster_service, job_id, tmp_path)
    assert cluster_service.store.list_objects(f"jobs/{job_id}/")
    assert client.delete(f"/api/v1/job/{job_id}").get_json()["status"] == "ok"
    core = k8s.CoreV1Api(kube)
    wait_until(
        lambda: (
            not core.list_namespaced_pod(
                namespace, label_selector=f"ocps.lsst.io/job-id={job_id}"
            ).items
        )
    )
    assert cluster_service.store.list_objects(f"jobs/{job_id}/") == []
    assert client.get(f"/api/v1/job/{job_id}").status_code == 404


def create_pending(service: JobService, count: int) -> list[str]:
    """``count`` PENDING jobs (suspended Jobs), created eight at a time; their IDs."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(
            pool.map(
                lambda n: (
                    service.create_job(JobRequest(command=f"echo {n}"), ANYONE, start=False).job_id
                ),
                range(count),
            )
        )


def test_two_thousand_jobs_listed_with_a_phase_filter(
    cluster_service: JobService, namespace: str
) -> None:
    pending = create_pending(cluster_service, 1995)
    running = [
        cluster_service.create_job(JobRequest(command="true"), ANYONE).job_id for _ in range(5)
    ]
    frozen_before = gc.get_freeze_count()
    started = time.monotonic()
    listed = cluster_service.list_jobs(ANYONE, ListQuery(phases=frozenset({Phase.PENDING})))
    elapsed = time.monotonic() - started
    assert sorted(record.job_id for record in listed) == sorted(pending)
    others = cluster_service.list_jobs(
        ANYONE, ListQuery(phases=frozenset({Phase.QUEUED, Phase.EXECUTING}))
    )
    assert {record.job_id for record in others} <= set(running)
    assert len(cluster_service.list_jobs(ANYONE)) == 2000
    print(f"listed 2,000 Jobs with a phase filter in {elapsed:.2f} s")
    # Once the watches have listed them, the watched copies are out of full collections.
    wait_until(lambda: gc.get_freeze_count() > frozen_before)


def test_oversized_metadata_is_413_not_an_apiserver_error(cluster_service: JobService) -> None:
    client = create_embedded_app(cluster_service).test_client()
    environment = [{"name": f"V{n}", "value": "x" * 1000} for n in range(250)]
    response = client.put("/api/v1/job", json={"command": "true", "environment": environment})
    assert response.status_code == 413
    assert "annotations" in response.get_json()["message"]
    assert client.get("/api/v1/job").get_json() == []


def test_functions_in_process_on_the_cluster(
    control_plane: ControlPlane,
    namespace: str,
    s3_endpoint: str,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    kube: k8s.ApiClient,
) -> None:
    from functions_framework import create_app

    from tests.conftest import FUNCTIONS

    for name, value in {
        "OCPS_BACKEND": "kubernetes",
        "OCPS_NAMESPACE": namespace,
        "OCPS_KUBECONFIG": str(control_plane.kubeconfig),
        "OCPS_S3_ENDPOINT": s3_endpoint,
        "OCPS_BUCKET": bucket,
        "OCPS_AUTH_TOKENS": '{"csc-secret-token": "ocps-csc"}',
    }.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)  # operator's job
    create = create_app("create_job", str(FUNCTIONS / "create_job" / "main.py")).test_client()
    query = create_app("query_job", str(FUNCTIONS / "query_job" / "main.py")).test_client()
    # Deployed, authentication is on by default: the CSC sends its configured token.
    assert create.put("/api/v1/job", json={"command": "true"}).status_code == 401
    token = {"Authorization": "Bearer csc-secret-token"}
    job = create.put("/api/v1/job", json={"command": "true", "run_id": "fn"}, headers=token)
    job = job.get_json()
    assert job["ownerId"] == "ocps-csc"
    answered = query.get(f"/api/v1/job/{job['jobId']}", headers=token).get_json()
    assert answered["runId"] == "fn"
    assert answered["ownerId"] == "ocps-csc"
    assert (
        kube_job(kube, namespace, job["jobId"]).metadata.labels["ocps.lsst.io/job-id"]
        == job["jobId"]
    )
    assert create.delete(f"/api/v1/job/{job['jobId']}", headers=token).status_code == 200
    assert query.get(f"/api/v1/job/{job['jobId']}", headers=token).status_code == 404


def test_failed_upload_is_error_not_executing_forever(
    make_cluster_service: Callable[..., JobService],
    namespace: str,
    tmp_path: Path,
    kube: k8s.ApiClient,
) -> None:
    service = make_cluster_service(
        pod_annotations={"ocps.test/sidecar-exit-code": "1"},
    )
    record = service.create_job(JobRequest(command="true"), ANYONE)
    wait_until(lambda: job_condition(kube, namespace, record.job_id, "Complete"))
    job = seen_by_service(service, record.job_id, Phase.ERROR)
    assert job.error_message.startswith("The job's results could not be uploaded")
    listed = service.list_jobs(ANYONE, ListQuery(phases=frozenset({Phase.ERROR})))
    assert [r.job_id for r in listed] == [record.job_id]
    pod = kube_job(kube, namespace, record.job_id).spec.template.spec
    assert pod.termination_grace_period_seconds == 300


def test_sweep_removes_jobs_past_their_destruction(
    cluster_service: JobService,
    control_plane: ControlPlane,
    namespace: str,
    s3_endpoint: str,
    bucket: str,
    kube: k8s.ApiClient,
    tmp_path: Path,
) -> None:
    import subprocess
    import sys
    from datetime import timedelta

    from ocps_jobs.models import utcnow

    doomed = cluster_service.create_job(
        JobRequest(command="true"), ANYONE, start=False, destruction=utcnow() + timedelta(seconds=2)
    )
    kept = cluster_service.create_job(JobRequest(command="true"), ANYONE, start=False)
    act_as_sidecar(cluster_service, doomed.job_id, tmp_path)
    time.sleep(3)
    with pytest.raises(Exception, match="No job"):
        cluster_service.get_job(doomed.job_id, ANYONE)  # already gone for clients
    environment = {
        "OCPS_BACKEND": "kubernetes",
        "OCPS_NAMESPACE": namespace,
        "OCPS_KUBECONFIG": str(control_plane.kubeconfig),
        "OCPS_S3_ENDPOINT": s3_endpoint,
        "OCPS_BUCKET": bucket,
        "PATH": "/usr/bin:/bin",
        "AWS_ACCESS_KEY_ID": "ocps-test-access",
        "AWS_SECRET_ACCESS_KEY": "ocps-test-secret",
    }
    swept = subprocess.run(
        [str(Path(sys.executable).with_name("ocps-jobs")), "sweep"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(swept.stdout.strip().splitlines()[-1]) == {"destroyed": [doomed.job_id]}
    with pytest.raises(ApiException) as missing:
        kube_job(kube, namespace, doomed.job_id)
    assert missing.value.status == 404
    assert cluster_service.store.list_objects(f"jobs/{doomed.job_id}/") == []
    assert kube_job(kube, namespace, kept.job_id).metadata.name


def test_first_list_waits_for_the_watches_instead_of_listing_twice(
    cluster_service: JobService,
) -> None:
    created = set(create_pending(cluster_service, 300))
    # A new process's backend: its first list is asked for while the watches first list.
    fresh = KubernetesBackend(cluster_service.settings, cluster_service.store)
    api_lists: list[str] = []
    list_from_api = fresh.kube.list

    def counted(kind: Kind, selector: str) -> list[Any]:
        api_lists.append(kind)
        return list_from_api(kind, selector)

    fresh.kube.list = counted  # type: ignore[method-assign]
    try:
        listed = fresh.list_records()
        assert {record.job_id for record in listed} == created
        assert fresh._watched is not None and fresh._watched.synced
        assert api_lists == []  # answered from the watches' listing, not a second one
    finally:
        fresh.close()
