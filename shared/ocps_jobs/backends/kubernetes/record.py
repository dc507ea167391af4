"""A job record read back from its Job, its Pods and (once uploaded) its results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter

from ...conventions import ANNOTATIONS, CONTAINER_JOB
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

__all__ = ["record_from_job", "record_from_view"]

# The job container's variables, validated in one call rather than one model at a time.
_ENVIRONMENT = TypeAdapter(list[EnvironmentVariable])


def record_from_job(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], results: list[ResultFile] | None
) -> JobRecord:
    """A job record from the Job's API JSON, its pods and (once uploaded) its results."""
    view = JobView(job)
    status = job_status(view, [PodView(pod) for pod in pods], manifest_exists=results is not None)
    return record_from_view(view, status, results)


def record_from_view(
    view: JobView, status: JobStatus, results: list[ResultFile] | None
) -> JobRecord:
    """The record of a Job whose status is already known (a list decides on it first)."""
    annotations = view.annotations
    job_id = view.job_id
    if job_id is None:
        raise KeyError("the Job has no job ID label")
    main = next((c for c in view.containers if c.name == CONTAINER_JOB), None)
    destruction = annotations.get(ANNOTATIONS.DESTRUCTION)
    return JobRecord(
        job_id=job_id,
        run_id=annotations.get(ANNOTATIONS.RUN_ID, ""),
        owner=annotations.get(ANNOTATIONS.OWNER, ""),
        phase=status.phase,
        creation_time=parse_time(annotations.get(ANNOTATIONS.CREATION_TIME))
        or parse_time(view.creation_timestamp)
        or utcnow(),
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
        results=results if status.phase in FINAL_PHASES else None,
    )
