"""The use cases of the job manager, shared by both interfaces and all three functions."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .backends import JobBackend, JobUpdate
from .backends.base import Unset
from .config import Settings
from .conventions import is_job_id, manifest_key
from .errors import JobNotFoundError, ResultNotFoundError
from .models import (
    FINAL_PHASES,
    Caller,
    JobParameters,
    JobRecord,
    JobRequest,
    Phase,
    ResultFile,
    utcnow,
)
from .objectstore import ObjectStore, ObjectStream
from .resultids import decode_result_id
from .transitions import (
    abort_needed,
    clamp_destruction,
    clamp_execution_duration,
    may_wait,
    require_destruction_change,
    require_duration_change,
    start_needed,
)
from .uploader.manifest import read_manifest_files

__all__ = ["JobService", "ListQuery"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListQuery:
    """Filters of a job list, combined with AND."""

    phases: frozenset[Phase] | None = None
    after: datetime | None = None
    last: int | None = None


class JobService:
    """Creates, reads, waits on, aborts and deletes jobs; finds and opens their results."""

    def __init__(self, settings: Settings, backend: JobBackend, store: ObjectStore) -> None:
        self.settings = settings
        self.backend = backend
        self.store = store

    # --- jobs ----------------------------------------------------------------------------

    def create_job(
        self,
        request: JobRequest,
        caller: Caller,
        *,
        start: bool = True,
        execution_duration: int | None = None,
        destruction: datetime | None = None,
    ) -> JobRecord:
        """A new job from a validated request; queued at once unless ``start`` is False.

        Execution duration and destruction default to the configured ones and are clamped
        to the configured limits (see ``clamp_execution_duration`` / ``clamp_destruction``).
        """
        job_id = uuid.uuid4().hex
        created = utcnow()
        if execution_duration is None:
            execution_duration = self.settings.default_execution_duration
        if destruction is not None:
            require_destruction_change(destruction, _now())
        elif self.settings.default_destruction_seconds:
            destruction = created + timedelta(seconds=self.settings.default_destruction_seconds)
        record = JobRecord(
            job_id=job_id,
            run_id=request.run_id or job_id,
            owner=caller.name,
            creation_time=created,
            execution_duration=self.clamp_execution_duration(execution_duration),
            destruction=self.clamp_destruction(destruction, created),
            parameters=JobParameters.from_request(request),
        )
        return self.backend.create(record, start=start)

    def get_job(self, job_id: str, caller: Caller) -> JobRecord:
        """The job, if it exists, is not past its destruction and the caller may see it."""
        record = self.backend.get(job_id) if is_job_id(job_id) else None
        if record is None or not caller.may_see(record) or _destroyed(record, _now()):
            raise JobNotFoundError(f"No job with ID {job_id[:64]!r}")
        return record

    def list_jobs(self, caller: Caller, query: ListQuery | None = None) -> list[JobRecord]:
        """The caller's jobs, oldest first, filtered; ``last`` keeps the newest N, newest first."""
        query = query or ListQuery()
        records = self.backend.list_records(
            None if caller.admin else caller.name, phases=query.phases
        )
        now = _now()
        records = [record for record in records if not _destroyed(record, now)]
        if query.phases is not None:
            records = [record for record in records if record.phase in query.phases]
        if query.after is not None:
            after = query.after
            records = [record for record in records if record.creation_time > after]
        records.sort(key=lambda record: (record.creation_time, record.job_id))
        if query.last is not None:
            records = records[::-1][: query.last]
        return records

    def start_job(self, job_id: str, caller: Caller) -> JobRecord:
        """PENDING -> QUEUED; a job already on its way is left as it is (409 once it ended)."""
        record = self.get_job(job_id, caller)
        if not start_needed(record):
            return record
        return self.backend.start(job_id)

    def abort_job(self, job_id: str, caller: Caller, *, wait: float = 0.0) -> JobRecord:
        """Stop a job that has not finished; it ends ``aborted`` with its results kept.

        Aborting an aborted job changes nothing; any other final phase is a conflict (409).
        With ``wait``, block up to that many seconds (at most ``wait_max_seconds``) until
        the job has reached its final phase, so that a UWS client sees ABORTED at once.
        """
        record = self.get_job(job_id, caller)
        if not abort_needed(record):
            return record
        record = self.backend.abort(job_id)
        deadline = time.monotonic() + min(wait, float(self.settings.wait_max_seconds))
        while record.phase not in FINAL_PHASES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.backend.wait_for_change(job_id, record.phase, remaining)
            current = self.backend.get(job_id)
            if current is None:
                break
            record = current
        return record

    def delete_job(self, job_id: str, caller: Caller) -> None:
        """Stop the job if needed and remove it with its results."""
        self.get_job(job_id, caller)
        self.backend.delete(job_id)

    def update_job(self, job_id: str, caller: Caller, update: JobUpdate) -> JobRecord:
        """Change execution duration or destruction, clamped to the configured limits.

        The execution duration only before the job runs (409 otherwise); a destruction time
        already past is refused (400): a skewed client clock must not destroy a job.
        """
        record = self.get_job(job_id, caller)
        execution_duration = update.execution_duration
        if not isinstance(execution_duration, Unset):
            require_duration_change(record)
            execution_duration = self.clamp_execution_duration(execution_duration or 0)
        destruction = update.destruction
        if not isinstance(destruction, Unset):
            require_destruction_change(destruction, _now())
            destruction = self.clamp_destruction(destruction, record.creation_time)
        clamped = JobUpdate(execution_duration=execution_duration, destruction=destruction)
        return self.backend.update(job_id, clamped)

    def clamp_execution_duration(self, seconds: int) -> int | None:
        """The execution duration a request for ``seconds`` (0 = unlimited) gets.

        With ``max_execution_duration`` set, more than it, or unlimited, becomes the maximum.
        Unlimited is kept as None.
        """
        return clamp_execution_duration(seconds, self.settings.max_execution_duration)

    def clamp_destruction(self, when: datetime | None, created: datetime) -> datetime | None:
        """The destruction time a request for ``when`` (None = never) gets, to the second.

        With ``max_destruction_seconds`` set, never or later than creation plus the maximum
        becomes creation plus the maximum.
        """
        return clamp_destruction(when, created, self.settings.max_destruction_seconds)

    def set_execution_duration(self, job_id: str, caller: Caller, seconds: int) -> JobRecord:
        """UWS ``EXECUTIONDURATION``: clamped; only before the job runs (409 otherwise)."""
        return self.update_job(job_id, caller, JobUpdate(execution_duration=seconds))

    def set_destruction(self, job_id: str, caller: Caller, when: datetime) -> JobRecord:
        """UWS ``DESTRUCTION``: clamped; the job is removed at that time (400 if past)."""
        return self.update_job(job_id, caller, JobUpdate(destruction=when))

    def destroy_expired(self) -> list[str]:
        """Remove every job past its destruction time with its results; their ids.

        The embedded backend also does this by itself; this use case serves a periodic
        sweep on backends that do not.
        """
        now = _now()
        destroyed = []
        for record in self.backend.list_records(None):
            if not _destroyed(record, now):
                continue
            try:
                self.backend.delete(record.job_id)
            except JobNotFoundError:
                continue
            log.info("destroyed job %s at its destruction time", record.job_id)
            destroyed.append(record.job_id)
        return destroyed

    def wait_for_job(
        self, job_id: str, caller: Caller, timeout: float, phase: Phase | None = None
    ) -> JobRecord:
        """UWS WAIT: block while the job is in a waitable phase (and in ``phase`` if given)."""
        record = self.get_job(job_id, caller)
        if not may_wait(record, phase):
            return record
        cap = float(self.settings.wait_max_seconds)
        seconds = cap if timeout < 0 else min(timeout, cap)
        if seconds > 0:
            self.backend.wait_for_change(job_id, record.phase, seconds)
        return self.get_job(job_id, caller)

    # --- results -------------------------------------------------------------------------

    def results_of(self, record: JobRecord) -> list[ResultFile]:
        """A job's result files: known once its outputs are uploaded (manifest written)."""
        if record.results is not None:
            return record.results
        if record.phase not in FINAL_PHASES:
            return []
        data = self.store.get_bytes(manifest_key(record.job_id))
        if data is None:
            return []
        try:
            return ResultFile.listed(read_manifest_files(data))
        except (ValueError, KeyError, TypeError) as error:
            log.error("unreadable manifest for job %s: %s", record.job_id, error)
            return []

    def list_results(self, job_id: str, caller: Caller) -> list[ResultFile]:
        """The result files of a job the caller may see."""
        return self.results_of(self.get_job(job_id, caller))

    def find_result(self, result_id: str, caller: Caller) -> ResultFile:
        """The result a result ID names, if it is one of a visible job's results."""
        decoded = decode_result_id(result_id)
        try:
            results = self.list_results(decoded.job_id, caller)
        except JobNotFoundError:
            raise ResultNotFoundError(f"No result with ID {result_id[:100]!r}") from None
        for result in results:
            if result.key == decoded.key:
                return result
        raise ResultNotFoundError(f"No result with ID {result_id[:100]!r}")

    def find_result_by_index(self, job_id: str, index: int, caller: Caller) -> ResultFile:
        """The n-th result (from 0) of a visible job."""
        results = self.list_results(job_id, caller)
        if not 0 <= index < len(results):
            raise ResultNotFoundError(f"Job {job_id} has no result number {index}")
        return results[index]

    def open_result(self, result: ResultFile, start: int, end: int | None) -> ObjectStream:
        """Stream bytes ``start..end`` of a result found by ``find_result``."""
        stream = self.store.open(result.key, start, end)
        if stream is None:
            raise ResultNotFoundError("The result file is no longer in the object store")
        return stream

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()


def _now() -> datetime:
    return datetime.now(UTC)


def _destroyed(record: JobRecord, now: datetime) -> bool:
    """True once the job's destruction time has come: it is gone for every request."""
    return record.destruction is not None and record.destruction <= now
