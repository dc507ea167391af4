"""The Kubernetes backend: the only module that calls the Kubernetes API."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from ..config import Settings
from ..conventions import (
    ANNOTATIONS,
    CONTAINER_JOB,
    LABEL_JOB_ID,
    LABEL_MANAGED_BY,
    LABEL_OWNER,
    MANAGED_BY,
    archive_key,
    job_name,
    job_prefix,
    manifest_key,
)
from ..errors import (
    BackendUnavailableError,
    InvalidRequestError,
    JobNotFoundError,
    PayloadTooLargeError,
    PhaseConflictError,
)
from ..jobspec import build_job, owner_label
from ..models import (
    FINAL_PHASES,
    EnvironmentVariable,
    JobParameters,
    JobRecord,
    Phase,
    ResultFile,
    utcnow,
)
from ..objectstore import ObjectStore
from ..phase import job_status, parse_time
from .base import JobUpdate, Unset

__all__ = ["KubernetesBackend", "record_from_job"]

log = logging.getLogger(__name__)

T = TypeVar("T")

PAGE_SIZE = 500
REQUEST_TIMEOUT = (5, 30)
MANIFEST_RECHECK_SECONDS = 1.0
_MISSING_TTL_SECONDS = 5.0


class _Missing(Exception):
    """The API answered 404."""


def _api_client(settings: Settings) -> k8s.ApiClient:
    if settings.kubeconfig is not None:
        configured: k8s.ApiClient = k8s_config.new_client_from_config(
            config_file=str(settings.kubeconfig)
        )
        return configured
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    return k8s.ApiClient()


def record_from_job(
    job: dict[str, Any], pods: list[dict[str, Any]], results: list[ResultFile] | None
) -> JobRecord:
    """A job record from the Job's API JSON, its pods and (once uploaded) its results."""
    metadata = job["metadata"]
    annotations = metadata.get("annotations") or {}
    spec = job.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    main: dict[str, Any] = next((c for c in containers if c.get("name") == CONTAINER_JOB), {})
    status = job_status(job, pods, manifest_exists=results is not None)
    destruction = annotations.get(ANNOTATIONS.DESTRUCTION)
    return JobRecord(
        job_id=metadata["labels"][LABEL_JOB_ID],
        run_id=annotations.get(ANNOTATIONS.RUN_ID, ""),
        owner=annotations.get(ANNOTATIONS.OWNER, ""),
        phase=status.phase,
        creation_time=parse_time(annotations.get(ANNOTATIONS.CREATION_TIME))
        or parse_time(metadata.get("creationTimestamp"))
        or utcnow(),
        start_time=status.start_time,
        end_time=status.end_time,
        execution_duration=spec.get("activeDeadlineSeconds"),
        destruction=parse_time(destruction) if destruction else None,
        parameters=JobParameters.model_validate_json(annotations[ANNOTATIONS.PARAMETERS]),
        environment=[
            EnvironmentVariable(name=item["name"], value=item.get("value") or "")
            for item in main.get("env") or []
        ],
        error_message=status.error_message,
        results=results if status.phase in FINAL_PHASES else None,
    )


class KubernetesBackend:
    """Jobs as ``batch/v1`` Jobs with metadata in annotations; outputs via the sidecar."""

    def __init__(
        self, settings: Settings, store: ObjectStore, api_client: k8s.ApiClient | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.namespace = settings.namespace
        self.api = api_client or _api_client(settings)
        self.batch = k8s.BatchV1Api(self.api)
        self.core = k8s.CoreV1Api(self.api)
        self._manifests: dict[str, list[ResultFile]] = {}
        self._missing: dict[str, float] = {}
        self._cache_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ocps-manifest")

    # --- API access ------------------------------------------------------------------------

    def _call(self, action: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as error:
            if error.status == 404:
                raise _Missing from None
            if error.status == 413:
                raise PayloadTooLargeError("Kubernetes refused the Job as too large") from None
            if error.status in (400, 422):
                reason = _api_message(error)
                raise InvalidRequestError(f"Kubernetes refused the job: {reason}") from None
            log.warning("Kubernetes %s failed: %s %s", action, error.status, error.reason)
            raise BackendUnavailableError(
                f"Kubernetes unavailable ({action}: {error.status} {error.reason})"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            log.warning("Kubernetes %s failed: %s", action, error)
            raise BackendUnavailableError(f"Kubernetes unavailable ({action})") from None

    def _raw(self, action: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call without deserializing into client models: plain JSON is much faster."""
        response = self._call(action, function, *args, _preload_content=False, **kwargs)
        return json.loads(response.data)

    def _read_job(self, job_id: str) -> dict[str, Any] | None:
        try:
            job: dict[str, Any] = self._raw(
                "read job", self.batch.read_namespaced_job, job_name(job_id), self.namespace
            )
        except _Missing:
            return None
        return job

    def _list(self, action: str, function: Callable[..., Any], selector: str) -> list[Any]:
        items: list[Any] = []
        token = None
        while True:
            page = self._raw(
                action,
                function,
                self.namespace,
                label_selector=selector,
                limit=PAGE_SIZE,
                _continue=token,
            )
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def _pods(self, selector: str) -> dict[str, list[dict[str, Any]]]:
        by_job: dict[str, list[dict[str, Any]]] = {}
        for pod in self._list("list pods", self.core.list_namespaced_pod, selector):
            job_id = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB_ID)
            if job_id:
                by_job.setdefault(job_id, []).append(pod)
        return by_job

    # --- manifests (results) ------------------------------------------------------------------

    def _results(self, job_id: str) -> list[ResultFile] | None:
        """The job's uploaded results, once its manifest exists (cached: it never changes)."""
        with self._cache_lock:
            if job_id in self._manifests:
                return self._manifests[job_id]
            if time.monotonic() - self._missing.get(job_id, -1e9) < _MISSING_TTL_SECONDS:
                return None
        data = self.store.get_bytes(manifest_key(job_id))
        if data is None:
            with self._cache_lock:
                self._missing[job_id] = time.monotonic()
            return None
        try:
            results = [
                ResultFile(key=item["key"], size=item["size"], content_type=item["contentType"])
                for item in json.loads(data)["files"]
            ]
        except (ValueError, KeyError, TypeError):
            log.error("unreadable manifest of job %s", job_id)
            return None
        with self._cache_lock:
            self._manifests[job_id] = results
            self._missing.pop(job_id, None)
        return results

    def _needs_manifest(self, job: dict[str, Any]) -> bool:
        conditions = (job.get("status") or {}).get("conditions") or []
        annotations = (job.get("metadata") or {}).get("annotations") or {}
        return bool(annotations.get(ANNOTATIONS.ABORT_REQUESTED)) or any(
            c.get("status") == "True"
            and c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet")
            for c in conditions
        )

    def _archived(self, job_id: str) -> JobRecord | None:
        data = self.store.get_bytes(archive_key(job_id))
        if data is None:
            return None
        try:
            record = JobRecord.model_validate_json(data)
        except ValueError:
            log.error("unreadable archived record of job %s", job_id)
            return None
        if record.results is None:
            record.results = self._results(job_id) or []
        return record

    # --- the backend interface ---------------------------------------------------------------

    def create(self, record: JobRecord, *, start: bool) -> JobRecord:
        """Create the Job (suspended while PENDING)."""
        job = build_job(record, self.settings, suspend=not start)
        self._call("create job", self.batch.create_namespaced_job, self.namespace, job)
        record.phase = Phase.QUEUED if start else Phase.PENDING
        return record

    def get(self, job_id: str) -> JobRecord | None:
        """From the Job and its pods; from the archived record once Kubernetes removed it."""
        job = self._read_job(job_id)
        if job is None:
            return self._archived(job_id)
        pods = self._pods(f"{LABEL_JOB_ID}={job_id}").get(job_id, [])
        results = self._results(job_id) if self._needs_manifest(job) else None
        return record_from_job(job, pods, results)

    def list_records(self, owner: str | None = None) -> list[JobRecord]:
        """One paginated list of Jobs and one of Pods: no per-job API calls."""
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        if owner is not None:
            selector += f",{LABEL_OWNER}={owner_label(owner)}"
        jobs = self._list("list jobs", self.batch.list_namespaced_job, selector)
        pods = self._pods(selector) if jobs else {}
        finished = [job for job in jobs if self._needs_manifest(job)]
        ids = [job["metadata"]["labels"][LABEL_JOB_ID] for job in finished]
        manifests = dict(zip(ids, self._pool.map(self._results, ids), strict=True))
        records = []
        for job in jobs:
            job_id = job["metadata"]["labels"][LABEL_JOB_ID]
            try:
                records.append(record_from_job(job, pods.get(job_id, []), manifests.get(job_id)))
            except (KeyError, ValueError) as error:
                log.error("skipping Job %s with unreadable metadata: %s", job_id, error)
        if owner is not None:
            records = [record for record in records if record.owner == owner]
        return records

    def _patch(self, job_id: str, body: dict[str, Any]) -> None:
        try:
            self._call(
                "patch job", self.batch.patch_namespaced_job, job_name(job_id), self.namespace, body
            )
        except _Missing:
            raise JobNotFoundError(f"No job {job_id}") from None

    def _require(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise JobNotFoundError(f"No job {job_id}")
        return record

    def start(self, job_id: str) -> JobRecord:
        """Unsuspend a PENDING Job."""
        record = self._require(job_id)
        if record.phase is Phase.PENDING:
            self._patch(job_id, {"spec": {"suspend": False}})
            record.phase = Phase.QUEUED
        elif record.phase not in (Phase.QUEUED, Phase.EXECUTING):
            raise PhaseConflictError(f"Job {job_id} is {record.phase.value}; it cannot run")
        return record

    def abort(self, job_id: str, reason: str = "") -> JobRecord:
        """Record the abort and suspend the Job.

        Kubernetes then stops its pods, the uploader makes its final pass on SIGTERM, and
        the results are kept.
        """
        record = self._require(job_id)
        if record.phase in FINAL_PHASES:
            raise PhaseConflictError(f"Job {job_id} is {record.phase.value}; it cannot abort")
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
        with contextlib.suppress(_Missing):
            self._call(
                "delete job",
                self.batch.delete_namespaced_job,
                job_name(job_id),
                self.namespace,
                propagation_policy="Background",
            )
        self.store.delete_prefix(job_prefix(job_id))
        with self._cache_lock:
            self._manifests.pop(job_id, None)

    def update(self, job_id: str, update: JobUpdate) -> JobRecord:
        """Execution duration → ``activeDeadlineSeconds``; destruction → annotation."""
        record = self._require(job_id)
        body: dict[str, Any] = {"metadata": {"annotations": {}}, "spec": {}}
        if not isinstance(update.execution_duration, Unset):
            if record.phase not in (Phase.PENDING, Phase.QUEUED, Phase.HELD):
                raise PhaseConflictError(
                    f"Job {job_id} is {record.phase.value}; its execution duration is fixed"
                )
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
        """Watch the Job until its phase differs; a completed Job waits for its manifest."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            record = self.get(job_id)
            if record is None or record.phase != phase:
                return
            job = self._read_job(job_id)
            if job is not None and self._needs_manifest(job):
                time.sleep(min(MANIFEST_RECHECK_SECONDS, remaining))
                continue
            watcher = k8s_watch.Watch()
            try:
                for _event in watcher.stream(
                    self.batch.list_namespaced_job,
                    self.namespace,
                    field_selector=f"metadata.name={job_name(job_id)}",
                    timeout_seconds=max(1, int(min(remaining, 30))),
                    _request_timeout=(5, min(remaining, 30) + 5),
                ):
                    break
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
                log.warning("watch of job %s failed: %s", job_id, error)
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            finally:
                watcher.stop()

    def close(self) -> None:
        """Release the connection pool."""
        self._pool.shutdown(wait=False)
        self.api.close()


def _api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message", error.reason))[:500]
    except ValueError:
        return str(error.reason)
