"""RecordingBackend: a JobBackend that keeps records in memory and never runs anything."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ocps_jobs.backends import JobUpdate
from ocps_jobs.backends.base import Unset
from ocps_jobs.backends.logs import LogLine
from ocps_jobs.backends.records import InMemoryRecords, queue_pending
from ocps_jobs.conventions import job_prefix
from ocps_jobs.models import JobRecord, Phase, utcnow
from ocps_jobs.objectstore import ObjectStore

__all__ = ["RecordingBackend"]


class RecordingBackend(InMemoryRecords):
    """A ``JobBackend`` that keeps records in memory and never runs anything."""

    per_replica_logs = False

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._records: dict[str, JobRecord] = {}
        self.created = 0
        self._lock = threading.RLock()

    @property
    def records(self) -> dict[str, JobRecord]:
        """The records themselves, for tests that seed or restore jobs."""
        return self._records

    @records.setter
    def records(self, records: dict[str, JobRecord]) -> None:
        with self._lock:
            self._records = records

    def create(self, record: JobRecord, *, start: bool) -> JobRecord:
        record.phase = Phase.QUEUED if start else Phase.PENDING
        with self._lock:
            self._records[record.job_id] = record
            self.created += 1
        return record.model_copy(deep=True)

    def start(self, job_id: str) -> JobRecord:
        with self._lock:
            record = self._require(job_id)
            queue_pending(record)
            return record.model_copy(deep=True)

    def abort(self, job_id: str, reason: str = "") -> JobRecord:
        with self._lock:
            record = self._require(job_id)
            if record.is_final:  # ended meanwhile: left as it ended
                return record.model_copy(deep=True)
            record.phase, record.end_time = Phase.ABORTED, utcnow()
            record.error_message = reason or "Aborted by request."
            return record.model_copy(deep=True)

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._require(job_id)
            del self._records[job_id]
        self.store.delete_prefix(job_prefix(job_id))

    def update(self, job_id: str, update: JobUpdate) -> JobRecord:
        with self._lock:
            record = self._require(job_id)
            if not isinstance(update.execution_duration, Unset):
                record.execution_duration = update.execution_duration
            if not isinstance(update.destruction, Unset):
                record.destruction = update.destruction
            return record.model_copy(deep=True)

    def read_log(self, record: JobRecord, until: float | None) -> Iterator[LogLine] | None:
        return None  # nothing runs: only a stored log, if a test put one there

    def wait_for_change(self, job_id: str, phase: Phase, timeout: float) -> None:
        return None

    def close(self) -> None:
        return None
