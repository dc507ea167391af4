"""A job record read back from its Job, its Pods and (once uploaded) its results."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from ...conventions import ANNOTATIONS, CONTAINER_GIT_CLONE, CONTAINER_JOB
from ...models import (
    FINAL_PHASES,
    EnvironmentVariable,
    JobParameters,
    JobRecord,
    ResultFile,
    utcnow,
)
from .scripts import from_kubelet_literal
from .status import JobStatus, job_status, parse_time
from .views import JobView, PodView

__all__ = ["creation_time_of", "provenance_of", "record_from_job", "record_from_view"]

# What ``git rev-parse HEAD`` prints: a SHA-1 or SHA-256 object name.
_COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# How some runtimes spell an image ID before the ``name@sha256:...`` that identifies it.
_RUNTIME_PREFIXES = ("docker-pullable://", "docker://")


def provenance_of(pods: Sequence[PodView]) -> tuple[str, str]:
    """What exactly ran: the commit the clone checked out and the job container's image ID.

    The clone's commit is its termination message on success; the image as the runtime
    resolved it (``repository@sha256:...``). Empty while unknown. The newest pod's, when
    pods disagree (a retried pod after the image tag moved).
    """
    commit = image = ""
    for pod in sorted(pods, key=lambda pod: pod.creation_timestamp or ""):
        for status in pod.init_container_statuses:
            text = (status.message or "").strip()
            if status.name == CONTAINER_GIT_CLONE and status.exit_code == 0 and _COMMIT.match(text):
                commit = text
        job_container = pod.container(CONTAINER_JOB)
        if job_container is not None and job_container.image_id:
            image = job_container.image_id
            for prefix in _RUNTIME_PREFIXES:
                image = image.removeprefix(prefix)
    return commit, image


# The job container's variables, validated in one call rather than one model at a time.
_ENVIRONMENT = TypeAdapter(list[EnvironmentVariable])


def creation_time_of(view: JobView) -> datetime:
    """When the job was created: its annotation, else the Job's own creation time."""
    annotations = view.annotations
    return (
        parse_time(annotations.get(ANNOTATIONS.CREATION_TIME))
        or parse_time(view.creation_timestamp)
        or utcnow()
    )


def record_from_job(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], results: list[ResultFile] | None
) -> JobRecord:
    """A job record from the Job's API JSON, its pods and (once uploaded) its results."""
    view = JobView(job)
    pod_views = [PodView(pod) for pod in pods]
    status = job_status(view, pod_views, manifest_exists=results is not None)
    return record_from_view(view, pod_views, status, results)


def record_from_view(
    view: JobView, pods: Sequence[PodView], status: JobStatus, results: list[ResultFile] | None
) -> JobRecord:
    """The record of a Job whose status is already known (a list decides on it first)."""
    annotations = view.annotations
    job_id = view.job_id
    if job_id is None:
        raise KeyError("the Job has no job ID label")
    main = next((c for c in view.containers if c.name == CONTAINER_JOB), None)
    commit_sha, image_digest = provenance_of(pods)
    destruction = annotations.get(ANNOTATIONS.DESTRUCTION)
    return JobRecord(
        job_id=job_id,
        run_id=annotations.get(ANNOTATIONS.RUN_ID, ""),
        owner=annotations.get(ANNOTATIONS.OWNER, ""),
        phase=status.phase,
        creation_time=creation_time_of(view),
        start_time=status.start_time,
        end_time=status.end_time,
        execution_duration=view.active_deadline_seconds,
        destruction=parse_time(destruction) if destruction else None,
        parameters=JobParameters.model_validate_json(annotations[ANNOTATIONS.PARAMETERS]),
        environment=_ENVIRONMENT.validate_python(
            [
                {"name": item["name"], "value": from_kubelet_literal(item.get("value") or "")}
                for item in (main.env if main is not None else [])
                if "valueFrom" not in item  # the replica index: each pod's own, not a parameter
            ]
        ),
        error_message=status.error_message,
        waiting_reason=status.waiting_reason,
        results=results if status.phase in FINAL_PHASES else None,
        commit_sha=commit_sha,
        image_digest=image_digest,
    )
