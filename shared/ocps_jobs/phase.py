"""Pure mapping from a Kubernetes Job (API JSON) and its Pods to a UWS phase and times."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .conventions import ANNOTATIONS, CONTAINER_GIT_CLONE, CONTAINER_JOB, CONTAINER_UPLOADER
from .models import Phase

__all__ = ["JobStatus", "job_status", "parse_time", "ran_to_completion"]

# Kubernetes marks a Job that ran past activeDeadlineSeconds Failed with this reason; for UWS
# that is the job being aborted for running over its executionDuration.
DEADLINE_EXCEEDED = "DeadlineExceeded"


@dataclass(frozen=True)
class JobStatus:
    """What the service reports about a Job's execution."""

    phase: Phase
    start_time: datetime | None
    end_time: datetime | None
    error_message: str = ""


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 time as the API writes it (``2026-11-25T09:00:00Z``)."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def ran_to_completion(job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """True once the command has succeeded in every replica (results may still upload).

    The Job is only Complete once each pod has ended, after its uploader's last pass: until
    then, the pods' job containers tell.
    """
    if (_condition(job, "Complete") or _condition(job, "SuccessCriteriaMet")) is not None:
        return True
    wanted = (job.get("spec") or {}).get("completions") or 1
    succeeded = 0
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if container.get("name") == CONTAINER_JOB and terminated.get("exitCode") == 0:
                succeeded += 1
    return succeeded >= wanted


def _termination_message(pods: list[dict[str, Any]]) -> str:
    """The first failure a pod reports: the git clone's, then the job container's."""
    for pod in pods:
        status = pod.get("status") or {}
        statuses = (status.get("initContainerStatuses") or []) + (
            status.get("containerStatuses") or []
        )
        for wanted in (CONTAINER_GIT_CLONE, CONTAINER_JOB):
            for container in statuses:
                if container.get("name") != wanted:
                    continue
                terminated = (container.get("state") or {}).get("terminated") or {}
                if terminated and terminated.get("exitCode", 0) != 0:
                    message = (terminated.get("message") or "").strip()
                    code = terminated.get("exitCode")
                    prefix = "git clone failed" if wanted == CONTAINER_GIT_CLONE else ""
                    detail = message or f"{wanted} exited with code {code}"
                    return f"{prefix}: {detail}" if prefix else detail
    return ""


def _uploader_failure(pods: list[dict[str, Any]]) -> str:
    """A message when the uploader sidecar of a pod ended with an error."""
    for pod in pods:
        for container in (pod.get("status") or {}).get("initContainerStatuses") or []:
            if container.get("name") != CONTAINER_UPLOADER:
                continue
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode", 0) != 0:
                return (
                    "The job's results could not be uploaded "
                    f"(uploader exited with code {terminated['exitCode']})."
                )
    return ""


def job_status(
    job: dict[str, Any], pods: list[dict[str, Any]], *, manifest_exists: bool
) -> JobStatus:
    """Phase from conditions, the abort annotation and the pods; never ``unknown`` in transit.

    - abort requested (annotation) → ``aborted``, ended when it was requested, unless the
      command had already succeeded (an abort during the upload comes too late);
    - ``Failed`` with ``DeadlineExceeded`` → ``aborted`` (ran over its executionDuration);
    - ``Failed`` otherwise → ``error`` with the failing container's termination message;
    - ``Complete`` → ``completed`` once the upload manifest exists, ``executing`` until then,
      ``error`` if the uploader sidecar failed;
    - suspended → ``pending`` (UWS jobs wait for PHASE=RUN);
    - a Pod running → ``executing``; otherwise ``queued``.
    """
    metadata = job.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    status = job.get("status") or {}
    start = parse_time(status.get("startTime"))
    aborted_at = annotations.get(ANNOTATIONS.ABORT_REQUESTED)
    if aborted_at and not ran_to_completion(job, pods):
        reason = annotations.get(ANNOTATIONS.ABORT_REASON) or "Aborted by request."
        return JobStatus(Phase.ABORTED, start, parse_time(aborted_at), reason)
    failed = _condition(job, "Failed")
    if failed is not None:
        ended = parse_time(failed.get("lastTransitionTime"))
        if failed.get("reason") == DEADLINE_EXCEEDED:
            seconds = (job.get("spec") or {}).get("activeDeadlineSeconds")
            message = f"The job ran over its execution duration of {seconds} s."
            return JobStatus(Phase.ABORTED, start, ended, message)
        message = _termination_message(pods) or failed.get("message") or "The job failed."
        return JobStatus(Phase.ERROR, start, ended, message)
    complete = _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet")
    if complete is not None:
        if not manifest_exists:
            failure = _uploader_failure(pods)
            if failure:
                ended = parse_time(status.get("completionTime"))
                return JobStatus(Phase.ERROR, start, ended, failure)
            return JobStatus(Phase.EXECUTING, start, None)
        completed = _condition(job, "Complete") or complete
        ended = parse_time(status.get("completionTime")) or parse_time(
            completed.get("lastTransitionTime")
        )
        return JobStatus(Phase.COMPLETED, start, ended)
    if (job.get("spec") or {}).get("suspend") and not aborted_at:
        return JobStatus(Phase.PENDING, None, None)
    if any((pod.get("status") or {}).get("phase") == "Running" for pod in pods):
        return JobStatus(Phase.EXECUTING, start, None)
    return JobStatus(Phase.QUEUED, None, None)
