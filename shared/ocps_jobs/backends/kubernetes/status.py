"""Pure mapping from a Kubernetes Job and its Pods (as views) to a UWS phase and times."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ...conventions import ANNOTATIONS, CONTAINER_GIT_CLONE, CONTAINER_JOB, CONTAINER_UPLOADER
from ...models import Phase
from .views import JobView, PodView

__all__ = [
    "DEADLINE_EXCEEDED",
    "JobStatus",
    "job_status",
    "parse_time",
    "ran_to_completion",
    "start_timed_out",
    "waiting_reason",
]

# Kubernetes marks a Job that ran past activeDeadlineSeconds Failed with this reason; for UWS
# that is the job being aborted for running over its executionDuration.
DEADLINE_EXCEEDED = "DeadlineExceeded"
# Waiting reasons of a container on its way to start: nothing to report.
_ON_ITS_WAY = frozenset({"ContainerCreating", "PodInitializing"})


@dataclass(frozen=True)
class JobStatus:
    """What the service reports about a Job's execution."""

    phase: Phase
    start_time: datetime | None
    end_time: datetime | None
    error_message: str = ""
    waiting_reason: str = ""  # while queued: why no pod runs yet (empty when none is known)


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 time as the API writes it (``2026-11-25T09:00:00Z``)."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _complete(job: JobView) -> bool:
    return (job.condition("Complete") or job.condition("SuccessCriteriaMet")) is not None


def ran_to_completion(job: JobView, pods: Sequence[PodView]) -> bool:
    """True once the command has succeeded in every replica (results may still upload).

    The Job is only Complete once each pod has ended, after its uploader's last pass: until
    then, the pods' job containers tell.
    """
    if _complete(job):
        return True
    wanted = job.completions or 1
    succeeded = sum(
        1
        for pod in pods
        for container in pod.container_statuses
        if container.name == CONTAINER_JOB and container.exit_code == 0
    )
    return succeeded >= wanted


def _termination_message(pods: Sequence[PodView]) -> str:
    """The first failure a pod reports: the git clone's, then the job container's."""
    for pod in pods:
        statuses = pod.init_container_statuses + pod.container_statuses
        for wanted in (CONTAINER_GIT_CLONE, CONTAINER_JOB):
            for container in statuses:
                if container.name != wanted:
                    continue
                code = container.exit_code
                if code is not None and code != 0:
                    message = (container.message or "").strip()
                    prefix = "git clone failed" if wanted == CONTAINER_GIT_CLONE else ""
                    detail = message or f"{wanted} exited with code {code}"
                    return f"{prefix}: {detail}" if prefix else detail
    return ""


def waiting_reason(pods: Sequence[PodView]) -> str:
    """Why the job's pods do not run: the scheduler's or the kubelet's reason and message.

    ``Unschedulable: 0/3 nodes are available: ...``, ``ImagePullBackOff: Back-off pulling
    image ...``, ``CreateContainerConfigError: secret "x" not found``; empty when no pod
    reports one (still being created, or none yet).
    """
    for pod in pods:
        if pod.phase not in (None, "Pending"):
            continue
        unscheduled = pod.failing("PodScheduled")
        if unscheduled is not None:
            why = unscheduled.reason or "Unschedulable"
            return f"{why}: {unscheduled.message}" if unscheduled.message else why
        for container in pod.init_container_statuses + pod.container_statuses:
            reason = container.waiting_reason
            if reason and reason not in _ON_ITS_WAY:
                message = (container.waiting_message or "").strip()
                return f"{reason}: {message}" if message else reason
    return ""


def start_timed_out(job: JobView, now: datetime, timeout_seconds: int) -> bool:
    """Whether a queued job has been waiting to start for longer than the start timeout.

    Counted from the Job controller's start (the Job unsuspended), else its creation; a
    timeout of 0 never ends.
    """
    if timeout_seconds <= 0:
        return False
    since = parse_time(job.start_time) or parse_time(job.creation_timestamp)
    return since is not None and (now - since).total_seconds() > timeout_seconds


def _uploader_failure(pods: Sequence[PodView]) -> str:
    """A message when the uploader sidecar of a pod ended with an error."""
    for pod in pods:
        for container in pod.init_container_statuses:
            if container.name != CONTAINER_UPLOADER:
                continue
            code = container.exit_code
            if code is not None and code != 0:
                return (
                    f"The job's results could not be uploaded (uploader exited with code {code})."
                )
    return ""


def job_status(job: JobView, pods: Sequence[PodView], *, manifest_exists: bool) -> JobStatus:
    """Phase from conditions, the abort annotation and the pods; never ``unknown`` in transit.

    - abort requested (annotation) → ``aborted``, ended when it was requested, unless the
      command had already succeeded (an abort during the upload comes too late);
    - ``Failed`` with ``DeadlineExceeded`` → ``aborted`` (ran over its executionDuration);
    - ``Failed`` otherwise → ``error`` with the failing container's termination message;
    - ``Complete`` → ``completed`` once the upload manifest exists, ``executing`` until then,
      ``error`` if the uploader sidecar failed;
    - given up after the start timeout (annotation) → ``error`` with the waiting reason;
    - suspended → ``pending`` (UWS jobs wait for PHASE=RUN);
    - a Pod running → ``executing``; otherwise ``queued``, with the pods' waiting reason.
    """
    annotations = job.annotations
    start = parse_time(job.start_time)
    aborted_at = annotations.get(ANNOTATIONS.ABORT_REQUESTED)
    if aborted_at and not ran_to_completion(job, pods):
        reason = annotations.get(ANNOTATIONS.ABORT_REASON) or "Aborted by request."
        return JobStatus(Phase.ABORTED, start, parse_time(aborted_at), reason)
    given_up = annotations.get(ANNOTATIONS.START_TIMED_OUT)
    if given_up:
        reason = annotations.get(ANNOTATIONS.START_FAILURE) or "The job could not start."
        return JobStatus(Phase.ERROR, None, parse_time(given_up), reason)
    failed = job.condition("Failed")
    if failed is not None:
        ended = parse_time(failed.last_transition_time)
        if failed.reason == DEADLINE_EXCEEDED:
            seconds = job.active_deadline_seconds
            message = f"The job ran over its execution duration of {seconds} s."
            return JobStatus(Phase.ABORTED, start, ended, message)
        message = _termination_message(pods) or failed.message or "The job failed."
        return JobStatus(Phase.ERROR, start, ended, message)
    complete = job.condition("Complete") or job.condition("SuccessCriteriaMet")
    if complete is not None:
        if not manifest_exists:
            failure = _uploader_failure(pods)
            if failure:
                return JobStatus(Phase.ERROR, start, parse_time(job.completion_time), failure)
            return JobStatus(Phase.EXECUTING, start, None)
        completed = job.condition("Complete") or complete
        ended = parse_time(job.completion_time) or parse_time(completed.last_transition_time)
        return JobStatus(Phase.COMPLETED, start, ended)
    if job.suspend and not aborted_at:
        return JobStatus(Phase.PENDING, None, None)
    if any(pod.phase == "Running" for pod in pods):
        return JobStatus(Phase.EXECUTING, start, None)
    return JobStatus(Phase.QUEUED, None, None, waiting_reason=waiting_reason(pods))
