"""The Kubernetes backend: the only module that calls the Kubernetes API."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
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
from ..jobspec import build_job, from_kubelet_literal, job_json, owner_label
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
from ..observability import metrics
from ..phase import job_status, parse_time, ran_to_completion
from ..sidecar import store_merged_manifest
from .base import JobUpdate, Unset

__all__ = ["KubernetesBackend", "record_from_job"]

log = logging.getLogger(__name__)

T = TypeVar("T")

PAGE_SIZE = 500
REQUEST_TIMEOUT = (5, 30)
MANIFEST_RECHECK_SECONDS = 1.0
# Each watch request ends after this long (the apiserver caps it too); it resumes at once.
WATCH_SECONDS = 300
_MISSING_TTL_SECONDS = 5.0
# A list asked for during the watches' first listing waits this long for it.
FIRST_SYNC_WAIT_SECONDS = 60.0
# Building this many new records in one list moves them out of full garbage collections.
FREEZE_AFTER_RECORDS = 1000


def _freeze_long_lived() -> None:
    """Leave the objects that exist now out of the garbage collector's full passes.

    The watched copy of the Jobs and the records built from them live as long as the
    process, and are hundreds of thousands of objects at 10,000 Jobs. A list that long
    allocates enough to start a full collection, which walked all of them each time
    (0.33 s of a 0.6 s list at 10,000 Jobs; 0.05 s once they are frozen). They are still
    freed when no longer referenced: freezing only stops the collector looking at them.
    """
    gc.freeze()


class _Missing(Exception):
    """The API answered 404."""


class _ThrottledRefresh:
    """Runs the client's credential refresh at most once per ``interval`` seconds.

    Both config loaders refresh before every request by applying their whole
    configuration again, whose ``host`` setter re-reads the proxy environment: a fifth of
    a create's CPU. The loaders still decide themselves whether a token has expired; this
    only lets them look once a second instead of on every request.
    """

    def __init__(
        self,
        configuration: Any,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hook = configuration.refresh_api_key_hook
        self.interval = interval
        self.clock = clock
        self.last = -float("inf")
        self.lock = threading.Lock()
        configuration.refresh_api_key_hook = self

    def __call__(self, configuration: Any) -> None:
        with self.lock:
            now = self.clock()
            if now - self.last < self.interval:
                return
            self.last = now
            self.hook(configuration)
            if configuration.refresh_api_key_hook is not self:  # a loader set its hook anew
                self.hook = configuration.refresh_api_key_hook
                configuration.refresh_api_key_hook = self


def _api_client(settings: Settings) -> k8s.ApiClient:
    if settings.kubeconfig is not None:
        api: k8s.ApiClient = k8s_config.new_client_from_config(config_file=str(settings.kubeconfig))
    else:
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()
        api = k8s.ApiClient()
    if api.configuration.refresh_api_key_hook is not None:
        _ThrottledRefresh(api.configuration)
    return api


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
            EnvironmentVariable(
                name=item["name"], value=from_kubelet_literal(item.get("value") or "")
            )
            for item in main.get("env") or []
            if "valueFrom" not in item  # the replica index: each pod's own, not a parameter
        ],
        error_message=status.error_message,
        results=results if status.phase in FINAL_PHASES else None,
    )


def _trim_job(job: dict[str, Any]) -> dict[str, Any]:
    """What ``record_from_job`` and the phase need of a Job (no managedFields, no scripts)."""
    metadata = job.get("metadata") or {}
    spec = job.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    return {
        "metadata": {
            key: metadata.get(key)
            for key in ("name", "labels", "annotations", "creationTimestamp", "resourceVersion")
        },
        "spec": {
            "suspend": spec.get("suspend"),
            "activeDeadlineSeconds": spec.get("activeDeadlineSeconds"),
            "template": {
                "spec": {
                    "containers": [
                        {"name": c.get("name"), "env": c.get("env")}
                        for c in containers
                        if c.get("name") == CONTAINER_JOB
                    ]
                }
            },
        },
        "status": job.get("status") or {},
    }


def _trim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """What the phase needs of a Pod: its labels and container states."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return {
        "metadata": {key: metadata.get(key) for key in ("name", "labels", "resourceVersion")},
        "status": {
            key: status.get(key)
            for key in ("phase", "initContainerStatuses", "containerStatuses")
            if key in status
        },
    }


def _job_id_of(item: dict[str, Any]) -> str | None:
    labels = (item.get("metadata") or {}).get("labels") or {}
    job_id: str | None = labels.get(LABEL_JOB_ID)
    return job_id


def _newer(candidate: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """Whether ``candidate`` is at least as recent as ``current`` (etcd revisions)."""
    if current is None:
        return True
    try:
        return int(candidate["metadata"]["resourceVersion"]) >= int(
            current["metadata"]["resourceVersion"]
        )
    except (KeyError, TypeError, ValueError):
        return True


class _Waiters:
    """The waiters on one job: their condition and a counter of changes seen for it."""

    def __init__(self, lock: threading.Lock) -> None:
        self.condition = threading.Condition(lock)
        self.count = 0
        self.changes = 0

    def wake(self) -> None:
        """Count a change and wake every waiter (the caller holds the lock)."""
        self.changes += 1
        self.condition.notify_all()


class _Informer:
    """One watch of the namespace's Jobs and one of their Pods, for the whole process.

    Keeps a trimmed copy of every managed Job and Pod, current within the watch's latency,
    so that get and list need no API call, and wakes exactly the waiters of a job that
    changed: a blocked UWS WAIT costs no polling, no API call and no CPU while it sleeps.
    Until both watches have listed their objects (and after a watch fails, until it has
    listed them again) ``synced`` is false and the backend reads the API instead; a list
    asked for while the watches make their very first listing waits for it rather than
    list everything a second time (see ``wait_first_sync``).
    """

    def __init__(self, backend: KubernetesBackend) -> None:
        self.backend = backend
        self.lock = threading.Lock()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, dict[str, Any]]] = {}
        self.waiters: dict[str, _Waiters] = {}
        self.deleted: dict[str, float] = {}  # job id -> when this process deleted it
        self._synced = {"jobs": threading.Event(), "pods": threading.Event()}
        # Set once both watches have listed, or as soon as either failed before they had.
        self._first_sync_settled = threading.Event()
        self._responses: dict[str, Any] = {}
        self.stopped = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(kind,), name=f"ocps-watch-{kind}", daemon=True)
            for kind in ("jobs", "pods")
        ]
        for thread in self.threads:
            thread.start()

    @property
    def synced(self) -> bool:
        return all(event.is_set() for event in self._synced.values())

    def wait_first_sync(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) for the watches' first listing; whether synced.

        Returns at once after that first listing, or once a watch has failed before it.
        """
        self._first_sync_settled.wait(timeout)
        return self.synced

    # --- the watches --------------------------------------------------------------------

    def _function(self, kind: str) -> Callable[..., Any]:
        if kind == "jobs":
            return self.backend.batch.list_namespaced_job
        return self.backend.core.list_namespaced_pod

    def _run(self, kind: str) -> None:
        version: str | None = None
        failures = 0
        while not self.stopped.is_set():
            try:
                if version is None:
                    version = self._relist(kind)
                version = self._watch(kind, version)
                failures = 0
            except Exception as error:  # the watch must outlive any API failure
                self._first_sync_settled.set()  # nobody waits on a failing first listing
                if self.stopped.is_set():
                    return
                self._synced[kind].clear()
                failures += 1
                log.warning("watch of %s failed (%s); listing again", kind, error)
                version = None
                self.stopped.wait(min(30.0, 0.5 * 2**failures))

    def _relist(self, kind: str) -> str:
        items: list[dict[str, Any]] = []
        trim = _trim_job if kind == "jobs" else _trim_pod
        pages = self.backend._pages(
            f"list {kind}", self._function(kind), f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        )
        page: dict[str, Any] = {}
        for page in pages:
            # Trimmed page by page: a list of 10,000 whole Jobs is hundreds of MB of objects.
            items.extend(trim(item) for item in page.get("items") or [])
        version = str((page.get("metadata") or {}).get("resourceVersion") or "")
        with self.lock:
            if kind == "jobs":
                self.jobs = {job_id: item for item in items if (job_id := _job_id_of(item))}
            else:
                pods: dict[str, dict[str, dict[str, Any]]] = {}
                for item in items:
                    if job_id := _job_id_of(item):
                        pods.setdefault(job_id, {})[item["metadata"]["name"]] = item
                self.pods = pods
            for waiters in self.waiters.values():  # anything may have changed meanwhile
                waiters.wake()
        _freeze_long_lived()
        self._synced[kind].set()
        if self.synced:
            self._first_sync_settled.set()
        return version

    def _watch(self, kind: str, version: str) -> str | None:
        """Apply events until the server ends the watch; the version to resume from."""
        response = self._function(kind)(
            self.backend.namespace,
            label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}",
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(5, WATCH_SECONDS + 30),
        )
        self._responses[kind] = response
        try:
            buffer = b""
            for segment in response.stream(amt=None, decode_content=False):
                buffer += segment
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    item = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if item.get("code") == 410:  # too old: list again
                            return None
                        raise RuntimeError(item.get("message") or "watch error")
                    version = (item.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") != "BOOKMARK":
                        self._apply(kind, event.get("type"), item)
                if self.stopped.is_set():
                    return version
        finally:
            self._responses.pop(kind, None)
            response.release_conn()
        return version

    def _apply(self, kind: str, action: str | None, item: dict[str, Any]) -> None:
        job_id = _job_id_of(item)
        if job_id is None:
            return
        with self.lock:
            if kind == "jobs":
                if action == "DELETED":
                    self.jobs.pop(job_id, None)
                elif job_id not in self.deleted and _newer(item, self.jobs.get(job_id)):
                    self.jobs[job_id] = _trim_job(item)
            else:
                name = item["metadata"]["name"]
                pods = self.pods.setdefault(job_id, {})
                if action == "DELETED":
                    pods.pop(name, None)
                    if not pods:
                        del self.pods[job_id]
                elif _newer(item, pods.get(name)):
                    pods[name] = _trim_pod(item)
            self._notify(job_id)

    def _notify(self, job_id: str) -> None:
        waiters = self.waiters.get(job_id)
        if waiters is not None:
            waiters.wake()

    # --- what the backend reads and writes ----------------------------------------------

    def view(self, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The cached Job and its Pods, or None when not synced or not cached."""
        if not self.synced:
            return None
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            return job, list(self.pods.get(job_id, {}).values())

    def snapshot(self) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]] | None:
        """Every cached Job and the Pods of each job id, or None when not synced."""
        if not self.synced:
            return None
        with self.lock:
            return list(self.jobs.values()), {
                job_id: list(pods.values()) for job_id, pods in self.pods.items()
            }

    def store(self, job: dict[str, Any]) -> None:
        """A Job this process just wrote (read-your-writes before the watch sees it)."""
        job_id = _job_id_of(job)
        if job_id is None:
            return
        with self.lock:
            if _newer(job, self.jobs.get(job_id)):
                self.jobs[job_id] = _trim_job(job)
            self._notify(job_id)

    def forget(self, job_id: str) -> None:
        """A Job this process deleted: gone at once for this process."""
        now = time.monotonic()
        with self.lock:
            self.jobs.pop(job_id, None)
            self.deleted[job_id] = now
            for old in [key for key, when in self.deleted.items() if now - when > 300]:
                del self.deleted[old]
            self._notify(job_id)

    def wait(self, job_id: str, seen: int, timeout: float) -> None:
        """Sleep until the job's change counter moves past ``seen`` or ``timeout`` passes."""
        with self.lock:
            waiters = self.waiters[job_id]
            waiters.condition.wait_for(
                lambda: waiters.changes != seen or self.stopped.is_set(), timeout=timeout
            )

    def enter(self, job_id: str) -> int:
        """Register a waiter on the job; its change counter now."""
        with self.lock:
            waiters = self.waiters.setdefault(job_id, _Waiters(self.lock))
            waiters.count += 1
            return waiters.changes

    def changes(self, job_id: str) -> int:
        with self.lock:
            return self.waiters[job_id].changes

    def leave(self, job_id: str) -> None:
        with self.lock:
            waiters = self.waiters[job_id]
            waiters.count -= 1
            if waiters.count == 0:
                del self.waiters[job_id]

    def stop(self) -> None:
        self.stopped.set()
        with self.lock:
            for waiters in self.waiters.values():
                waiters.condition.notify_all()
        for response in list(self._responses.values()):
            with contextlib.suppress(Exception):
                response.shutdown()


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
        self._archives_checked: dict[str, int] = {}  # job -> hash of the record job.json holds
        self._cache_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ocps-manifest")
        self._informer: _Informer | None = None
        self._closed = False
        self._records: dict[str, tuple[tuple[Any, ...], JobRecord]] = {}

    def _informed(self) -> _Informer:
        """The process's watches of Jobs and Pods, started on first use."""
        with self._cache_lock:
            if self._informer is None:
                self._informer = _Informer(self)
            return self._informer

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
            metrics.BACKEND_ERRORS.labels("kubernetes", action).inc()
            raise BackendUnavailableError(
                f"Kubernetes unavailable ({action}: {error.status} {error.reason})"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            log.warning("Kubernetes %s failed: %s", action, error)
            metrics.BACKEND_ERRORS.labels("kubernetes", action).inc()
            raise BackendUnavailableError(f"Kubernetes unavailable ({action})") from None

    def _raw(self, action: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call without deserializing into client models: plain JSON is much faster."""
        response = self._call(action, function, *args, _preload_content=False, **kwargs)
        return orjson.loads(response.data)

    def _post(self, action: str, path: str, body: bytes) -> Any:
        """POST JSON already serialized, with the client's connection pool and credentials.

        The generated ``create_*`` methods validate their arguments and walk the model to
        serialize it: in process, more than the HTTP exchange itself. The client's pool
        manager carries its TLS and proxy settings, ``update_params_for_auth`` its token.
        """
        headers = {
            **self.api.default_headers,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.api.update_params_for_auth(headers, [], ["BearerToken"], path, "POST", body)
        url = self.api.configuration.host + path

        def post(_request_timeout: tuple[float, float]) -> Any:
            connect, read = _request_timeout
            response = self.api.rest_client.pool_manager.request(
                "POST",
                url,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(connect=connect, read=read),
            )
            if not 200 <= response.status <= 299:  # raises the status's ApiException, for _call
                ApiException.from_response(http_resp=response, body=None, data=None)
            return response

        return orjson.loads(self._call(action, post).data)

    def _read_job(self, job_id: str) -> dict[str, Any] | None:
        try:
            job: dict[str, Any] = self._raw(
                "read job", self.batch.read_namespaced_job, job_name(job_id), self.namespace
            )
        except _Missing:
            return None
        return job

    def _pages(
        self, action: str, function: Callable[..., Any], selector: str
    ) -> Iterator[dict[str, Any]]:
        """The pages of one list, raw, in order; the last carries the list's resourceVersion."""
        token = None
        while True:
            page: dict[str, Any] = self._raw(
                action,
                function,
                self.namespace,
                label_selector=selector,
                limit=PAGE_SIZE,
                _continue=token,
            )
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def _list(self, action: str, function: Callable[..., Any], selector: str) -> list[Any]:
        return [
            item
            for page in self._pages(action, function, selector)
            for item in page.get("items") or []
        ]

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
            results = ResultFile.from_manifest_json(data)
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
        # Serialized by pydantic, sent and read back raw: no client-model machinery.
        created = self._post(
            "create job",
            f"/apis/batch/v1/namespaces/{self.namespace}/jobs",
            job_json(job),
        )
        if self._informer is not None:
            self._informer.store(created)
        record.phase = Phase.QUEUED if start else Phase.PENDING
        return record

    def get(self, job_id: str) -> JobRecord | None:
        """From the Job and its pods; from the archived record once Kubernetes removed it.

        The watched copy answers when it has the Job; the API otherwise (not yet synced,
        or a Job another process created an instant ago).
        """
        view = self._job_and_pods(job_id)
        if view is None:
            return self._archived(job_id)
        job, pods = view
        results = self._results(job_id) if self._needs_manifest(job) else None
        record = record_from_job(job, pods, results)
        merged = False
        if record.phase in FINAL_PHASES and results is None:
            results = self._merge_what_replicas_left(record, job, pods)
            if results is not None:
                record, merged = record_from_job(job, pods, results), True
        if record.phase in FINAL_PHASES and results is not None:
            self._keep_archive_current(record, write_missing=merged)
        return record

    def _job_and_pods(self, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The Job and its Pods: the watched copy's, else the API's; None without a Job."""
        view = self._informed().view(job_id)
        if view is not None:
            return view
        job = self._read_job(job_id)
        if job is None:
            return None
        return job, self._pods(f"{LABEL_JOB_ID}={job_id}").get(job_id, [])

    def _merge_what_replicas_left(
        self, record: JobRecord, job: dict[str, Any], pods: list[dict[str, Any]]
    ) -> list[ResultFile] | None:
        """The results of a replicated job that ended before every replica had uploaded.

        The last replica to finish merges the replicas' manifests; one that never started
        (still pending when a sibling's failure, an abort or the deadline stopped the Job)
        never does. Once no pod is left running, the manifests there are are merged, the
        missing replicas counted as stopped.
        """
        replicas = record.parameters.replicas
        status = job.get("status") or {}
        # The Job controller has settled the Job (ended, or suspended by an abort) and counts
        # no pod still running or terminating: no uploader can write a manifest any more.
        settled = {
            condition.get("type")
            for condition in status.get("conditions") or []
            if condition.get("status") == "True"
        } & {"Failed", "Complete", "Suspended"}
        phases = [(pod.get("status") or {}).get("phase") for pod in pods]
        if (
            replicas < 2
            or not settled
            or status.get("active")
            or status.get("terminating")
            or any(phase not in ("Succeeded", "Failed") for phase in phases)
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
        results = ResultFile.from_manifest(manifest)
        with self._cache_lock:
            self._manifests[record.job_id] = results
            self._missing.pop(record.job_id, None)
        return results

    def _keep_archive_current(self, record: JobRecord, *, write_missing: bool = False) -> None:
        """job.json as the live Job last showed the job, for when Kubernetes has removed it.

        The uploader archives what it knows in the pod: not the environment, the start time,
        a failed clone's message or a destruction time set later. Once it has written
        job.json, a read of the finished job puts the whole record there instead, and again
        whenever the record changes; a version is taken as archived once a read finds it.
        """
        current = record.model_dump_json()
        version = hash(current)
        with self._cache_lock:
            if self._archives_checked.get(record.job_id) == version:
                return
        key = archive_key(record.job_id)
        try:
            data = self.store.get_bytes(key)
            if data is None and not write_missing:
                return  # not yet: the uploader writes it after the manifest
            try:
                same = data is not None and JobRecord.model_validate_json(data) == record
            except ValueError:
                same = False
            if not same:
                # Checked again on the next read: an uploader's late write of its own
                # shorter record (a restarted pod, a second replica) is then replaced too.
                self.store.put_bytes(key, current.encode(), "application/json")
                metrics.ARCHIVE_WRITES.labels("ok").inc()
                log.info("job archived", extra={"job_id": record.job_id})
                return
        except BackendUnavailableError as error:
            metrics.ARCHIVE_WRITES.labels("failed").inc()
            log.warning(
                "archived record of job %s not brought up to date: %s", record.job_id, error
            )
            return
        with self._cache_lock:
            self._archives_checked[record.job_id] = version

    def list_records(self, owner: str | None = None) -> list[JobRecord]:
        """From the watched copies (waiting for their first listing); else from the API."""
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        if owner is not None:
            selector += f",{LABEL_OWNER}={owner_label(owner)}"
        informer = self._informed()
        snapshot = informer.snapshot()
        if snapshot is None and informer.wait_first_sync(FIRST_SYNC_WAIT_SECONDS):
            snapshot = informer.snapshot()  # one listing of every Job, not two at once
        if snapshot is not None:
            jobs, pods = snapshot
            if owner is not None:
                wanted = owner_label(owner)
                jobs = [job for job in jobs if job["metadata"]["labels"].get(LABEL_OWNER) == wanted]
        else:
            jobs = self._list("list jobs", self.batch.list_namespaced_job, selector)
            pods = self._pods(selector) if jobs else {}
        finished = [job for job in jobs if self._needs_manifest(job)]
        ids = [job["metadata"]["labels"][LABEL_JOB_ID] for job in finished]
        manifests = dict(zip(ids, self._pool.map(self._results, ids), strict=True))
        records = []
        built: dict[str, tuple[tuple[Any, ...], JobRecord]] = {}
        new = 0
        for job in jobs:
            job_id = job["metadata"]["labels"][LABEL_JOB_ID]
            job_pods = pods.get(job_id, [])
            results = manifests.get(job_id)
            # A record is built once per version of its Job, Pods and manifest: a list of
            # 10,000 unchanged Jobs costs lookups, not 10,000 model validations.
            key = (
                job["metadata"].get("resourceVersion"),
                tuple(pod["metadata"].get("resourceVersion") for pod in job_pods),
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
            built[job_id] = (key, record)
            records.append(record)  # shared with later lists: callers only read records
        if snapshot is not None:
            if owner is None:
                self._records = built  # only the Jobs that still exist stay cached
            else:
                self._records.update(built)
            if new >= FREEZE_AFTER_RECORDS:
                _freeze_long_lived()
        if owner is not None:
            records = [record for record in records if record.owner == owner]
        return records

    def _patch(self, job_id: str, body: dict[str, Any]) -> None:
        try:
            patched = self._raw(
                "patch job", self.batch.patch_namespaced_job, job_name(job_id), self.namespace, body
            )
        except _Missing:
            raise JobNotFoundError(f"No job {job_id}") from None
        if self._informer is not None:
            self._informer.store(patched)

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
        view = self._job_and_pods(job_id)
        if view is not None and ran_to_completion(*view):
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
        with contextlib.suppress(_Missing):
            self._call(
                "delete job",
                self.batch.delete_namespaced_job,
                job_name(job_id),
                self.namespace,
                propagation_policy="Background",
            )
        if self._informer is not None:
            self._informer.forget(job_id)
        self._records.pop(job_id, None)
        self.store.delete_prefix(job_prefix(job_id))
        with self._cache_lock:
            self._manifests.pop(job_id, None)
            self._archives_checked.pop(job_id, None)

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
        """Sleep until the watch reports a change of the job, then look again.

        No API call and no CPU while nothing changes: the process's one watch wakes the
        waiters of exactly the job that changed. A completed Job waits for its manifest,
        which only the object store knows: that is looked up once a second.
        """
        deadline = time.monotonic() + timeout
        informer = self._informed()
        seen = informer.enter(job_id)
        try:
            while (remaining := deadline - time.monotonic()) > 0 and not self._closed:
                record = self.get(job_id)
                if record is None or record.phase != phase:
                    return
                view = informer.view(job_id)
                if view is not None and self._needs_manifest(view[0]):
                    remaining = min(remaining, MANIFEST_RECHECK_SECONDS)
                informer.wait(job_id, seen, remaining)
                seen = informer.changes(job_id)
        finally:
            informer.leave(job_id)

    def check_ready(self) -> dict[str, object]:
        """Readiness: one small list of Jobs answers, and the watches (if started) are synced."""

        def list_one(_request_timeout: object) -> Any:  # shorter than REQUEST_TIMEOUT: a probe
            return self.batch.list_namespaced_job(
                self.namespace, limit=1, _preload_content=False, _request_timeout=(1, 2)
            )

        self._call("list jobs", list_one)
        informer = self._informer
        if informer is not None and not informer.synced:
            raise BackendUnavailableError("Kubernetes watch of Jobs and Pods is not synced")
        return {"reachable": True, "watch": "not started" if informer is None else "synced"}

    def close(self) -> None:
        """Stop the watches and release the connection pool."""
        self._closed = True
        if self._informer is not None:
            self._informer.stop()
        self._pool.shutdown(wait=False)
        self.api.close()


def _api_message(error: ApiException) -> str:
    """The message of the API's Status body; the HTTP reason when the body is anything else."""
    try:
        status = orjson.loads(error.body or "{}")
    except ValueError:
        status = None
    message = status.get("message") if isinstance(status, dict) else None
    return str(message or error.reason)[:500]
