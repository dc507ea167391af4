"""The interface every backend offers the service layer."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..models import JobRecord, Phase

__all__ = ["UNSET", "JobBackend", "JobUpdate", "Unset"]


class Unset:
    """The type of UNSET: a field the update leaves as it is."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


@dataclass(frozen=True)
class JobUpdate:
    """Changes a client may make to a job after creation."""

    execution_duration: int | Unset | None = UNSET
    destruction: datetime | Unset | None = UNSET


class JobBackend(Protocol):
    """Runs jobs and keeps their records."""

    def create(self, record: JobRecord, *, start: bool) -> JobRecord:
        """Store a new job; queue it at once when ``start``."""

    def get(self, job_id: str) -> JobRecord | None:
        """The job's current record, or None."""

    def list_records(
        self, owner: str | None = None, phases: Collection[Phase] | None = None
    ) -> list[JobRecord]:
        """Every job (of ``owner``, in ``phases`` when given), in no particular order."""

    def start(self, job_id: str) -> JobRecord:
        """Move a pending job to the queue."""

    def abort(self, job_id: str, reason: str = "") -> JobRecord:
        """Stop the job; it ends ``aborted`` with its outputs kept."""

    def delete(self, job_id: str) -> None:
        """Stop the job and remove it with its outputs."""

    def update(self, job_id: str, update: JobUpdate) -> JobRecord:
        """Change execution duration or destruction time."""

    def wait_for_change(self, job_id: str, phase: Phase, timeout: float) -> None:
        """Block until the job leaves ``phase``, is removed, or ``timeout`` passes."""

    def close(self) -> None:
        """Release threads and connections."""
