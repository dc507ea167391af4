"""Why a queued job waits, and when it has waited too long: pure rules over Job and Pod views."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ocps_jobs.backends.kubernetes.status import job_status, start_timed_out, waiting_reason
from ocps_jobs.backends.kubernetes.views import JobView, PodView, trim_job, trim_pod
from ocps_jobs.conventions import ANNOTATIONS
from ocps_jobs.models import Phase

STARTED = "2026-11-28T10:00:00Z"


def pod(
    *, unscheduled: str | None = None, waiting: tuple[str, str] | None = None, init: bool = False
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Pending", "conditions": []}
    if unscheduled is not None:
        status["conditions"].append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unscheduled,
            }
        )
    if waiting is not None:
        entry = {"name": "job", "state": {"waiting": {"reason": waiting[0], "message": waiting[1]}}}
        status["initContainerStatuses" if init else "containerStatuses"] = [entry]
    return {"metadata": {"resourceVersion": "1"}, "status": status}


def job(**annotations: str) -> dict[str, Any]:
    return {"metadata": {"annotations": annotations}, "spec": {}, "status": {"startTime": STARTED}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (pod(), ""),
        (pod(waiting=("ContainerCreating", "")), ""),
        (
            pod(unscheduled="0/3 nodes are available: 3 Insufficient cpu."),
            "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.",
        ),
        (
            pod(waiting=("ImagePullBackOff", 'Back-off pulling image "nope:1"')),
            'ImagePullBackOff: Back-off pulling image "nope:1"',
        ),
        (
            pod(waiting=("CreateContainerConfigError", 'secret "butler" not found')),
            'CreateContainerConfigError: secret "butler" not found',
        ),
        (pod(waiting=("ErrImagePull", ""), init=True), "ErrImagePull"),
    ],
)
@pytest.mark.parametrize("trimmed", [False, True])
def test_waiting_reason_from_scheduler_and_kubelet(
    raw: dict[str, Any], expected: str, trimmed: bool
) -> None:
    seen = trim_pod(raw) if trimmed else raw  # the watch cache keeps what is read
    assert waiting_reason([PodView(seen)]) == expected
    status = job_status(JobView(job()), [PodView(seen)], manifest_exists=False)
    assert (status.phase, status.waiting_reason) == (Phase.QUEUED, expected)


def test_a_running_pod_has_no_waiting_reason() -> None:
    running = pod(waiting=("ImagePullBackOff", "x"))
    running["status"]["phase"] = "Running"
    assert waiting_reason([PodView(running)]) == ""


def test_start_timeout_counts_from_the_job_start() -> None:
    started = datetime(2026, 11, 28, 10, tzinfo=UTC)
    view = JobView(trim_job(job()))
    assert not start_timed_out(view, started + timedelta(seconds=60), 60)
    assert start_timed_out(view, started + timedelta(seconds=61), 60)
    assert not start_timed_out(view, started + timedelta(days=9), 0)  # 0: waits for ever


def test_a_job_given_up_is_error_with_its_reason() -> None:
    given_up = job(
        **{
            ANNOTATIONS.START_TIMED_OUT: "2026-11-28T10:05:00+00:00",
            ANNOTATIONS.START_FAILURE: "The job could not start within 300 s: ImagePullBackOff",
        }
    )
    given_up["spec"]["suspend"] = True
    status = job_status(JobView(trim_job(given_up)), [], manifest_exists=False)
    assert status.phase is Phase.ERROR
    assert status.error_message.endswith("ImagePullBackOff")
    assert status.end_time == datetime(2026, 11, 28, 10, 5, tzinfo=UTC)
