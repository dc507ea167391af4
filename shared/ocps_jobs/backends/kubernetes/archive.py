"""A Kubernetes job's results and archived record in the object store, and their caches."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from ...conventions import ANNOTATIONS, archive_key, job_prefix, manifest_key
from ...errors import BackendUnavailableError
from ...models import JobRecord, ResultFile
from ...objectstore import ObjectStore
from ...objectstore.history import HistoryIndex
from ...observability import metrics
from ...uploader.manifest import manifest_files, read_manifest_files, store_merged_manifest
from .views import JobView, PodView

__all__ = ["Archive", "needs_manifest"]

log = logging.getLogger(__name__)

_MISSING_TTL_SECONDS = 5.0
# Archived records kept for the history lists: a bound, so memory does not grow with history.
LISTED_CACHE_RECORDS = 2048


def needs_manifest(job: Mapping[str, Any]) -> bool:
    """Whether the job may have results by now: ended, or its abort requested."""
    view = JobView(job)
    return bool(view.annotations.get(ANNOTATIONS.ABORT_REQUESTED)) or any(
        view.condition(kind) is not None for kind in ("Complete", "Failed", "SuccessCriteriaMet")
    )


class Archive:
    """The results (manifests) and archived records of the jobs, kept current.

    A manifest never changes once written: it is cached; its absence is remembered for a
    few seconds. An archived record is rewritten whenever the live record differs, and
    indexed in the store's history so that it is listed once Kubernetes removed its Job.
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.history = HistoryIndex(store)
        self._listed: OrderedDict[str, JobRecord] = OrderedDict()
        self._manifests: dict[str, list[ResultFile]] = {}
        self._missing: dict[str, float] = {}
        self._archives_checked: dict[str, int] = {}  # job -> hash of the record job.json holds
        self._swept: set[str] = set()  # jobs whose stale partial uploads were removed
        self._lock = threading.Lock()

    def results(self, job_id: str) -> list[ResultFile] | None:
        """The job's uploaded results, once its manifest exists (cached: it never changes)."""
        with self._lock:
            if job_id in self._manifests:
                return self._manifests[job_id]
            if time.monotonic() - self._missing.get(job_id, -1e9) < _MISSING_TTL_SECONDS:
                return None
        data = self.store.get_bytes(manifest_key(job_id))
        if data is None:
            with self._lock:
                self._missing[job_id] = time.monotonic()
            return None
        try:
            results = ResultFile.listed(read_manifest_files(data))
        except (ValueError, KeyError, TypeError):
            log.error("unreadable manifest of job %s", job_id)
            return None
        with self._lock:
            self._manifests[job_id] = results
            self._missing.pop(job_id, None)
        return results

    def archived(self, job_id: str) -> JobRecord | None:
        """The record the uploader or a read archived as job.json, with its results."""
        data = self.store.get_bytes(archive_key(job_id))
        if data is None:
            return None
        try:
            record = JobRecord.model_validate_json(data)
        except ValueError:
            log.error("unreadable archived record of job %s", job_id)
            return None
        if record.results is None:
            record.results = self.results(job_id) or []
        return record

    def listed(self, job_id: str) -> JobRecord | None:
        """The archived record of a job whose Kubernetes Job is gone, for a list.

        Such a record no longer changes: the last ``LISTED_CACHE_RECORDS`` read are kept.
        """
        with self._lock:
            record = self._listed.get(job_id)
            if record is not None:
                self._listed.move_to_end(job_id)
                return record
        record = self.archived(job_id)
        if record is not None:
            with self._lock:
                self._listed[job_id] = record
                while len(self._listed) > LISTED_CACHE_RECORDS:
                    self._listed.popitem(last=False)
        return record

    def merge_what_replicas_left(
        self, record: JobRecord, job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
    ) -> list[ResultFile] | None:
        """The results of a replicated job that ended before every replica had uploaded.

        The last replica to finish merges the replicas' manifests; one that never started
        (still pending when a sibling's failure, an abort or the deadline stopped the Job)
        never does. Once no pod is left running, the manifests there are are merged, the
        missing replicas counted as stopped.
        """
        replicas = record.parameters.replicas
        view = JobView(job)
        # The Job controller has settled the Job (ended, or suspended by an abort) and counts
        # no pod still running or terminating: no uploader can write a manifest any more.
        settled = any(
            view.condition(kind) is not None for kind in ("Failed", "Complete", "Suspended")
        )
        if (
            replicas < 2
            or not settled
            or view.active
            or view.terminating
            or any(PodView(pod).phase not in ("Succeeded", "Failed") for pod in pods)
        ):
            return None
        try:
            manifest = store_merged_manifest(
                self.store, record.job_id, replicas, missing_stopped=True
            )
            if manifest is None:
                return None
        except BackendUnavailableError as error:
            log.warning("replica manifests of job %s not merged: %s", record.job_id, error)
            return None
        results = ResultFile.listed(manifest_files(manifest))
        with self._lock:
            self._manifests[record.job_id] = results
            self._missing.pop(record.job_id, None)
        return results

    def keep_current(self, record: JobRecord, *, write_missing: bool = False) -> None:
        """job.json as the live Job last showed the job, for when Kubernetes has removed it.

        The uploader archives what it knows in the pod: not the environment, the start time,
        a failed clone's message or a destruction time set later. Once it has written
        job.json, a read of the finished job puts the whole record there instead, and again
        whenever the record changes; a version is taken as archived once a read finds it.

        Once archived (the uploader has written job.json after the manifest, or the service
        merged the replicas' manifests), no uploader of the job writes any more: what a
        crashed one left unfinished (multipart uploads never completed) is removed then,
        not only when the job is deleted.
        """
        current = record.model_dump_json()
        version = hash(current)
        with self._lock:
            if self._archives_checked.get(record.job_id) == version:
                return
        key = archive_key(record.job_id)
        try:
            data = self.store.get_bytes(key)
            if data is None and not write_missing:
                return  # not yet: the uploader writes it after the manifest
            self._remove_stale_uploads(record.job_id)
            try:
                stored = JobRecord.model_validate_json(data) if data is not None else None
            except ValueError:
                stored = None
            if stored != record:
                # Checked again on the next read: an uploader's late write of its own
                # shorter record (a restarted pod, a second replica) is then replaced too.
                self.store.put_bytes(key, current.encode(), "application/json")
                metrics.ARCHIVE_WRITES.labels("ok").inc()
                log.info("job archived", extra={"job_id": record.job_id})
                with self._lock:
                    self._listed.pop(record.job_id, None)
            if stored is not None and stored.destruction != record.destruction:
                self.history.move_destruction(record.job_id, stored.destruction, None)
            self.history.add(record.job_id, record.owner, record.creation_time, record.destruction)
            if stored != record:
                return
        except BackendUnavailableError as error:
            metrics.ARCHIVE_WRITES.labels("failed").inc()
            log.warning(
                "archived record of job %s not brought up to date: %s", record.job_id, error
            )
            return
        with self._lock:
            self._archives_checked[record.job_id] = version

    def _remove_stale_uploads(self, job_id: str) -> None:
        """Abort the job's multipart uploads no uploader will complete; once per job.

        A store that cannot do it now is logged, and the next read tries again.
        """
        with self._lock:
            if job_id in self._swept:
                return
        try:
            removed = self.store.remove_partial(job_prefix(job_id))
        except BackendUnavailableError as error:
            log.warning("partial uploads of job %s not removed: %s", job_id, error)
            return
        with self._lock:
            self._swept.add(job_id)
        if removed:
            log.info(
                "removed partial uploads left by the job's uploaders",
                extra={"job_id": job_id, "uploads": removed},
            )

    def forget(self, job_id: str) -> None:
        """A deleted job: nothing of it stays cached."""
        with self._lock:
            self._swept.discard(job_id)
            self._manifests.pop(job_id, None)
            self._archives_checked.pop(job_id, None)
            self._listed.pop(job_id, None)
