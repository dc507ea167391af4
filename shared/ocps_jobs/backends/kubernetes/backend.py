"""The Kubernetes backend's use cases, over the API wrapper, the watch cache and the archive."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client as k8s

from ...config import Settings
from ...conventions import ANNOTATIONS, LABEL_JOB_ID, job_name, job_prefix
from ...errors import BackendUnavailableError, JobNotFoundError
from ...memory import limit_malloc_arenas
from ...models import FINAL_PHASES, JobRecord, Phase, utcnow
from ...objectstore import ObjectStore
from ..base import JobUpdate, Unset
from ..logs import LogLine
from .archive import Archive, needs_manifest
from .client import KubernetesApi, Missing
from .credentials import new_api_client
from .listing import JobAndPods, JobListing, PodsByJob
from .logs import PodLogs, newest_pod_per_replica
from .record import record_from_job
from .spec import build_environment, build_job, job_json
from .status import ran_to_completion
from .views import JobView, PodView
from .watch import WatchCache

__all__ = ["KubernetesBackend"]

log = logging.getLogger(__name__)

MANIFEST_RECHECK_SECONDS = 1.0


class KubernetesBackend(JobListing):
    """Jobs as ``batch/v1`` Jobs with metadata in annotations; outputs via the sidecar."""

    per_replica_logs = True  # each replica is a pod with a log of its own

    def __init__(
        self, settings: Settings, store: ObjectStore, api_client: k8s.ApiClient | None = None
    ) -> None:
        limit_malloc_arenas()  # before the server's threads and the watches allocate
        self.settings = settings
        self.store = store
        self.namespace = settings.namespace
        self.kube = KubernetesApi(api_client or new_api_client(settings), settings.namespace)
        self.archive = Archive(store)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ocps-manifest")
        self._watched: WatchCache | None = None
        self._closed = False
        self._giving_up: set[str] = set()
        self._archived_versions: dict[str, str | None] = {}  # job id -> Job version kept

    def _informed(self) -> WatchCache:
        """The process's watches of Jobs and Pods, started on first use."""
        with self._lock:
            if self._watched is None:
                self._watched = WatchCache(self.kube.list_pages, self.kube.watch)
            return self._watched

    def _pods(self, selector: str) -> PodsByJob:
        by_job: PodsByJob = {}
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
        self.store.delete_prefix(job_prefix(job_id))
        for known in {id(r): r for r in (record, archived) if r is not None}.values():
            self.archive.history.remove(job_id, known.owner, known.creation_time, known.destruction)
        self.archive.forget(job_id)
        self._archived_versions.pop(job_id, None)

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
