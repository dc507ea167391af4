"""Phase from a Job and its Pods: every rule on the API's copy and on the watch cache's copy."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from ocps_jobs.backends.kubernetes.spec import build_job, job_json
from ocps_jobs.backends.kubernetes.status import JobStatus, job_status, ran_to_completion
from ocps_jobs.backends.kubernetes.views import JobView, PodView, trim_job, trim_pod
from ocps_jobs.config import Settings
from ocps_jobs.conventions import ANNOTATIONS
from ocps_jobs.models import JobParameters, JobRecord, Phase

ABORTED_AT = "2026-11-28T10:00:05+00:00"

Raw = dict[str, Any]
Views = tuple[JobView, list[PodView]]


@pytest.fixture(params=["api", "watch-cache"])
def seen_as(request: pytest.FixtureRequest) -> Callable[[Raw, list[Raw]], Views]:
    """The Job and Pods as the backend reads them: from the API whole, or the cache's trim."""

    def api(job: Raw, pods: list[Raw]) -> Views:
        return JobView(job), [PodView(pod) for pod in pods]

    def watch_cache(job: Raw, pods: list[Raw]) -> Views:
        return JobView(trim_job(job)), [PodView(trim_pod(pod)) for pod in pods]

    return api if request.param == "api" else watch_cache


def status_of(
    seen_as: Callable[[Raw, list[Raw]], Views], job: Raw, pods: list[Raw], *, manifest: bool
) -> JobStatus:
    return job_status(*seen_as(job, pods), manifest_exists=manifest)


def job(*conditions: str, aborted: bool = False) -> Raw:
    annotations = {ANNOTATIONS.ABORT_REQUESTED: ABORTED_AT} if aborted else {}
    return {
        "metadata": {"annotations": annotations},
        "spec": {"suspend": aborted},
        "status": {
            "startTime": "2026-11-28T10:00:00Z",
            "completionTime": "2026-11-28T10:00:04Z" if "Complete" in conditions else None,
            "conditions": [
                {"type": kind, "status": "True", "lastTransitionTime": "2026-11-28T10:00:04Z"}
                for kind in conditions
            ],
        },
    }


@pytest.mark.parametrize(
    ("conditions", "aborted", "manifest", "phase"),
    [
        ((), True, False, Phase.ABORTED),
        ((), True, True, Phase.ABORTED),
        (("Failed",), True, True, Phase.ABORTED),
        # The command had succeeded when the abort came: its upload finishes the job.
        (("SuccessCriteriaMet",), True, False, Phase.EXECUTING),
        (("SuccessCriteriaMet", "Complete"), True, False, Phase.EXECUTING),
        (("SuccessCriteriaMet", "Complete"), True, True, Phase.COMPLETED),
        (("Complete",), False, True, Phase.COMPLETED),
        ((), False, False, Phase.QUEUED),
    ],
)
def test_an_abort_after_the_command_succeeded_does_not_undo_it(
    conditions: tuple[str, ...],
    aborted: bool,
    manifest: bool,
    phase: Phase,
    seen_as: Callable[[Raw, list[Raw]], Views],
) -> None:
    status = status_of(seen_as, job(*conditions, aborted=aborted), [], manifest=manifest)
    assert status.phase is phase


def pod(exit_code: int | None, phase: str = "Running") -> Raw:
    """A pod whose job container has ended with ``exit_code`` (None: still running), while
    its uploader, a native sidecar, still makes its last pass: the pod is Running."""
    state = {"running": {}} if exit_code is None else {"terminated": {"exitCode": exit_code}}
    return {
        "metadata": {"name": f"pod-{exit_code}", "resourceVersion": "7"},
        "status": {
            "phase": phase,
            "containerStatuses": [{"name": "job", "state": state}],
            "initContainerStatuses": [{"name": "uploader", "state": {"running": {}}}],
        },
    }


@pytest.mark.parametrize(
    ("replicas", "pods", "phase"),
    [
        (1, [pod(0)], Phase.EXECUTING),  # the command succeeded: too late to abort
        (1, [pod(None)], Phase.ABORTED),
        (1, [pod(2)], Phase.ABORTED),
        (2, [pod(0), pod(None)], Phase.ABORTED),  # one replica still runs
        (2, [pod(0), pod(0)], Phase.EXECUTING),
        (3, [pod(0, "Succeeded"), pod(None), pod(None)], Phase.ABORTED),
    ],
)
def test_an_abort_while_the_uploaders_run_is_too_late_once_every_command_succeeded(
    replicas: int,
    pods: list[Raw],
    phase: Phase,
    seen_as: Callable[[Raw, list[Raw]], Views],
) -> None:
    aborted = job(aborted=True)
    aborted["spec"]["completions"] = replicas
    assert status_of(seen_as, aborted, pods, manifest=False).phase is phase


def test_failures_report_the_failing_containers_message(
    seen_as: Callable[[Raw, list[Raw]], Views],
) -> None:
    failed = job("Failed")
    clone = pod(None, "Failed")
    clone["status"]["initContainerStatuses"].append(
        {"name": "git-clone", "state": {"terminated": {"exitCode": 128, "message": " no repo\n"}}}
    )
    status = status_of(seen_as, failed, [clone], manifest=False)
    assert (status.phase, status.error_message) == (Phase.ERROR, "git clone failed: no repo")
    status = status_of(seen_as, failed, [pod(3, "Failed")], manifest=False)
    assert status.error_message == "job exited with code 3"
    overrun = job("Failed")
    overrun["status"]["conditions"][0]["reason"] = "DeadlineExceeded"
    overrun["spec"]["activeDeadlineSeconds"] = 2
    status = status_of(seen_as, overrun, [], manifest=False)
    assert status.phase is Phase.ABORTED
    assert status.error_message == "The job ran over its execution duration of 2 s."


def test_a_failed_upload_is_an_error_and_suspended_is_pending(
    seen_as: Callable[[Raw, list[Raw]], Views],
) -> None:
    done = pod(0, "Succeeded")
    done["status"]["initContainerStatuses"] = [
        {"name": "uploader", "state": {"terminated": {"exitCode": 1}}}
    ]
    status = status_of(seen_as, job("Complete"), [done], manifest=False)
    assert status.phase is Phase.ERROR
    assert status.error_message.startswith("The job's results could not be uploaded")
    assert status.end_time == datetime(2026, 11, 28, 10, 0, 4, tzinfo=UTC)
    pending = job()
    pending["spec"]["suspend"] = True
    assert status_of(seen_as, pending, [], manifest=False).phase is Phase.PENDING
    assert status_of(seen_as, job(), [pod(None)], manifest=False).phase is Phase.EXECUTING


def built_job(replicas: int) -> Raw:
    """The Job ``build_job`` makes, as the API returns it once its pods have started."""
    record = JobRecord(
        job_id="0123456789abcdef0123456789abcdef",
        run_id="run",
        owner="ocps-csc",
        creation_time=datetime(2026, 11, 28, tzinfo=UTC),
        parameters=JobParameters(command="run-part", replicas=replicas),
    )
    built = build_job(record, Settings(backend="kubernetes"), suspend=False)
    raw: Raw = json.loads(job_json(built))
    raw["metadata"].update(resourceVersion="41", creationTimestamp="2026-11-28T10:00:00Z")
    raw["status"] = {"startTime": "2026-11-28T10:00:00Z", "active": replicas}
    return raw


def test_a_replicated_job_with_one_replica_done_has_not_run_to_completion(
    seen_as: Callable[[Raw, list[Raw]], Views],
) -> None:
    """The watch cache's copy once lost ``spec.completions``: one replica counted as all."""
    pods = [pod(0, "Succeeded"), pod(None), pod(None)]
    assert ran_to_completion(*seen_as(built_job(3), pods)) is False
    aborted = built_job(3)
    aborted["metadata"]["annotations"][ANNOTATIONS.ABORT_REQUESTED] = ABORTED_AT
    aborted["spec"]["suspend"] = True
    assert status_of(seen_as, aborted, pods, manifest=False).phase is Phase.ABORTED
    assert ran_to_completion(*seen_as(built_job(3), [pod(0, "Succeeded")] * 3)) is True
    assert ran_to_completion(*seen_as(built_job(1), [pod(0)])) is True
