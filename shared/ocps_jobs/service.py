"""The use cases of the job manager, shared by both interfaces and all three functions."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from .backends import JobBackend, JobUpdate
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

__all__ = ["WAITABLE_PHASES", "JobService"]

log = logging.getLogger(__name__)

WAITABLE_PHASES = frozenset({Phase.PENDING, Phase.QUEUED, Phase.EXECUTING})


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

    def create_job(self, request: JobRequest, caller: Caller, *, start: bool = True) -> JobRecord:
        """A new job from a validated request; queued at once unless ``start`` is False."""
        job_id = uuid.uuid4().hex
        record = JobRecord(
            job_id=job_id,
            run_id=request.run_id or job_id,
            owner=caller.name,
            creation_time=utcnow(),
            parameters=JobParameters(
                command=request.command,
                environment=request.environment,
                url=request.url,
                commit_ref=request.commit_ref,
                replicas=request.replicas,
            ),
        )
        return self.backend.create(record, start=start)

    def get_job(self, job_id: str, caller: Caller) -> JobRecord:
        """The job, if it exists and the caller may see it; 404 otherwise."""
        record = self.backend.get(job_id) if is_job_id(job_id) else None
        if record is None or not caller.may_see(record):
            raise JobNotFoundError(f"No job with ID {job_id[:64]!r}")
        return record

    def list_jobs(self, caller: Caller, query: ListQuery | None = None) -> list[JobRecord]:
        """The caller's jobs, oldest first, filtered; ``last`` keeps the newest N, newest first."""
        query = query or ListQuery()
        records = self.backend.list_records(None if caller.admin else caller.name)
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
        """PENDING -> QUEUED."""
        self.get_job(job_id, caller)
        return self.backend.start(job_id)

    def abort_job(self, job_id: str, caller: Caller) -> JobRecord:
        """Stop a job that has not finished; it ends ``aborted`` with its results kept."""
        self.get_job(job_id, caller)
        return self.backend.abort(job_id)

    def delete_job(self, job_id: str, caller: Caller) -> None:
        """Stop the job if needed and remove it with its results."""
        self.get_job(job_id, caller)
        self.backend.delete(job_id)

    def update_job(self, job_id: str, caller: Caller, update: JobUpdate) -> JobRecord:
        """Change execution duration or destruction."""
        self.get_job(job_id, caller)
        return self.backend.update(job_id, update)

    def wait_for_job(
        self, job_id: str, caller: Caller, timeout: float, phase: Phase | None = None
    ) -> JobRecord:
        """UWS WAIT: block while the job is in a waitable phase (and in ``phase`` if given)."""
        record = self.get_job(job_id, caller)
        if record.phase not in WAITABLE_PHASES or (phase is not None and record.phase != phase):
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
            files = json.loads(data)["files"]
            return [
                ResultFile(key=item["key"], size=item["size"], content_type=item["contentType"])
                for item in files
            ]
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
