"""Job records kept in memory under a lock, handed out as snapshots."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection

from ..errors import JobNotFoundError
from ..models import MAX_JOB_OBJECT_RESULTS, JobRecord, Phase, ResultFile

__all__ = ["InMemoryRecords", "keep_results", "queue_pending", "snapshot"]


def keep_results(record: JobRecord, results: list[ResultFile]) -> None:
    """The job's results in its record: all of them, or the first ones and their count.

    A record stays small however many results the job has: past ``MAX_JOB_OBJECT_RESULTS``
    it keeps the first (what the job object lists) and ``result_count``; the upload
    manifest beside the outputs lists every one, read only when they are listed.
    """
    if len(results) > MAX_JOB_OBJECT_RESULTS:
        record.results = results[:MAX_JOB_OBJECT_RESULTS]
        record.result_count = len(results)
    else:
        record.results = results
        record.result_count = None


def snapshot(record: JobRecord) -> JobRecord:
    """A copy of ``record`` that its later changes do not reach.

    A shallow copy is enough, and much cheaper than a deep one on every read: a kept record
    is changed only by assigning its fields (``record.phase = ...``), never by changing a
    list or model it holds in place, so the copy's fields keep the values they had.
    """
    return record.model_copy()


class InMemoryRecords:
    """The read side of a backend whose records live in ``_records``, guarded by ``_lock``."""

    _records: dict[str, JobRecord]
    _lock: threading.RLock

    def check(self, job_id: str, test: Callable[[JobRecord], bool]) -> bool | None:
        """``test`` of the current record itself, not a copy (``RecordCheck``); None without one.

        The owner of a job with a hundred thousand results is checked in as long as that
        of a job with none.
        """
        with self._lock:
            record = self._records.get(job_id)
            return None if record is None else test(record)

    def get(self, job_id: str) -> JobRecord | None:
        """A copy of the current record."""
        with self._lock:
            record = self._records.get(job_id)
            return snapshot(record) if record else None

    def list_records(
        self, owner: str | None = None, phases: Collection[Phase] | None = None
    ) -> list[JobRecord]:
        """Copies of every record (of one owner; in ``phases``)."""
        with self._lock:
            return [
                snapshot(record)
                for record in self._records.values()
                if (owner is None or record.owner == owner)
                and (phases is None or record.phase in phases)
            ]

    def _require(self, job_id: str) -> JobRecord:
        """The record itself (callers hold the lock), or JobNotFoundError."""
        record = self._records.get(job_id)
        if record is None:
            raise JobNotFoundError(f"No job {job_id}")
        return record


def queue_pending(record: JobRecord) -> bool:
    """PENDING becomes QUEUED (True); any other phase is left as it is (False).

    Whether the job may start is the service's to check (``transitions.start_needed``).
    """
    if record.phase is Phase.PENDING:
        record.phase = Phase.QUEUED
        return True
    return False
