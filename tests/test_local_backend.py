"""The embedded default backend: git, environment, failures, abort, queueing, restarts."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from flask.testing import FlaskClient

from ocps_jobs.backends import JobUpdate
from ocps_jobs.composition import build_service, close_services
from ocps_jobs.config import Settings
from ocps_jobs.errors import InvalidRequestError, PhaseConflictError
from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import Caller, JobRecord, JobRequest, Phase
from ocps_jobs.service import JobService
from tests.helpers import git, host_pid, make_pipeline_repo, wait_for_phase, wait_until

ANYONE = Caller()


def submit(client: FlaskClient, **body: object) -> str:
    response = client.put("/api/v1/job", json=body)
    assert response.status_code == 200, response.data
    return str(response.get_json()["jobId"])


def finish(client: FlaskClient, job_id: str, timeout: float = 30) -> dict:
    wait_for_phase(
        lambda: client.get(f"/api/v1/job/{job_id}/phase").get_json(),
        {"completed", "error", "aborted"},
        timeout,
    )
    return client.get(f"/api/v1/job/{job_id}").get_json()


def result_text(client: FlaskClient, job_id: str, name: str) -> str:
    for item in client.get(f"/api/v1/job/{job_id}/results").get_json():
        if item["uri"].endswith("/out/" + name):
            return client.get(f"/api/v1/job/result/{item['id']}").get_data(as_text=True)
    raise AssertionError(f"no result {name}")


@pytest.mark.parametrize(
    ("commit_ref", "version"),
    [(None, "1"), ("release", "2"), ("v1", "1"), ("HEAD~0", "1")],
)
def test_git_clone_and_checkout(client: FlaskClient, tmp_path: Path, commit_ref, version) -> None:
    repo = make_pipeline_repo(tmp_path)
    if commit_ref == "HEAD~0":  # a commit hash
        commit_ref = git(repo, "rev-parse", "release")
        version = "2"
    job_id = submit(
        client,
        command="cd $JOB_SOURCE_DIR && bash bin/pipetask.sh",
        url=str(repo),
        commit_ref=commit_ref,
    )
    job = finish(client, job_id)
    assert job["phase"] == "completed", job["errorSummary"]
    assert result_text(client, job_id, "version.txt") == version + "\n"
    assert result_text(client, job_id, "logs/git.txt") == f"{repo}|{commit_ref or ''}"
    assert "done" in result_text(client, job_id, "ocps-job.log")


def test_failed_clone_is_error_with_git_message(client: FlaskClient, tmp_path: Path) -> None:
    job_id = submit(client, command="touch $JOB_OUTPUT_DIR/ran", url=str(tmp_path / "nowhere"))
    job = finish(client, job_id)
    assert job["phase"] == "error"
    message = job["errorSummary"]["message"]
    assert message.startswith(f"git clone of {tmp_path / 'nowhere'} failed:")
    assert "does not exist" in message
    names = [item["uri"].rsplit("/", 1)[1] for item in job["results"]]
    assert "ran" not in names


def test_failed_checkout_is_error_with_git_message(client: FlaskClient, tmp_path: Path) -> None:
    repo = make_pipeline_repo(tmp_path)
    job_id = submit(client, command="true", url=str(repo), commit_ref="no-such-branch")
    job = finish(client, job_id)
    assert job["phase"] == "error"
    assert "checkout" in job["errorSummary"]["message"]
    assert "no-such-branch" in job["errorSummary"]["message"]


def test_nonzero_exit_is_error_with_code_and_stderr_tail(client: FlaskClient) -> None:
    command = "for i in $(seq 1 40); do echo line$i >&2; done; echo out; exit 3"
    job = finish(client, submit(client, command=command))
    assert job["phase"] == "error"
    message = job["errorSummary"]["message"]
    assert message.startswith("Command exited with code 3: ")
    assert "line40" in message and "line21" in message and "line20\n" not in message
    log_text = result_text(client, job["jobId"], "ocps-job.log")
    assert "line1\n" in log_text and "out\n" in log_text


def test_a_job_that_writes_its_own_ocps_job_log_keeps_both_logs(client: FlaskClient) -> None:
    command = 'echo to stdout; echo written by the job > "$JOB_OUTPUT_DIR/ocps-job.log"'
    job = finish(client, submit(client, command=command))
    assert job["phase"] == "completed"
    assert result_text(client, job["jobId"], "ocps-job.log") == "written by the job\n"
    assert result_text(client, job["jobId"], "ocps-job~2.log") == "to stdout\n"


def test_results_named_with_controls_or_backslashes_download_by_their_ids(
    client: FlaskClient,
) -> None:
    command = (
        'cd "$JOB_OUTPUT_DIR" && printf 1 > "$(printf "nl\\nname")" && printf 2 > "back\\slash"'
        ' && printf 3 > "$(printf "tab\\tx")"'
    )
    job = finish(client, submit(client, command=command))
    assert job["phase"] == "completed"
    listing = client.get(f"/api/v1/job/{job['jobId']}/results").get_json()
    names = {unquote(item["uri"].rsplit("/out/", 1)[1]): item["id"] for item in listing}
    downloaded = {
        name: client.get(f"/api/v1/job/result/{result_id}").get_data(as_text=True)
        for name, result_id in names.items()
        if name != "ocps-job.log"
    }
    assert downloaded == {"nl%0Aname": "1", "back%5Cslash": "2", "tab%09x": "3"}


def test_environment_contract(tmp_path: Path) -> None:
    settings = Settings.from_env(
        data_dir=tmp_path / "data",
        data_dirs={"comcam": "/data/comcam", "AUXTEL": "/data/auxtel"},
        project_path="/project/ocps",
    )
    os.environ["OCPS_SECRET_SETTING"] = "server-only"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "server-credential"
    try:
        service = build_service(settings)
        client = create_embedded_app(service).test_client()
        repo = make_pipeline_repo(tmp_path)
        job_id = submit(
            client,
            command="env -0 > $JOB_OUTPUT_DIR/env.bin",
            url=str(repo),
            commit_ref="release",
            environment=[
                {"name": "CALLER_VAR", "value": "v"},
                {"name": "PROJECT_PATH", "value": "mine"},
            ],
        )
        job = finish(client, job_id)
    finally:
        del os.environ["OCPS_SECRET_SETTING"], os.environ["AWS_SECRET_ACCESS_KEY"]
    assert job["phase"] == "completed", job["errorSummary"]
    seen = dict(
        entry.split("=", 1) for entry in result_text(client, job_id, "env.bin").split("\0") if entry
    )
    work = settings.data_dir / "work" / job_id
    assert seen["JOB_ID"] == job_id
    assert seen["JOB_OUTPUT_DIR"] == str(work / "out")
    assert seen["JOB_SOURCE_DIR"] == str(work / "src")
    assert seen["SRC_GIT_URL"] == str(repo)
    assert seen["GIT_COMMIT_REF"] == "release"
    assert seen["DATA_DIR_COMCAM"] == "/data/comcam"
    assert seen["DATA_DIR_AUXTEL"] == "/data/auxtel"
    assert seen["CALLER_VAR"] == "v"
    assert seen["PROJECT_PATH"] == "mine"  # the caller's entries come last and win
    assert "OCPS_SECRET_SETTING" not in seen and "AWS_SECRET_ACCESS_KEY" not in seen
    names = [entry["name"] for entry in job["parameters"]["environment"]]
    assert names == [
        "JOB_ID",
        "JOB_OUTPUT_DIR",
        "JOB_SOURCE_DIR",
        "SRC_GIT_URL",
        "GIT_COMMIT_REF",
        "DATA_DIR_AUXTEL",
        "DATA_DIR_COMCAM",
        "PROJECT_PATH",
        "CALLER_VAR",
        "PROJECT_PATH",
    ]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie awaiting its parent counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _started_child(service: JobService, job_id: str) -> int:
    pid_file = service.settings.data_dir / "work" / job_id / "out" / "child.pid"
    return host_pid(
        job_id, int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip()))
    )


SPAWNS_CHILD = "sleep 300 & echo $! > $JOB_OUTPUT_DIR/child.pid; echo started; wait"


def test_abort_kills_the_process_group_and_keeps_results(
    service: JobService, client: FlaskClient
) -> None:
    job_id = submit(client, command=SPAWNS_CHILD)
    child = _started_child(service, job_id)
    assert _pid_alive(child)
    service.abort_job(job_id, ANYONE)
    job = finish(client, job_id)
    assert job["phase"] == "aborted"
    assert job["endTime"] is not None
    wait_until(lambda: not _pid_alive(child), timeout=10)
    names = {item["uri"].rsplit("/", 1)[1] for item in job["results"]}
    assert {"child.pid", "ocps-job.log"} <= names


def test_an_abort_while_the_results_upload_leaves_the_job_completed(
    service: JobService, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = service.backend.store
    uploading, release = threading.Event(), threading.Event()

    class HeldStore:
        """The backend's store, holding the upload of gate.txt until released."""

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def put_file(self, key: str, path: str, content_type: str) -> str:
            if key.endswith("/gate.txt"):
                uploading.set()
                release.wait(30)
            return store.put_file(key, path, content_type)

    monkeypatch.setattr(service.backend, "store", HeldStore())
    job_id = submit(client, command='echo done > "$JOB_OUTPUT_DIR/gate.txt"')
    assert uploading.wait(30)
    answered = service.abort_job(job_id, ANYONE)
    assert answered.phase is Phase.EXECUTING  # too late to abort: the command succeeded
    release.set()
    job = finish(client, job_id)
    assert job["phase"] == "completed"
    assert result_text(client, job_id, "gate.txt") == "done\n"


def test_delete_of_a_running_job_kills_it_and_removes_everything(
    service: JobService, client: FlaskClient
) -> None:
    job_id = submit(client, command=SPAWNS_CHILD)
    child = _started_child(service, job_id)
    assert client.delete(f"/api/v1/job/{job_id}").status_code == 200
    assert client.get(f"/api/v1/job/{job_id}").status_code == 404
    wait_until(lambda: not _pid_alive(child), timeout=10)
    store_root = service.settings.data_dir / "objects"
    wait_until(lambda: not list(store_root.rglob(f"*{job_id}*")), timeout=10)
    wait_until(lambda: not (service.settings.data_dir / "work" / job_id).exists(), timeout=10)


def test_concurrency_bound_queues_the_rest(service: JobService, client: FlaskClient) -> None:
    assert service.settings.max_concurrent_jobs == 2
    jobs = [submit(client, command="sleep 30") for _ in range(3)]
    phases = wait_until(
        lambda: (
            (p := sorted(client.get(f"/api/v1/job/{j}/phase").get_json() for j in jobs))
            == ["executing", "executing", "queued"]
            and p
        )
    )
    assert phases == ["executing", "executing", "queued"]
    listed = client.get("/api/v1/job?phase=queued").get_json()
    assert len(listed) == 1
    for job_id in jobs:
        service.abort_job(job_id, ANYONE)
    assert {finish(client, j)["phase"] for j in jobs} == {"aborted"}


def test_execution_duration_aborts_an_overrunning_job(
    service: JobService, client: FlaskClient
) -> None:
    record = service.create_job(JobRequest(command="sleep 30"), ANYONE, start=False)
    assert record.phase.value == "pending"
    service.update_job(record.job_id, ANYONE, JobUpdate(execution_duration=1))
    started = time.monotonic()
    service.start_job(record.job_id, ANYONE)
    job = finish(client, record.job_id)
    assert job["phase"] == "aborted"
    assert job["executionDuration"] == 1
    assert "execution duration of 1 s" in job["errorSummary"]["message"]
    assert time.monotonic() - started < 15


def test_replicas_run_in_parallel(client: FlaskClient) -> None:
    job_id = submit(
        client,
        command="echo $JOB_REPLICA_INDEX > $JOB_OUTPUT_DIR/replica-$JOB_REPLICA_INDEX",
        replicas=3,
    )
    job = finish(client, job_id)
    assert job["phase"] == "completed"
    names = sorted(item["uri"].rsplit("/", 1)[1] for item in job["results"])
    assert names == ["ocps-job.log", "replica-0", "replica-1", "replica-2"]


def test_records_survive_a_restart(
    settings: Settings, service: JobService, client: FlaskClient
) -> None:
    done = submit(client, command="echo kept > $JOB_OUTPUT_DIR/kept.txt")
    assert finish(client, done)["phase"] == "completed"
    running = submit(client, command="sleep 60")
    wait_for_phase(lambda: client.get(f"/api/v1/job/{running}/phase").get_json(), {"executing"})
    close_services()

    restarted = create_embedded_app(build_service(settings)).test_client()
    assert result_text(restarted, done, "kept.txt") == "kept\n"
    # A clean shutdown stops running jobs and says so (a crash is tested end to end).
    interrupted = restarted.get(f"/api/v1/job/{running}").get_json()
    assert interrupted["phase"] == "aborted"
    assert "shut down" in interrupted["errorSummary"]["message"]
    assert {job["jobId"] for job in restarted.get("/api/v1/job").get_json()} == {done, running}


def test_a_job_in_phase_unknown_may_abort(settings: Settings, service: JobService) -> None:
    """The one abort rule: refused only once final; ``unknown`` may still run, so it stops."""
    record = service.create_job(JobRequest(command="true"), ANYONE, start=False)
    close_services()
    state = settings.data_dir / "state" / "jobs" / f"{record.job_id}.json"
    stored = JobRecord.model_validate_json(state.read_text())
    stored.phase = Phase.UNKNOWN
    state.write_text(stored.model_dump_json())

    restarted = build_service(settings)
    assert restarted.get_job(record.job_id, ANYONE).phase is Phase.UNKNOWN
    aborted = restarted.abort_job(record.job_id, ANYONE)
    assert aborted.phase is Phase.ABORTED
    assert restarted.get_job(record.job_id, ANYONE).phase is Phase.ABORTED


def test_a_finished_job_refuses_abort_start_and_duration_and_stays_as_it_ended(
    service: JobService, client: FlaskClient
) -> None:
    job_id = submit(client, command="true")
    assert finish(client, job_id)["phase"] == "completed"
    for change in (
        lambda: service.abort_job(job_id, ANYONE),
        lambda: service.start_job(job_id, ANYONE),
        lambda: service.update_job(job_id, ANYONE, JobUpdate(execution_duration=5)),
    ):
        with pytest.raises(PhaseConflictError):
            change()
    record = service.get_job(job_id, ANYONE)
    assert record.phase is Phase.COMPLETED
    assert record.execution_duration is None


def test_update_job_applies_the_limits_as_the_uws_setters_do(tmp_path: Path) -> None:
    settings = Settings.from_env(
        data_dir=tmp_path / "limits", max_execution_duration=60, max_destruction_seconds=3600
    )
    service = build_service(settings)
    record = service.create_job(JobRequest(command="true"), ANYONE, start=False)
    latest = record.creation_time + timedelta(seconds=3600)

    unlimited = service.update_job(record.job_id, ANYONE, JobUpdate(execution_duration=None))
    assert unlimited.execution_duration == 60
    longer = service.update_job(record.job_id, ANYONE, JobUpdate(execution_duration=600))
    assert longer.execution_duration == 60
    never = service.update_job(record.job_id, ANYONE, JobUpdate(destruction=None))
    assert never.destruction == latest
    later = datetime.now(UTC) + timedelta(days=30)
    assert service.update_job(record.job_id, ANYONE, JobUpdate(destruction=later)).destruction == (
        latest
    )
    with pytest.raises(InvalidRequestError):
        service.update_job(
            record.job_id, ANYONE, JobUpdate(destruction=datetime.now(UTC) - timedelta(hours=1))
        )
    kept = service.get_job(record.job_id, ANYONE)
    assert (kept.execution_duration, kept.destruction) == (60, latest)
    # The UWS setters answer the same.
    assert service.set_execution_duration(record.job_id, ANYONE, 0).execution_duration == 60
    assert service.set_destruction(record.job_id, ANYONE, later).destruction == latest
