"""The interface every backend offers the service layer."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from ..models import JobRecord, Phase
from .logs import LogLine

__all__ = ["UNSET", "JobBackend", "JobHistory", "JobUpdate", "RecordCheck", "Unset"]


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

    # Whether each replica has a log of its own (its lines are then marked with its index).
    per_replica_logs: bool

    def create(self, record: JobRecord, *, start: bool) -> JobRecord:
        """Store a new job; queue it at once when ``start``."""

    def get(self, job_id: str) -> JobRecord | None:
        """The job's current record, or None."""

    def list_records(
        self, owner: str | None = None, phases: Collection[Phase] | None = None
    ) -> Iterable[JobRecord]:
        """Every job (of ``owner``, in ``phases`` when given), in no particular order.

        Possibly built one at a time as iterated (the Kubernetes backend's are): read once.
        """

    def start(self, job_id: str) -> JobRecord:
        """Move a pending job to the queue."""

    def abort(self, job_id: str, reason: str = "") -> JobRecord:
        """Stop the job; it ends ``aborted`` with its outputs kept."""

    def delete(self, job_id: str) -> None:
        """Stop the job and remove it with its outputs."""

    def update(self, job_id: str, update: JobUpdate) -> JobRecord:
        """Change execution duration or destruction time."""

    def read_log(self, record: JobRecord, until: float | None) -> Iterator[LogLine] | None:
        """The job's live log from its start, every replica; None once only the stored one is left.

        With ``until`` (a monotonic time) the lines keep coming as they are written, until
        the job ends or that time passes; without it, the log as it is now.
        """

    def wait_for_change(self, job_id: str, phase: Phase, timeout: float) -> None:
        """Block until the job leaves ``phase``, is removed, or ``timeout`` passes."""

    def check_ready(self) -> dict[str, object]:
        """Readiness details; raises BackendUnavailableError naming what is down."""

    def close(self) -> None:
        """Release threads and connections."""


@runtime_checkable
class JobHistory(Protocol):
    """A backend that keeps jobs listable past its own records (Kubernetes: the store's index)."""

    def iter_newest(
        self,
        owner: str | None,
        after: str = "",
        page_size: int = 100,
        phases: Collection[Phase] | None = None,
    ) -> Iterator[JobRecord]:
        """Every kept job newest first, after a sort key (``objectstore.history.sort_key``).

        With ``phases``, live jobs in other phases may be left out (the caller filters too).
        """

    def expired_history(self, now: datetime) -> list[str]:
        """Ids of kept jobs whose destruction time has come."""


@runtime_checkable
class RecordCheck(Protocol):
    """A backend that can check a job's record in place, before any copy of it is made."""

    def check(self, job_id: str, test: Callable[[JobRecord], bool]) -> bool | None:
        """``test`` of the job's current record (which it must not change); None without one."""
