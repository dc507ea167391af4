"""The Kubernetes backend's use cases, over the API wrapper, the watch cache and the archive."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client as k8s

from ...config import Settings
from ...conventions import ANNOTATIONS, LABEL_JOB_ID, LABEL_OWNER, job_name, job_prefix
from ...errors import JobNotFoundError
from ...models import FINAL_PHASES, JobRecord, Phase, utcnow
from ...objectstore import ObjectStore
from ..base import JobUpdate, Unset
from .archive import Archive, needs_manifest
from .client import KubernetesApi, Missing
from .credentials import new_api_client
from .memory import limit_malloc_arenas, release_free_memory
from .metadata import owner_label
from .record import record_from_job, record_from_view
from .spec import build_environment, build_job, job_json
from .status import job_status, ran_to_completion
from .views import JobView, PodView, unpack
from .watch import MANAGED_SELECTOR, WatchCache

__all__ = ["KubernetesBackend"]

log = logging.getLogger(__name__)

MANIFEST_RECHECK_SECONDS = 1.0
# A list asked for during the watches' first listing waits this long for it.
FIRST_SYNC_WAIT_SECONDS = 60.0
# A list of this many live Jobs gives the memory it freed back to the system, this long
# after it started (its response rendered and sent by then).
RELEASE_AFTER_JOBS = 1000
RELEASE_DELAY_SECONDS = 1.0

JobAndPods = tuple[dict[str, Any], list[dict[str, Any]]]
PodsByJob = dict[str, list[dict[str, Any]]]


class KubernetesBackend:
    """Jobs as ``batch/v1`` Jobs with metadata in annotations; outputs via the sidecar."""

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
        self._release: threading.Timer | None = None

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

    def list_records(
        self, owner: str | None = None, phases: Collection[Phase] | None = None
    ) -> list[JobRecord]:
        """The live Jobs' records (of ``owner``; in ``phases``), from the watched copies."""
        return self._live_records(owner, phases)

    def _live_records(self, owner: str | None, phases: Collection[Phase] | None) -> list[JobRecord]:
        """From the watched copies (waiting for their first listing); else from the API.

        Each Job's phase is decided from its views first: a record is built only for the
        Jobs in ``phases``, and nothing of it is kept once listed.
        """
        jobs, pods = self._live_jobs(owner)
        if len(jobs) >= RELEASE_AFTER_JOBS:
            self._release_soon()
        ids = [JobView(job).job_id or "" for job in jobs if needs_manifest(job)]
        manifests = dict(zip(ids, self._pool.map(self.archive.results, ids), strict=True))
        records = []
        for job in jobs:
            view = JobView(job)
            job_id = view.job_id or ""
            results = manifests.get(job_id)
            job_pods = [PodView(pod) for pod in pods.get(job_id, [])]
            try:
                status = job_status(view, job_pods, manifest_exists=results is not None)
                if phases is not None and status.phase not in phases:
                    continue
                record = record_from_view(view, status, results)
            except (KeyError, ValueError) as error:
                log.error("skipping Job %s with unreadable metadata: %s", job_id, error)
                continue
            if owner is None or record.owner == owner:
                records.append(record)
        return records

    def _live_jobs(self, owner: str | None) -> tuple[list[dict[str, Any]], PodsByJob]:
        """Every live Job (of ``owner``) and the Pods of each job id."""
        watched = self._informed()
        snapshot = watched.snapshot()
        if snapshot is None and watched.wait_first_sync(FIRST_SYNC_WAIT_SECONDS):
            snapshot = watched.snapshot()  # one listing of every Job, not two at once
        if snapshot is None:
            selector = MANAGED_SELECTOR
            if owner is not None:
                selector += f",{LABEL_OWNER}={owner_label(owner)}"
            jobs = self.kube.list("jobs", selector)
            return jobs, self._pods(selector) if jobs else {}
        packed_jobs, packed_pods = snapshot
        jobs = [unpack(job) for job in packed_jobs]
        if owner is not None:
            wanted = owner_label(owner)
            jobs = [job for job in jobs if JobView(job).labels.get(LABEL_OWNER) == wanted]
        return jobs, {job_id: list(unpack(pods).values()) for job_id, pods in packed_pods.items()}

    def _release_soon(self) -> None:
        """Release the freed memory of a long list once it has been answered (one at a time)."""
        with self._lock:
            if self._release is not None and self._release.is_alive():
                return
            self._release = threading.Timer(RELEASE_DELAY_SECONDS, release_free_memory)
            self._release.daemon = True
            self._release.start()

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
        """Delete the Job with its pods, and the job's objects."""
        with contextlib.suppress(Missing):
            self.kube.delete_job(job_name(job_id))
        if self._watched is not None:
            self._watched.forget(job_id)
        self.store.delete_prefix(job_prefix(job_id))
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

    def close(self) -> None:
        """Stop the watches and release the connection pool."""
        self._closed = True
        if self._release is not None:
            self._release.cancel()
        if self._watched is not None:
            self._watched.stop()
        self._pool.shutdown(wait=False)
        self.kube.close()
