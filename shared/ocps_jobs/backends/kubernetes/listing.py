"""The Kubernetes backend's lists: live Jobs from the watched copies, then the history.

A mixin of ``KubernetesBackend``: the attributes and methods declared first are the
backend's own.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ...config import Settings
from ...conventions import ANNOTATIONS, LABEL_OWNER
from ...errors import JobNotFoundError
from ...models import FINAL_PHASES, JobRecord, Phase, ResultFile, utcnow
from ...objectstore.history import place_of
from .archive import Archive, needs_manifest
from .client import KubernetesApi
from .metadata import owner_label
from .record import creation_time_of, record_from_view
from .status import JobStatus, job_status, start_timed_out
from .tables import Packed
from .views import JobView, PodView, unpack, unpack_list
from .watch import MANAGED_SELECTOR, WatchCache

__all__ = ["JobAndPods", "JobListing", "PodsByJob"]

log = logging.getLogger(__name__)

# A list asked for during the watches' first listing waits this long for it.
FIRST_SYNC_WAIT_SECONDS = 60.0

JobAndPods = tuple[dict[str, Any], list[dict[str, Any]]]
PodsByJob = dict[str, list[dict[str, Any]]]


def _place(record: JobRecord) -> tuple[datetime, str]:
    """Where a record stands in a list: by creation time, then job id."""
    return record.creation_time, record.job_id


class _Source:
    """The live Jobs, and the Pods of each job id: the watched copies, or the API's JSON."""

    def __init__(
        self, jobs: list[Packed] | list[dict[str, Any]], pods: dict[str, Packed] | PodsByJob
    ) -> None:
        self.jobs: list[Any] = jobs
        self._pods: dict[str, Any] = pods

    def job(self, item: Packed | dict[str, Any]) -> dict[str, Any]:
        """One of ``jobs`` as JSON (a new copy of a watched one)."""
        return item if isinstance(item, dict) else unpack(item)

    def pods(self, job_id: str) -> list[PodView]:
        """The Pods of ``job_id`` (new copies of watched ones)."""
        pods = self._pods.get(job_id)
        if pods is None:
            return []
        return [PodView(pod) for pod in (pods if isinstance(pods, list) else unpack_list(pods))]


@dataclass(frozen=True, slots=True)
class _Entry:
    """A listed Job: where it stands, where its JSON is, and what was decided of it."""

    creation_time: datetime
    job_id: str
    index: int  # in ``_Source.jobs``
    status: JobStatus
    results: list[ResultFile] | None

    @property
    def place(self) -> tuple[datetime, str]:
        return self.creation_time, self.job_id


class JobListing:
    """Listing, archive upkeep of listed Jobs, the start timeout, and the history merge."""

    settings: Settings
    kube: KubernetesApi
    archive: Archive
    _lock: threading.Lock
    _pool: ThreadPoolExecutor
    _giving_up: set[str]
    _archived_versions: dict[str, str | None]

    def _informed(self) -> WatchCache:
        raise NotImplementedError

    def _pods(self, selector: str) -> PodsByJob:
        raise NotImplementedError

    def _patch(self, job_id: str, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def _job_and_pods(self, job_id: str) -> JobAndPods | None:
        raise NotImplementedError

    def list_records(
        self, owner: str | None = None, phases: Collection[Phase] | None = None
    ) -> Iterator[JobRecord]:
        """The live Jobs' records (of ``owner``; in ``phases``), from the watched copies.

        Each record is built as it is asked for: a consumer that keeps none of them holds
        one at a time.
        """
        source, entries, _ = self._live_listing(owner, phases)
        return self._records(source, entries, owner)

    def _live_listing(
        self, owner: str | None, phases: Collection[Phase] | None
    ) -> tuple[_Source, list[_Entry], set[str]]:
        """The live Jobs' source, entries of those (of ``owner``) in ``phases``, all their ids.

        The ids are of every live Job of ``owner``, in ``phases`` or not. From the watched
        copies (waiting for their first listing); else from the API. Each Job's phase is
        decided from its views, one Job at a time, and only what places it is kept:
        ``_records`` reads the wanted ones again to build their records.
        """
        source = self._live_source(owner)
        entries: list[_Entry] = []
        live_ids: set[str] = set()
        need_manifest: list[tuple[int, JobView, str]] = []
        label = None if owner is None else owner_label(owner)
        for index, item in enumerate(source.jobs):
            view = JobView(source.job(item))
            if label is not None and view.owner_label != label:
                continue
            job_id = view.job_id or ""
            live_ids.add(job_id)
            if needs_manifest(view.raw):
                need_manifest.append((index, view, job_id))
            else:
                self._decide(source, entries, index, view, job_id, None, phases)
        ids = [job_id for _, _, job_id in need_manifest]
        for (index, view, job_id), results in zip(
            need_manifest, self._pool.map(self.archive.results, ids), strict=True
        ):
            self._decide(source, entries, index, view, job_id, results, phases)
        if owner is None:
            # Only Jobs that still exist need their kept version remembered: the TTL removes
            # the others without a delete through this backend.
            for gone in self._archived_versions.keys() - live_ids:
                self._archived_versions.pop(gone, None)
        return source, entries, live_ids

    def _decide(
        self,
        source: _Source,
        entries: list[_Entry],
        index: int,
        view: JobView,
        job_id: str,
        results: list[ResultFile] | None,
        phases: Collection[Phase] | None,
    ) -> None:
        """Decide one Job's phase: an entry when wanted, archive upkeep when needed."""
        pods = source.pods(job_id)
        try:
            status = job_status(view, pods, manifest_exists=results is not None)
            wanted = phases is None or status.phase in phases
            if self._upkeep_needed(view, status, results):
                self._upkeep(view, record_from_view(view, pods, status, results))
            if wanted:
                entries.append(_Entry(creation_time_of(view), job_id, index, status, results))
        except (KeyError, ValueError) as error:
            log.error("skipping Job %s with unreadable metadata: %s", job_id, error)

    def _records(
        self, source: _Source, entries: list[_Entry], owner: str | None
    ) -> Iterator[JobRecord]:
        """The records of ``entries``, in their order, each built when asked for."""
        for entry in entries:
            view = JobView(source.job(source.jobs[entry.index]))
            try:
                record = record_from_view(
                    view, source.pods(entry.job_id), entry.status, entry.results
                )
            except (KeyError, ValueError) as error:
                log.error("skipping Job %s with unreadable metadata: %s", entry.job_id, error)
                continue
            if owner is None or record.owner == owner:
                yield record

    def _upkeep_needed(self, view: JobView, status: JobStatus, results: list[Any] | None) -> bool:
        """Whether a listed Job needs its archive kept (once a version) or its start ended."""
        job_id = view.job_id or ""
        if status.phase in FINAL_PHASES:
            kept = self._archived_versions.get(job_id, "")
            return results is not None and kept != view.resource_version
        return (
            status.phase is Phase.QUEUED
            and job_id not in self._giving_up
            and start_timed_out(view, utcnow(), self.settings.start_timeout_seconds)
        )

    def _upkeep(self, view: JobView, record: JobRecord) -> None:
        """Keep a finished Job's archive (it stays listed), or end a job that cannot start.

        Both in the background: a later list shows the outcome.
        """
        if record.phase in FINAL_PHASES:
            self._archived_versions[record.job_id] = view.resource_version
            self._pool.submit(self._keep_archived, record)
        elif record.job_id not in self._giving_up:
            self._giving_up.add(record.job_id)
            self._pool.submit(self._give_up, record)

    def _live_source(self, owner: str | None) -> _Source:
        """Every live Job (of ``owner``) and the Pods of each job id, read one at a time."""
        watched = self._informed()
        snapshot = watched.snapshot()
        if snapshot is None and watched.wait_first_sync(FIRST_SYNC_WAIT_SECONDS):
            snapshot = watched.snapshot()  # one listing of every Job, not two at once
        if snapshot is None:
            selector = MANAGED_SELECTOR
            if owner is not None:
                selector += f",{LABEL_OWNER}={owner_label(owner)}"
            jobs = self.kube.list("jobs", selector)
            return _Source(jobs, self._pods(selector) if jobs else {})
        return _Source(*snapshot)

    def _start_overdue(self, job: dict[str, Any], record: JobRecord) -> bool:
        """A queued job whose pods have not started within the start timeout."""
        timeout = self.settings.start_timeout_seconds
        return record.phase is Phase.QUEUED and start_timed_out(JobView(job), utcnow(), timeout)

    def _give_up(self, record: JobRecord) -> JobRecord:
        """End a job that cannot start: ``error`` with its waiting reason, its pods stopped.

        Suspending the Job makes Kubernetes delete its pods (as an abort does); the record
        is archived at once, since no uploader ever ran.
        """
        timeout = self.settings.start_timeout_seconds
        reason = record.waiting_reason or "no pod of the job started"
        message = f"The job could not start within {timeout} s: {reason}"
        now = utcnow()
        try:
            self._patch(
                record.job_id,
                {
                    "metadata": {
                        "annotations": {
                            ANNOTATIONS.START_TIMED_OUT: now.isoformat(),
                            ANNOTATIONS.START_FAILURE: message,
                        }
                    },
                    "spec": {"suspend": True},
                },
            )
        except JobNotFoundError:
            return record
        finally:
            self._giving_up.discard(record.job_id)
        log.warning("job %s did not start within %d s: %s", record.job_id, timeout, reason)
        ended = record.model_copy(
            update={
                "phase": Phase.ERROR,
                "end_time": now,
                "error_message": message,
                "waiting_reason": "",
            }
        )
        self.archive.keep_current(ended, write_missing=True)
        return ended

    def _keep_archived(self, record: JobRecord) -> None:
        try:
            self.archive.keep_current(record)
        except Exception:  # a background pass: logged, retried by a later list or read
            log.exception("archive upkeep of job %s failed", record.job_id)

    def iter_newest(
        self,
        owner: str | None,
        after: str = "",
        page_size: int = 100,
        phases: Collection[Phase] | None = None,
    ) -> Iterator[JobRecord]:
        """Every kept job newest first, after the sort key ``after``: live Jobs and history.

        The live Jobs come from the watched copies; the jobs whose Job Kubernetes removed
        from the store's history index, one listing page at a time, their archived records
        read in parallel. Ordered as ``objectstore.history.sort_key`` orders them.
        """
        source, entries, live_ids = self._live_listing(owner, phases)
        if after:
            before = place_of(after)
            entries = [entry for entry in entries if entry.place < before]
        entries.sort(key=lambda entry: entry.place, reverse=True)
        live = self._records(source, entries, owner)
        archived = self._archived_newest(owner, after, page_size, live_ids)
        yield from heapq.merge(live, archived, key=_place, reverse=True)

    def _archived_newest(
        self, owner: str | None, after: str, page_size: int, live_ids: set[str]
    ) -> Iterator[JobRecord]:
        entries = self.archive.history.newest(owner, after, page_size)
        while True:
            page = [entry for _, entry in zip(range(page_size), entries, strict=False)]
            if not page:
                return
            wanted = [entry.job_id for entry in page if entry.job_id not in live_ids]
            for record in self._pool.map(self.archive.listed, wanted):
                if record is not None and (owner is None or record.owner == owner):
                    yield record

    def expired_history(self, now: datetime) -> list[str]:
        """Ids of archived jobs whose destruction time has come (their Job may be gone).

        An entry left by a job already removed is dropped instead.
        """
        due = []
        for job_id, key in self.archive.history.expired(now):
            if self.archive.archived(job_id) is None and self._job_and_pods(job_id) is None:
                self.archive.history.drop(key)
            else:
                due.append(job_id)
        return due
