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
from typing import Any, NamedTuple, Protocol

from ...conventions import LABEL_MANAGED_BY, MANAGED_BY
from ...memory import release_free_memory
from .client import Kind
from .tables import Packed, PackedTable, compact_tables, pods_after
from .views import PodView, job_id_of, newer, pack, pack_job, pack_pod, unpack, unpack_list

__all__ = [
    "MANAGED_SELECTOR",
    "Change",
    "ListPages",
    "Stream",
    "Waiters",
    "Watch",
    "WatchCache",
    "freeze_long_lived",
    "packed_change",
]

log = logging.getLogger(__name__)

MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
KINDS: tuple[Kind, ...] = ("jobs", "pods")
# The tables are compacted (``tables.compact_tables``) this long after a change, so once
# per burst of events rather than once per event.
COMPACT_DELAY_SECONDS = 2.0


def freeze_long_lived() -> None:
    """Leave the objects that exist now out of the garbage collector's full passes.

    What the process keeps for its lifetime (modules, the server's threads, the tables of
    the watched copy) need not be walked again by every full collection that a long
    list's allocations start. Objects are still freed when no longer referenced:
    freezing only stops the collector looking at them.
    """
    gc.freeze()


class Change(NamedTuple):
    """One object as the watched copy takes it: its job, its name (a Pod's), packed."""

    job_id: str
    name: str
    packed: bytes | None  # None: deleted


def packed_change(kind: Kind, action: str | None, item: dict[str, Any]) -> Change | None:
    """The change an event (or a listed object) makes; None for an object of no job."""
    job_id = job_id_of(item)
    if job_id is None:
        return None
    name = "" if kind == "jobs" else PodView(item).name or ""
    if action == "DELETED":
        return Change(job_id, name, None)
    return Change(job_id, name, pack_job(item) if kind == "jobs" else pack_pod(item))


def _newer(packed: Packed, current: Packed | None) -> bool:
    return current is None or newer(unpack(packed), unpack(current))


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
    packed (``views.pack_job``: compact JSON, unpacked when read; the Pods of a job as one
    list) in tables compacted after each burst of changes (``tables.compact_tables``),
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
        # job id -> packed Job; job id -> its Pods packed together as a list: two objects
        # per job, read by ``views.unpack``, and no small ones that would outlive a list.
        self.jobs = PackedTable()
        self.pods = PackedTable()
        self._compaction: threading.Timer | None = None
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
        # Packed page by page: a list of 10,000 whole Jobs is hundreds of MB of objects,
        # of which nothing stays referenced once its page is packed.
        changes: list[Change] = []
        version = ""
        page: dict[str, Any] = {}
        for page in self.list_pages(kind, MANAGED_SELECTOR):
            for item in page.get("items") or []:
                if (change := packed_change(kind, "ADDED", item)) is not None:
                    changes.append(change)
            version = str((page.get("metadata") or {}).get("resourceVersion") or "")
        del page
        table: dict[str, Packed] = {}
        pods_of: dict[str, list[Packed]] = {}
        for change in changes:  # compacted below: the keys and objects get their own block
            if kind == "jobs":
                table[change.job_id] = change.packed or b""
            elif change.name:
                pods_of.setdefault(change.job_id, []).append(change.packed or b"")
        del changes
        for job_id, packed_pods in pods_of.items():
            table[job_id] = pack([unpack(pod) for pod in packed_pods])
        del pods_of
        with self.lock:
            if kind == "jobs":
                self.jobs = PackedTable(table)
            else:
                self.pods = PackedTable(table)
            compact_tables((self.jobs, self.pods))
            for waiters in self.waiters.values():  # anything may have changed meanwhile
                waiters.wake()
        del table
        freeze_long_lived()
        release_free_memory()
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
                action, item = event.get("type"), event.get("object") or {}
                del event
                if action == "ERROR":
                    if item.get("code") == 410:  # too old: list again
                        return None
                    raise RuntimeError(item.get("message") or "watch error")
                version = (item.get("metadata") or {}).get("resourceVersion") or version
                change = packed_change(kind, action, item) if action != "BOOKMARK" else None
                del item  # the parsed event is freed before the copy keeps anything new
                if change is not None:
                    self._apply(kind, change)
                if self.stopped.is_set():
                    return version
        finally:
            self._streams.pop(kind, None)
            close = getattr(events, "close", None)
            if close is not None:
                close()  # the stream's connection back to the pool
        return version

    def _apply(self, kind: Kind, change: Change) -> None:
        job_id, packed = change.job_id, change.packed
        with self.lock:
            if kind == "jobs":
                if packed is None:
                    self.jobs.pop(job_id)
                elif job_id not in self.deleted and _newer(packed, self.jobs.get(job_id)):
                    self.jobs.put(job_id, packed)
            else:
                changed, pods = pods_after(self.pods.get(job_id), change.name, packed)
                if changed and pods is None:
                    self.pods.pop(job_id)
                elif changed and pods is not None:
                    self.pods.put(job_id, pods)
            self._notify(job_id)
            self._compact_soon()

    def _compact_soon(self) -> None:
        """Compact the tables once the current burst of changes is over (the caller locks)."""
        if self._compaction is None and not self.stopped.is_set():
            self._compaction = threading.Timer(COMPACT_DELAY_SECONDS, self._compact)
            self._compaction.daemon = True
            self._compaction.start()

    def _compact(self) -> None:
        with self.lock:
            self._compaction = None
            if self.jobs.changes or self.pods.changes:
                compact_tables((self.jobs, self.pods))
        release_free_memory()

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
            pods = self.pods.get(job_id)
        return unpack(job), unpack_list(pods) if pods is not None else []

    def snapshot(self) -> tuple[list[Packed], dict[str, Packed]] | None:
        """Every cached Job, and the list of Pods of each job id, packed; None when not synced.

        The caller unpacks them (``views.unpack``, ``views.unpack_list``), outside the lock.
        """
        if not self.synced:
            return None
        with self.lock:
            return self.jobs.values(), self.pods.items()

    def store(self, job: dict[str, Any]) -> None:
        """A Job this process just wrote (read-your-writes before the watch sees it)."""
        job_id = job_id_of(job)
        if job_id is None:
            return
        packed = pack_job(job)
        with self.lock:
            if _newer(packed, self.jobs.get(job_id)):
                self.jobs.put(job_id, packed)
            self._notify(job_id)
            self._compact_soon()

    def forget(self, job_id: str) -> None:
        """A Job this process deleted: gone at once for this process."""
        now = time.monotonic()
        with self.lock:
            self.jobs.pop(job_id)
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
            if self._compaction is not None:
                self._compaction.cancel()
            for waiters in self.waiters.values():
                waiters.condition.notify_all()
        for stream in list(self._streams.values()):
            with contextlib.suppress(Exception):
                stream.close()
