"""The Kubernetes backend's use cases, over the API wrapper, the watch cache and the archive."""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from kubernetes import client as k8s

from ...config import Settings
from ...conventions import ANNOTATIONS, LABEL_JOB_ID, LABEL_OWNER, job_name, job_prefix
from ...errors import BackendUnavailableError, JobNotFoundError
from ...models import FINAL_PHASES, JobRecord, Phase, utcnow
from ...objectstore import ObjectStore
from ...objectstore.history import place_of
from ..base import JobUpdate, Unset
from ..logs import LogLine
from .archive import Archive, needs_manifest
from .client import KubernetesApi, Missing
from .credentials import new_api_client
from .logs import PodLogs, newest_pod_per_replica
from .metadata import owner_label
from .record import record_from_job
from .spec import build_environment, build_job, job_json
from .status import ran_to_completion, start_timed_out
from .views import JobView, PodView
from .watch import MANAGED_SELECTOR, WatchCache, freeze_long_lived

__all__ = ["KubernetesBackend"]

log = logging.getLogger(__name__)

MANIFEST_RECHECK_SECONDS = 1.0
# A list asked for during the watches' first listing waits this long for it.
FIRST_SYNC_WAIT_SECONDS = 60.0
# Building this many new records in one list moves them out of full garbage collections.
FREEZE_AFTER_RECORDS = 1000

JobAndPods = tuple[dict[str, Any], list[dict[str, Any]]]


def _place(record: JobRecord) -> tuple[datetime, str]:
    """Where a record stands in a list: by creation time, then job id."""
    return record.creation_time, record.job_id


class KubernetesBackend:
    """Jobs as ``batch/v1`` Jobs with metadata in annotations; outputs via the sidecar."""

    per_replica_logs = True  # each replica is a pod with a log of its own

    def __init__(
        self, settings: Settings, store: ObjectStore, api_client: k8s.ApiClient | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.namespace = settings.namespace
        self.kube = KubernetesApi(api_client or new_api_client(settings), settings.namespace)
        self.archive = Archive(store)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ocps-manifest")
        self._watched: WatchCache | None = None
        self._closed = False
        self._records: dict[str, tuple[tuple[Any, ...], JobRecord]] = {}
        self._giving_up: set[str] = set()

    def _informed(self) -> WatchCache:
        """The process's watches of Jobs and Pods, started on first use."""
        with self._lock:
            if self._watched is None:
                self._watched = WatchCache(self.kube.list_pages, self.kube.watch)
            return self._watched

    def _pods(self, selector: str) -> dict[str, list[dict[str, Any]]]:
        by_job: dict[str, list[dict[str, Any]]] = {}
        for pod in self.kube.list("pods", selector):
            if job_id := PodView(pod).job_id:
                by_job.setdefault(job_id, []).append(pod)
        return by_job

    # --- the backend interface ---------------------------------------------------------------

    def create(self, record: JobRecord, *, start: bool) -> JobRecord:
        """Create the Job (suspended while PENDING)."""
        job = build_job(record, self.settings, suspend=not start)
        # Serialized by pydantic, sent and read back raw: no client-model machinery.
        created = self.kube.create_job(job_json(job))
        if self._watched is not None:
            self._watched.store(created)
        record.environment = build_environment(record, self.settings)
        record.phase = Phase.QUEUED if start else Phase.PENDING
        return record

    def get(self, job_id: str) -> JobRecord | None:
        """From the Job and its pods; from the archived record once Kubernetes removed it.

        The watched copy answers when it has the Job; the API otherwise (not yet synced,
        or a Job another process created an instant ago).
        """
        view = self._job_and_pods(job_id)
        if view is None:
            return self.archive.archived(job_id)
        job, pods = view
        results = self.archive.results(job_id) if needs_manifest(job) else None
        record = record_from_job(job, pods, results)
        if self._start_overdue(job, record):
            return self._give_up(record)
        merged = False
        if record.phase in FINAL_PHASES and results is None:
            results = self.archive.merge_what_replicas_left(record, job, pods)
            if results is not None:
                record, merged = record_from_job(job, pods, results), True
        if record.phase in FINAL_PHASES and results is not None:
            self.archive.keep_current(record, write_missing=merged)
        return record

    def _job_and_pods(self, job_id: str) -> JobAndPods | None:
        """The Job and its Pods: the watched copy's, else the API's; None without a Job."""
        view = self._informed().view(job_id)
        if view is not None:
            return view
        job = self.kube.read_job(job_name(job_id))
        if job is None:
            return None
        return job, self._pods(f"{LABEL_JOB_ID}={job_id}").get(job_id, [])

    def list_records(self, owner: str | None = None) -> list[JobRecord]:
        """From the watched copies (waiting for their first listing); else from the API."""
        selector = MANAGED_SELECTOR
        if owner is not None:
            selector += f",{LABEL_OWNER}={owner_label(owner)}"
        watched = self._informed()
        snapshot = watched.snapshot()
        if snapshot is None and watched.wait_first_sync(FIRST_SYNC_WAIT_SECONDS):
            snapshot = watched.snapshot()  # one listing of every Job, not two at once
        if snapshot is not None:
            jobs, pods = snapshot
            if owner is not None:
                wanted = owner_label(owner)
                jobs = [job for job in jobs if JobView(job).labels.get(LABEL_OWNER) == wanted]
        else:
            jobs = self.kube.list("jobs", selector)
            pods = self._pods(selector) if jobs else {}
        ids = [JobView(job).job_id or "" for job in jobs if needs_manifest(job)]
        manifests = dict(zip(ids, self._pool.map(self.archive.results, ids), strict=True))
        records = []
        built: dict[str, tuple[tuple[Any, ...], JobRecord]] = {}
        new = 0
        for job in jobs:
            view = JobView(job)
            job_id = view.job_id or ""
            job_pods = pods.get(job_id, [])
            results = manifests.get(job_id)
            # A record is built once per version of its Job, Pods and manifest: a list of
            # 10,000 unchanged Jobs costs lookups, not 10,000 model validations.
            key = (
                view.resource_version,
                tuple(PodView(pod).resource_version for pod in job_pods),
                id(results) if results is not None else None,
            )
            cached = self._records.get(job_id)
            if cached is not None and cached[0] == key and key[0] is not None:
                record = cached[1]
            else:
                try:
                    record = record_from_job(job, job_pods, results)
                except (KeyError, ValueError) as error:
                    log.error("skipping Job %s with unreadable metadata: %s", job_id, error)
                    continue
                new += 1
                if record.phase in FINAL_PHASES and results is not None:
                    # Archived and indexed while the Job exists, read or not: it stays listed.
                    self._pool.submit(self._keep_archived, record)
            if self._start_overdue(job, record) and job_id not in self._giving_up:
                self._giving_up.add(job_id)
                self._pool.submit(self._give_up, record)  # ends error; a later list shows it
            built[job_id] = (key, record)
            records.append(record)  # shared with later lists: callers only read records
        if snapshot is not None:
            if owner is None:
                self._records = built  # only the Jobs that still exist stay cached
            else:
                self._records.update(built)
            if new >= FREEZE_AFTER_RECORDS:
                freeze_long_lived()
        if owner is not None:
            records = [record for record in records if record.owner == owner]
        return records

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
        self, owner: str | None, after: str = "", page_size: int = 100
    ) -> Iterator[JobRecord]:
        """Every kept job newest first, after the sort key ``after``: live Jobs and history.

        The live Jobs come from the watched copies; the jobs whose Job Kubernetes removed
        from the store's history index, one listing page at a time, their archived records
        read in parallel. Ordered as ``objectstore.history.sort_key`` orders them.
        """
        live = self.list_records(owner)
        live_ids = {record.job_id for record in live}
        if after:
            before = place_of(after)
            live = [r for r in live if (r.creation_time, r.job_id) < before]
        live.sort(key=_place, reverse=True)
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

    def _patch(self, job_id: str, body: dict[str, Any]) -> None:
        try:
            patched = self.kube.patch_job(job_name(job_id), body)
        except Missing:
            raise JobNotFoundError(f"No job {job_id}") from None
        if self._watched is not None:
            self._watched.store(patched)

    def _require(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise JobNotFoundError(f"No job {job_id}")
        return record

    def start(self, job_id: str) -> JobRecord:
        """Unsuspend a PENDING Job (the service has checked that it may start)."""
        record = self._require(job_id)
        if record.phase is Phase.PENDING:
            self._patch(job_id, {"spec": {"suspend": False}})
            record.phase = Phase.QUEUED
        return record

    def abort(self, job_id: str, reason: str = "") -> JobRecord:
        """Record the abort and suspend the Job.

        Kubernetes then stops its pods, the uploader makes its final pass on SIGTERM, and
        the results are kept. The service has checked that the job may be aborted; one that
        ended since is left as it ended.
        """
        record = self._require(job_id)
        if record.phase in FINAL_PHASES:
            return record
        view = self._job_and_pods(job_id)
        if view is not None and ran_to_completion(
            JobView(view[0]), [PodView(pod) for pod in view[1]]
        ):
            return record  # too late: the command succeeded, its results are uploading
        now = utcnow()
        self._patch(
            job_id,
            {
                "metadata": {
                    "annotations": {
                        ANNOTATIONS.ABORT_REQUESTED: now.isoformat(),
                        ANNOTATIONS.ABORT_REASON: reason or "Aborted by request.",
                    }
                },
                "spec": {"suspend": True},
            },
        )
        record.phase, record.end_time = Phase.ABORTED, now
        record.error_message = reason or "Aborted by request."
        return record

    def delete(self, job_id: str) -> None:
        """Delete the Job with its pods, the job's objects and its history entries."""
        view = self._job_and_pods(job_id)
        record = None
        with contextlib.suppress(KeyError, ValueError):
            record = record_from_job(*view, None) if view is not None else None
        archived = self.archive.archived(job_id)
        with contextlib.suppress(Missing):
            self.kube.delete_job(job_name(job_id))
        if self._watched is not None:
            self._watched.forget(job_id)
        self._records.pop(job_id, None)
        self.store.delete_prefix(job_prefix(job_id))
        for known in {id(r): r for r in (record, archived) if r is not None}.values():
            self.archive.history.remove(job_id, known.owner, known.creation_time, known.destruction)
        self.archive.forget(job_id)

    def update(self, job_id: str, update: JobUpdate) -> JobRecord:
        """Execution duration → ``activeDeadlineSeconds``; destruction → annotation."""
        record = self._require(job_id)
        body: dict[str, Any] = {"metadata": {"annotations": {}}, "spec": {}}
        if not isinstance(update.execution_duration, Unset):
            seconds = update.execution_duration or None
            body["spec"]["activeDeadlineSeconds"] = seconds
            body["metadata"]["annotations"][ANNOTATIONS.EXECUTION_DURATION] = (
                str(seconds) if seconds else None
            )
            record.execution_duration = seconds
        if not isinstance(update.destruction, Unset):
            when = update.destruction
            body["metadata"]["annotations"][ANNOTATIONS.DESTRUCTION] = (
                when.isoformat() if when else None
            )
            record.destruction = when
        self._patch(job_id, body)
        return record

    def read_log(self, record: JobRecord, until: float | None) -> Iterator[LogLine] | None:
        """The job containers' logs (``pods/log``) while the Job exists; None once it is gone.

        A retried replica's newest pod is the one read. A follow ends when the job ends
        (its pods' logs then read once more by the caller) or at ``until``.
        """
        job_id = record.job_id

        def pods() -> list[dict[str, Any]] | None:
            view = self._job_and_pods(job_id)
            return None if view is None else view[1]

        def finished() -> bool:
            current = self.get(job_id)
            return current is None or current.is_final

        current = pods()
        if current is None:
            return None
        reader = PodLogs(self.kube, pods, finished)
        if until is None or record.is_final:
            chosen = newest_pod_per_replica(current)
            return reader.snapshot(chosen) if chosen or not record.is_final else None
        return reader.follow(until)

    def wait_for_change(self, job_id: str, phase: Phase, timeout: float) -> None:
        """Sleep until the watch reports a change of the job, then look again.

        No API call and no CPU while nothing changes: the process's one watch wakes the
        waiters of exactly the job that changed. A completed Job waits for its manifest,
        which only the object store knows: that is looked up once a second.
        """
        deadline = time.monotonic() + timeout
        watched = self._informed()
        seen = watched.enter(job_id)
        try:
            while (remaining := deadline - time.monotonic()) > 0 and not self._closed:
                record = self.get(job_id)
                if record is None or record.phase != phase:
                    return
                view = watched.view(job_id)
                if view is not None and needs_manifest(view[0]):
                    remaining = min(remaining, MANIFEST_RECHECK_SECONDS)
                watched.wait(job_id, seen, remaining)
                seen = watched.changes(job_id)
        finally:
            watched.leave(job_id)

    def check_ready(self) -> dict[str, object]:
        """Readiness: one small list of Jobs answers, and the watches (if started) are synced."""
        self.kube.probe()
        watched = self._watched
        if watched is not None and not watched.synced:
            raise BackendUnavailableError("Kubernetes watch of Jobs and Pods is not synced")
        return {"reachable": True, "watch": "not started" if watched is None else "synced"}

    def close(self) -> None:
        """Stop the watches and release the connection pool."""
        self._closed = True
        if self._watched is not None:
            self._watched.stop()
        self._pool.shutdown(wait=False)
        self.kube.close()
