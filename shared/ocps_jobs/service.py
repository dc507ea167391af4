"""The use cases of the job manager, shared by both interfaces and all three functions."""

from __future__ import annotations

import logging
import posixpath
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from .backends import JobBackend, JobUpdate
from .backends.base import JobHistory, RecordCheck, Unset
from .backends.logs import LogLine, split_lines
from .backends.results import JobResults
from .config import Settings
from .conventions import (
    LOG_RESULT_NAME,
    MAX_PAGE_SIZE,
    is_job_id,
    replica_log_name,
)
from .errors import InvalidRequestError, JobNotFoundError, ResultNotFoundError
from .models import (
    FINAL_PHASES,
    Caller,
    JobParameters,
    JobRecord,
    JobRequest,
    LogQuery,
    Phase,
    ResultFile,
    utcnow,
)
from .objectstore import ObjectStore, ObjectStream
from .objectstore.history import is_sort_key, place_of, sort_key
from .observability.context import note_request
from .observability.events import JobEvents
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

__all__ = ["WAIT_SLICE_SECONDS", "JobLog", "JobPage", "JobService", "ListQuery"]

log = logging.getLogger(__name__)

Item = TypeVar("Item")

# How often a WAIT whose client may hang up checks that it is still there.
WAIT_SLICE_SECONDS = 5.0


@dataclass(frozen=True)
class ListQuery:
    """Filters of a job list, combined with AND, and its paging.

    ``last`` (UWS LAST) keeps the newest N, newest first. ``limit`` asks for one page of at
    most that many jobs, newest first, starting after ``cursor`` (the ``next_cursor`` of
    the previous page). Neither: every job, oldest first.
    """

    phases: frozenset[Phase] | None = None
    after: datetime | None = None
    last: int | None = None
    limit: int | None = None
    cursor: str | None = None


@dataclass(frozen=True)
class JobPage(Generic[Item]):
    """One page of a job list; ``next_cursor`` continues it, None on the last page.

    ``records`` holds the jobs' records, or what ``JobService.render_page`` made of each.
    """

    records: list[Item]
    next_cursor: str | None


@dataclass
class JobLog:
    """A job's log as text lines; with several replicas each line starts ``[index] ``."""

    lines: Iterator[str]
    marked: bool
    replicas: int
    skipped: tuple[int, ...]  # per replica index, the lines before the first one sent


class JobService:
    """Creates, reads, waits on, aborts and deletes jobs; finds and opens their results."""

    def __init__(self, settings: Settings, backend: JobBackend, store: ObjectStore) -> None:
        self.settings = settings
        self.backend = backend
        self.store = store
        self.results = JobResults(store)
        self.events = JobEvents(store)  # job events: log lines and counters, each once
        # None: no cap (the functions; Knative bounds their requests); 0: no request waits.
        waits = settings.max_concurrent_waits
        self._wait_slots = None if waits is None else threading.BoundedSemaphore(waits)

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
        created_record = self.backend.create(record, start=start)
        note_request(job_id=created_record.job_id)
        self.events.created(created_record, caller.name)
        return created_record

    def get_job(self, job_id: str, caller: Caller) -> JobRecord:
        """The job, if it exists, is not past its destruction and the caller may see it."""
        record = self._visible_record(job_id, caller) if is_job_id(job_id) else None
        if record is None or _destroyed(record, _now()):
            raise JobNotFoundError(f"No job with ID {job_id[:64]!r}")
        self.events.observe(record)
        return record

    def _visible_record(self, job_id: str, caller: Caller) -> JobRecord | None:
        """The job's record if the caller may see it; the owner is checked before any copy."""
        backend = self.backend
        visible = (
            backend.check(job_id, caller.may_see) if isinstance(backend, RecordCheck) else True
        )
        record = backend.get(job_id) if visible else None
        if visible is False or (record is not None and not caller.may_see(record)):
            log.warning(
                "refused another owner's job", extra={"job_id": job_id, "user": caller.name}
            )
            return None
        return record

    def list_jobs(self, caller: Caller, query: ListQuery | None = None) -> list[JobRecord]:
        """The caller's jobs, oldest first, filtered; ``last`` keeps the newest N, newest first."""
        query = query or ListQuery()
        if query.last is None and query.limit is None:
            return self.list_page(caller, query).records[::-1]
        return self.list_page(caller, query).records

    def list_page(self, caller: Caller, query: ListQuery) -> JobPage[JobRecord]:
        """One page of the caller's jobs, newest first (all of them without LAST or limit)."""
        return self.render_page(caller, query, _as_record)

    def render_page(
        self, caller: Caller, query: ListQuery, render: Callable[[JobRecord], Item]
    ) -> JobPage[Item]:
        """One page of the caller's jobs, newest first, each record passed through ``render``.

        Each record is rendered as soon as it is read and not kept: a list of thousands of
        jobs never holds every record at once. Jobs past their destruction time are left
        out. On the Kubernetes backend the jobs whose Job object is gone come from the
        store's history index, read only as far as the page needs.
        """
        if query.cursor is not None and not is_sort_key(query.cursor):
            raise InvalidRequestError("The cursor is not one a previous page returned")
        bounds = [n for n in (query.last, query.limit) if n is not None]
        size = min(bounds) if bounds else None
        if size == 0:
            return JobPage([], None)
        owner = None if caller.admin else caller.name
        now = _now()
        # One more than a page asks for: whether another page follows.
        wanted = None if size is None else size + (query.limit is not None)
        items: list[Item] = []
        last_place = ""  # the sort key of a full page's last job
        for record in self._newest(
            owner, query.cursor or "", wanted or MAX_PAGE_SIZE, query.phases
        ):
            if query.after is not None and record.creation_time <= query.after:
                break  # newest first: every later one is older still
            if _destroyed(record, now):
                continue
            self.events.observe(record)
            if owner is not None and record.owner != owner:
                continue
            if query.phases is not None and record.phase not in query.phases:
                continue
            if len(items) == size:  # a full page, and this job follows it
                return JobPage(items, last_place)
            items.append(render(record))
            if len(items) == size:
                if wanted == size:
                    break  # LAST: the newest N, no page after them
                last_place = sort_key(record.creation_time, record.job_id)
        return JobPage(items, None)

    def _newest(
        self,
        owner: str | None,
        after: str,
        page_size: int,
        phases: Collection[Phase] | None = None,
    ) -> Iterator[JobRecord]:
        """Every job of ``owner`` (all when None) newest first, after the sort key ``after``.

        ``phases`` lets the backend skip building records that would be filtered out; the
        caller still filters (an archived job's phase is its record's).
        """
        if isinstance(self.backend, JobHistory):
            yield from self.backend.iter_newest(owner, after, page_size, phases)
            return
        records = self.backend.list_records(owner, phases=phases)
        if after:
            before = place_of(after)
            records = [r for r in records if (r.creation_time, r.job_id) < before]
        yield from sorted(records, key=lambda r: (r.creation_time, r.job_id), reverse=True)

    def start_job(self, job_id: str, caller: Caller) -> JobRecord:
        """PENDING -> QUEUED; a job already on its way is left as it is (409 once it ended)."""
        record = self.get_job(job_id, caller)
        if not start_needed(record):
            return record
        record = self.backend.start(job_id)
        self.events.user_action("queued", record, caller.name)
        return record

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
        self.events.user_action("aborted", record, caller.name)
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
        record = self.get_job(job_id, caller)
        self.events.end_before_delete(record)
        self.backend.delete(job_id)
        self.events.user_action("deleted", record, caller.name)

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
        expired = {
            record.job_id: record
            for record in self.backend.list_records(None)
            if _destroyed(record, now)
        }
        due = list(expired)
        if isinstance(self.backend, JobHistory):
            due += self.backend.expired_history(now)  # archived, their Job perhaps gone
        destroyed = []
        for job_id in dict.fromkeys(due):
            record = expired.get(job_id)
            if record is not None:
                self.events.end_before_delete(record)
            try:
                self.backend.delete(job_id)
            except JobNotFoundError:
                continue
            self.events.destroyed(job_id)
            destroyed.append(job_id)
        return destroyed

    def wait_for_job(
        self,
        job_id: str,
        caller: Caller,
        timeout: float,
        phase: Phase | None = None,
        disconnected: Callable[[], bool] | None = None,
    ) -> JobRecord:
        """UWS WAIT: block while the job is in a waitable phase (and in ``phase`` if given).

        It holds one of the ``held_request`` slots; when none is free a WAIT answers at once
        (as WAIT=0). With ``disconnected``, the wait also ends within ``WAIT_SLICE_SECONDS``
        of the client leaving.
        """
        record = self.get_job(job_id, caller)
        if not may_wait(record, phase):
            return record
        cap = float(self.settings.wait_max_seconds)
        seconds = cap if timeout < 0 else min(timeout, cap)
        if seconds <= 0:
            return record
        with self.held_request() as held:
            if not held:
                return record
            self._wait_on(job_id, record.phase, seconds, disconnected)
        return self.get_job(job_id, caller)

    @contextmanager
    def held_request(self) -> Iterator[bool]:
        """A slot for a request that holds its thread while it waits: True if one was free.

        UWS WAITs, followed logs and the web view's long polls share the
        ``max_concurrent_waits`` slots (below the server's threads), so that however many
        clients and addresses hold such requests, threads stay for everyone else. A request
        without a slot answers at once with what there is.
        """
        slots = self._wait_slots
        if slots is not None and not slots.acquire(blocking=False):
            yield False
            return
        try:
            yield True
        finally:
            if slots is not None:
                slots.release()

    # --- logs ----------------------------------------------------------------------------

    def job_log(self, job_id: str, caller: Caller, query: LogQuery | None = None) -> JobLog:
        """The job's log, live from the backend while it runs, from the stored log after."""
        query = query or LogQuery()
        record = self.get_job(job_id, caller)
        replicas = record.parameters.replicas
        marked = replicas > 1 and self.backend.per_replica_logs
        skip = dict(enumerate(query.skip))
        if query.tail is not None:
            counts: dict[int, int] = {}
            for line in self._log_lines(record, None):
                counts[line.stream] = counts.get(line.stream, 0) + 1
            for stream, count in counts.items():
                skip[stream] = max(skip.get(stream, 0), count - query.tail)
        skipped = tuple(skip.get(index, 0) for index in range(max(skip, default=-1) + 1))
        return JobLog(
            lines=self._job_log_text(record, dict(skip), query.follow, marked),
            marked=marked,
            replicas=replicas,
            skipped=skipped,
        )

    def _job_log_text(
        self, record: JobRecord, skip: dict[int, int], follow: bool, marked: bool
    ) -> Iterator[str]:
        """The lines after ``skip``; followed only while a held-request slot is free."""
        if not follow:
            yield from self._log_text(record, skip, False, marked)
            return
        with self.held_request() as held:
            yield from self._log_text(record, skip, held, marked)

    def _log_text(
        self, record: JobRecord, skip: dict[int, int], follow: bool, marked: bool
    ) -> Iterator[str]:
        """The lines after ``skip``; a follow ends when the job does or its time is up."""
        seen: dict[int, int] = {}

        def fresh(lines: Iterator[LogLine]) -> Iterator[str]:
            for line in lines:
                count = seen[line.stream] = seen.get(line.stream, 0) + 1
                if count > skip.get(line.stream, 0):
                    yield f"[{line.stream}] {line.text}" if marked else line.text

        until = time.monotonic() + self.settings.wait_max_seconds if follow else None
        yield from fresh(self._log_lines(record, until))
        if not follow:
            return
        current = self.backend.get(record.job_id)
        if current is None or not current.is_final or record.is_final:
            return
        # The job ended while followed: what its live log did not show yet, from where it is.
        skip = {stream: max(skip.get(stream, 0), count) for stream, count in seen.items()}
        seen.clear()
        yield from fresh(self._log_lines(current, None))

    def _log_lines(self, record: JobRecord, until: float | None) -> Iterator[LogLine]:
        live = self.backend.read_log(record, until)
        return live if live is not None else self._stored_log(record)

    def _stored_log(self, record: JobRecord) -> Iterator[LogLine]:
        """The log the job's uploads kept as result files (one per replica on Kubernetes)."""
        names = {LOG_RESULT_NAME: 0}
        names.update(
            {replica_log_name(index): index for index in range(record.parameters.replicas)}
        )
        for result in self.results_of(record):
            stream = names.get(posixpath.basename(result.key))
            if stream is None:
                continue
            opened = self.store.open(result.key)
            if opened is None:
                continue
            try:
                yield from split_lines(opened.chunks, stream)
            finally:
                opened.close()

    def _wait_on(
        self, job_id: str, phase: Phase, seconds: float, disconnected: Callable[[], bool] | None
    ) -> None:
        """Block until the phase changes or ``seconds`` pass; in slices when watching a client."""
        if disconnected is None:
            self.backend.wait_for_change(job_id, phase, seconds)
            return
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0 and not disconnected():
            self.backend.wait_for_change(job_id, phase, min(remaining, WAIT_SLICE_SECONDS))
            current = self.backend.get(job_id)
            if current is None or current.phase is not phase:
                return

    # --- results -------------------------------------------------------------------------

    def results_of(self, record: JobRecord) -> list[ResultFile]:
        """Every result of a job: known once its outputs are uploaded (manifest written).

        A record that holds only the first of many (``result_count``) has them all read
        from the manifest.
        """
        return self.results.every(record)

    def results_preview(self, record: JobRecord) -> tuple[list[ResultFile], int]:
        """The job object's first results and how many in all, from the record when it can."""
        return self.results.preview(record)

    def list_results(self, job_id: str, caller: Caller) -> list[ResultFile]:
        """The result files of a job the caller may see."""
        return self.results_of(self.get_job(job_id, caller))

    def results_page(
        self, job_id: str, caller: Caller, start: int, count: int
    ) -> tuple[list[ResultFile], int]:
        """``count`` results of a visible job from position ``start``, and how many in all."""
        return self.results.page(self.get_job(job_id, caller), start, count)

    def find_result(self, result_id: str, caller: Caller) -> ResultFile:
        """The result a result ID names, if it is one of a visible job's results."""
        decoded = decode_result_id(result_id)
        note_request(job_id=decoded.job_id)
        try:
            record = self.get_job(decoded.job_id, caller)
        except JobNotFoundError:
            raise ResultNotFoundError(f"No result with ID {result_id[:100]!r}") from None
        result = self.results.by_key(record, decoded.key)
        if result is None:
            raise ResultNotFoundError(f"No result with ID {result_id[:100]!r}")
        return result

    def find_result_by_index(self, job_id: str, index: int, caller: Caller) -> ResultFile:
        """The n-th result (from 0) of a visible job."""
        result = self.results.by_index(self.get_job(job_id, caller), index)
        if result is None:
            raise ResultNotFoundError(f"Job {job_id} has no result number {index}")
        return result

    def open_result(self, result: ResultFile, start: int, end: int | None) -> ObjectStream:
        """Stream bytes ``start..end`` of a result found by ``find_result``."""
        stream = self.store.open(result.key, start, end)
        if stream is None:
            raise ResultNotFoundError("The result file is no longer in the object store")
        return stream

    def close(self) -> None:
        """Release the backend and the events' thread."""
        self.events.close()
        self.backend.close()


def _as_record(record: JobRecord) -> JobRecord:
    return record


def _now() -> datetime:
    return datetime.now(UTC)


def _destroyed(record: JobRecord, now: datetime) -> bool:
    """True once the job's destruction time has come: it is gone for every request."""
    return record.destruction is not None and record.destruction <= now
