"""A Job's labels and annotations: the job's metadata, within Kubernetes' budget."""

from __future__ import annotations

import hashlib
import re

from ...config import Settings
from ...conventions import (
    ANNOTATIONS,
    LABEL_JOB_ID,
    LABEL_MANAGED_BY,
    LABEL_OWNER,
    LABEL_RUN_ID,
    MANAGED_BY,
)
from ...errors import PayloadTooLargeError
from ...models import JobRecord

__all__ = ["ANNOTATION_BUDGET", "build_labels", "job_annotations", "owner_label", "pod_annotations"]

# Kubernetes refuses annotations over 256 KiB in total; leave room for kubectl's own.
ANNOTATION_BUDGET = 256 * 1024 - 8 * 1024


_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def owner_label(owner: str) -> str:
    """A label value for the owner: the name itself when it is a valid label value."""
    if _LABEL_VALUE.fullmatch(owner):
        return owner
    return "sha256-" + hashlib.sha256(owner.encode()).hexdigest()[:56]


def _within_budget(annotations: dict[str, str], what: str) -> dict[str, str]:
    size = sum(len(key.encode()) + len(value.encode()) for key, value in annotations.items())
    if size > ANNOTATION_BUDGET:
        raise PayloadTooLargeError(
            f"The job's {what} is {size} bytes; Kubernetes annotations hold at most "
            f"{ANNOTATION_BUDGET} bytes"
        )
    return annotations


def job_annotations(record: JobRecord) -> dict[str, str]:
    """All job metadata, under one prefix; 413 when it would not fit Kubernetes' budget."""
    annotations = {
        ANNOTATIONS.RUN_ID: record.run_id,
        ANNOTATIONS.OWNER: record.owner,
        ANNOTATIONS.CREATION_TIME: record.creation_time.isoformat(),
        ANNOTATIONS.PARAMETERS: record.parameters.model_dump_json(),
    }
    if record.execution_duration:
        annotations[ANNOTATIONS.EXECUTION_DURATION] = str(record.execution_duration)
    if record.destruction is not None:
        annotations[ANNOTATIONS.DESTRUCTION] = record.destruction.isoformat()
    return _within_budget(annotations, "metadata")


def pod_annotations(record: JobRecord, settings: Settings) -> dict[str, str]:
    """The configured pod annotations, and the record the uploader archives as job.json.

    Without the rendered environment: the parameters have the caller's entries.
    """
    annotations = {
        **settings.job_annotations,
        **settings.pod_annotations,
        ANNOTATIONS.RECORD: record.model_dump_json(exclude={"environment"}),
    }
    return _within_budget(annotations, "record")


def build_labels(record: JobRecord, settings: Settings) -> dict[str, str]:
    """The labels of the Job and its pods: the operator's, managed by us, job ID, owner, run.

    The run id is a label only where it is a valid label value (the annotation keeps it).
    """
    labels = {
        **settings.job_labels,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB_ID: record.job_id,
        LABEL_OWNER: owner_label(record.owner),
    }
    if record.run_id and _LABEL_VALUE.fullmatch(record.run_id):
        labels[LABEL_RUN_ID] = record.run_id
    return labels
