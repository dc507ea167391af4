"""The process's watched copy of the managed Jobs and Pods, and the waiters it wakes.

``WatchCache`` is given the functions that list and watch (the ``KubernetesApi`` verbs, or
a test's fake of them), never the backend itself.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from ...conventions import LABEL_MANAGED_BY, MANAGED_BY
from .client import Kind
from .views import PodView, job_id_of, newer, trim_job, trim_pod

__all__ = [
    "MANAGED_SELECTOR",
    "ListPages",
    "Stream",
    "Waiters",
    "Watch",
    "WatchCache",
    "freeze_long_lived",
]

log = logging.getLogger(__name__)

MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
KINDS: tuple[Kind, ...] = ("jobs", "pods")


def freeze_long_lived() -> None:
    """Leave the objects that exist now out of the garbage collector's full passes.

    The watched copy of the Jobs and the records built from them live as long as the
    process, and are hundreds of thousands of objects at 10,000 Jobs. A list that long
    allocates enough to start a full collection, which walked all of them each time.
    They are still freed when no longer referenced: freezing only stops the collector
    looking at them.
    """
    gc.freeze()


class Stream(Protocol):
    """The events of one watch request; ``close`` ends it from another thread."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


ListPages = Callable[[Kind, str], Iterable[dict[str, Any]]]
Watch = Callable[[Kind, str, str], Stream]


class Waiters:
    """The waiters on one job: their condition and a counter of changes seen for it."""

    def __init__(self, lock: threading.Lock) -> None:
        self.condition = threading.Condition(lock)
        self.count = 0
        self.changes = 0

    def wake(self) -> None:
        """Count a change and wake every waiter (the caller holds the lock)."""
        self.changes += 1
        self.condition.notify_all()


class WatchCache:
    """One watch of the namespace's Jobs and one of their Pods, for the whole process.

    Keeps a trimmed copy of every managed Job and Pod, current within the watch's latency,
    so that get and list need no API call, and wakes exactly the waiters of a job that
    changed: a blocked UWS WAIT costs no polling, no API call and no CPU while it sleeps.
    Until both watches have listed their objects (and after a watch fails, until it has
    listed them again) ``synced`` is false and the backend reads the API instead; a list
    asked for while the watches make their very first listing waits for it rather than
    list everything a second time (see ``wait_first_sync``).
    """

    def __init__(self, list_pages: ListPages, watch: Watch) -> None:
        self.list_pages = list_pages
        self.watch = watch
        self.lock = threading.Lock()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, dict[str, Any]]] = {}
        self.waiters: dict[str, Waiters] = {}
        self.deleted: dict[str, float] = {}  # job id -> when this process deleted it
        self._synced = {kind: threading.Event() for kind in KINDS}
        # Set once both watches have listed, or as soon as either failed before they had.
        self._first_sync_settled = threading.Event()
        self._streams: dict[Kind, Stream] = {}
        self.stopped = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(kind,), name=f"ocps-watch-{kind}", daemon=True)
            for kind in KINDS
        ]
        for thread in self.threads:
            thread.start()

    @property
    def synced(self) -> bool:
        """Whether both watches have listed and run since."""
        return all(event.is_set() for event in self._synced.values())

    def wait_first_sync(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) for the watches' first listing; whether synced.

        Returns at once after that first listing, or once a watch has failed before it.
        """
        self._first_sync_settled.wait(timeout)
        return self.synced

    # --- the watches --------------------------------------------------------------------

    def _run(self, kind: Kind) -> None:
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

    def _relist(self, kind: Kind) -> str:
        items: list[dict[str, Any]] = []
        trim = trim_job if kind == "jobs" else trim_pod
        page: dict[str, Any] = {}
        for page in self.list_pages(kind, MANAGED_SELECTOR):
            # Trimmed page by page: a list of 10,000 whole Jobs is hundreds of MB of objects.
            items.extend(trim(item) for item in page.get("items") or [])
        version = str((page.get("metadata") or {}).get("resourceVersion") or "")
        with self.lock:
            if kind == "jobs":
                self.jobs = {job_id: item for item in items if (job_id := job_id_of(item))}
            else:
                pods: dict[str, dict[str, dict[str, Any]]] = {}
                for item in items:
                    pod = PodView(item)
                    if (job_id := pod.job_id) and pod.name:
                        pods.setdefault(job_id, {})[pod.name] = item
                self.pods = pods
            for waiters in self.waiters.values():  # anything may have changed meanwhile
                waiters.wake()
        freeze_long_lived()
        self._synced[kind].set()
        if self.synced:
            self._first_sync_settled.set()
        return version

    def _watch(self, kind: Kind, version: str) -> str | None:
        """Apply events until the server ends the watch; the version to resume from."""
        stream = self.watch(kind, MANAGED_SELECTOR, version)
        self._streams[kind] = stream
        events = iter(stream)
        try:
            for event in events:
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
            self._streams.pop(kind, None)
            close = getattr(events, "close", None)
            if close is not None:
                close()  # the stream's connection back to the pool
        return version

    def _apply(self, kind: Kind, action: str | None, item: dict[str, Any]) -> None:
        job_id = job_id_of(item)
        if job_id is None:
            return
        with self.lock:
            if kind == "jobs":
                if action == "DELETED":
                    self.jobs.pop(job_id, None)
                elif job_id not in self.deleted and newer(item, self.jobs.get(job_id)):
                    self.jobs[job_id] = trim_job(item)
            else:
                name = PodView(item).name or ""
                pods = self.pods.setdefault(job_id, {})
                if action == "DELETED":
                    pods.pop(name, None)
                    if not pods:
                        del self.pods[job_id]
                elif newer(item, pods.get(name)):
                    pods[name] = trim_pod(item)
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
        job_id = job_id_of(job)
        if job_id is None:
            return
        with self.lock:
            if newer(job, self.jobs.get(job_id)):
                self.jobs[job_id] = trim_job(job)
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
            waiters = self.waiters.setdefault(job_id, Waiters(self.lock))
            waiters.count += 1
            return waiters.changes

    def changes(self, job_id: str) -> int:
        """The job's change counter now (the caller is registered)."""
        with self.lock:
            return self.waiters[job_id].changes

    def leave(self, job_id: str) -> None:
        """Unregister a waiter on the job."""
        with self.lock:
            waiters = self.waiters[job_id]
            waiters.count -= 1
            if waiters.count == 0:
                del self.waiters[job_id]

    def stop(self) -> None:
        """Stop both watches and wake every waiter."""
        self.stopped.set()
        with self.lock:
            for waiters in self.waiters.values():
                waiters.condition.notify_all()
        for stream in list(self._streams.values()):
            with contextlib.suppress(Exception):
                stream.close()
