"""The watch cache over a fake of the project's API wrapper: lists, events, 410, waiters."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ocps_jobs.backends.kubernetes import watch
from ocps_jobs.backends.kubernetes.client import Kind
from ocps_jobs.backends.kubernetes.views import unpack, unpack_list
from ocps_jobs.backends.kubernetes.watch import MANAGED_SELECTOR, WatchCache
from ocps_jobs.errors import BackendUnavailableError
from tests.helpers import wait_until

END = {"type": "END"}


def job(job_id: str, version: int, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"ocps-{job_id}",
            "labels": {"ocps.lsst.io/job-id": job_id},
            "resourceVersion": str(version),
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"completions": 3, **spec},
        "status": {},
    }


def pod(job_id: str, name: str, version: int, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"ocps.lsst.io/job-id": job_id},
            "resourceVersion": str(version),
        },
        "status": {"phase": phase, "podIP": "10.0.0.9"},
    }


class FakeStream:
    """One watch request: the events the test sends, until it ends or is closed."""

    def __init__(self, events: queue.Queue[dict[str, Any]]) -> None:
        self.events = events

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (event := self.events.get()) is not END:
            yield event

    def close(self) -> None:
        self.events.put(END)


class FakeApi:
    """The ``KubernetesApi`` verbs the cache is given: scripted list pages and watch events."""

    def __init__(self, pages: dict[Kind, list[dict[str, Any]]]) -> None:
        self.pages = pages
        self.lists: list[tuple[Kind, str]] = []
        self.watches: list[tuple[Kind, str]] = []
        self.events: dict[Kind, queue.Queue[dict[str, Any]]] = {
            "jobs": queue.Queue(),
            "pods": queue.Queue(),
        }
        self.list_gate = threading.Event()
        self.list_gate.set()

    def list_pages(self, kind: Kind, selector: str) -> Iterator[dict[str, Any]]:
        assert selector == MANAGED_SELECTOR
        self.list_gate.wait()
        self.lists.append((kind, selector))
        yield from self.pages[kind]

    def watch(self, kind: Kind, selector: str, version: str) -> FakeStream:
        assert selector == MANAGED_SELECTOR
        self.watches.append((kind, version))
        return FakeStream(self.events[kind])

    def send(self, kind: Kind, kind_of_event: str, item: dict[str, Any]) -> None:
        self.events[kind].put({"type": kind_of_event, "object": item})


def listed(items: list[dict[str, Any]], version: str, more: bool = False) -> dict[str, Any]:
    metadata = {"resourceVersion": version, **({"continue": "next"} if more else {})}
    return {"metadata": metadata, "items": items}


@pytest.fixture
def api() -> FakeApi:
    return FakeApi(
        {
            "jobs": [listed([job("a", 10)], "", more=True), listed([job("b", 11)], "20")],
            "pods": [listed([pod("a", "a-0", 12), pod("a", "a-1", 13)], "21")],
        }
    )


@pytest.fixture
def cache(api: FakeApi) -> Iterator[WatchCache]:
    watched = WatchCache(api.list_pages, api.watch)
    yield watched
    watched.stop()


def test_lists_every_page_then_watches_from_the_lists_version(
    cache: WatchCache, api: FakeApi
) -> None:
    assert cache.wait_first_sync(5.0) is True
    view = cache.view("a")
    assert view is not None
    job_a, pods_a = view
    assert job_a["spec"]["completions"] == 3  # read by the phase rules: kept
    assert "managedFields" not in job_a["metadata"]  # read by nothing: trimmed
    assert sorted(p["metadata"]["name"] for p in pods_a) == ["a-0", "a-1"]
    assert "podIP" not in pods_a[0]["status"]
    assert cache.view("b") == (unpack(cache.jobs["b"]), [])
    wait_until(lambda: sorted(api.watches) == [("jobs", "20"), ("pods", "21")], timeout=5)


def test_added_modified_and_deleted_events_update_the_copy(cache: WatchCache, api: FakeApi) -> None:
    assert cache.wait_first_sync(5.0)
    api.send("jobs", "ADDED", job("c", 30))
    wait_until(lambda: cache.view("c"), timeout=5)
    api.send("jobs", "MODIFIED", job("c", 31, suspend=True))
    wait_until(lambda: (view := cache.view("c")) and view[0]["spec"].get("suspend"), timeout=5)
    api.send("jobs", "MODIFIED", job("c", 29))  # older than what the cache has: ignored
    api.send("pods", "ADDED", pod("c", "c-0", 32))
    wait_until(lambda: (view := cache.view("c")) and view[1], timeout=5)
    assert unpack(cache.jobs["c"])["spec"]["suspend"] is True
    api.send("pods", "DELETED", pod("c", "c-0", 33))
    api.send("jobs", "DELETED", job("c", 34))
    wait_until(lambda: cache.view("c") is None and "c" not in cache.pods, timeout=5)
    snapshot = cache.snapshot()
    assert snapshot is not None
    assert sorted(
        j["metadata"]["labels"]["ocps.lsst.io/job-id"] for j in map(unpack, snapshot[0])
    ) == [
        "a",
        "b",
    ]


def test_410_gone_lists_again_and_the_waiters_wake(cache: WatchCache, api: FakeApi) -> None:
    assert cache.wait_first_sync(5.0)
    seen = cache.enter("a")
    woke = threading.Event()

    def waiter() -> None:
        cache.wait("a", seen, timeout=10.0)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        api.pages["jobs"] = [listed([job("a", 50, suspend=True)], "60")]
        api.events["jobs"].put({"type": "ERROR", "object": {"code": 410, "message": "too old"}})
        assert woke.wait(5.0)  # the relist woke the job's waiter
        wait_until(lambda: api.lists.count(("jobs", MANAGED_SELECTOR)) == 2, timeout=5)
        wait_until(lambda: ("jobs", "60") in api.watches, timeout=5)
        assert unpack(cache.jobs["a"])["spec"]["suspend"] is True
        assert "b" not in cache.jobs  # gone from the new list: gone from the copy
        assert cache.changes("a") > seen
    finally:
        cache.leave("a")
        thread.join(5.0)
    assert "a" not in cache.waiters


def test_a_waiter_wakes_on_its_own_jobs_change_only(cache: WatchCache, api: FakeApi) -> None:
    assert cache.wait_first_sync(5.0)
    seen_a, seen_b = cache.enter("a"), cache.enter("b")
    try:
        api.send("pods", "MODIFIED", pod("a", "a-0", 70, phase="Succeeded"))
        started = time.monotonic()
        cache.wait("a", seen_a, timeout=5.0)
        assert time.monotonic() - started < 4.0
        assert cache.changes("a") == seen_a + 1
        assert cache.changes("b") == seen_b
    finally:
        cache.leave("a")
        cache.leave("b")


def test_not_synced_until_both_kinds_are_listed(api: FakeApi) -> None:
    api.list_gate.clear()
    cache = WatchCache(api.list_pages, api.watch)
    try:
        assert cache.synced is False
        assert cache.view("a") is None and cache.snapshot() is None
        assert cache.wait_first_sync(0.2) is False
        api.list_gate.set()
        assert cache.wait_first_sync(5.0) is True
        assert cache.view("a") is not None
    finally:
        cache.stop()


def test_a_failing_watch_clears_the_sync_flag_until_it_lists_again(api: FakeApi) -> None:
    cache = WatchCache(api.list_pages, api.watch)
    try:
        assert cache.wait_first_sync(5.0)
        api.events["pods"].put({"type": "ERROR", "object": {"code": 500, "message": "boom"}})
        wait_until(lambda: api.lists.count(("pods", MANAGED_SELECTOR)) == 2, timeout=10)
        wait_until(lambda: cache.synced, timeout=10)
    finally:
        cache.stop()


def test_lists_do_not_wait_for_watches_that_cannot_list() -> None:
    calls = []

    def refusing(kind: Kind, selector: str) -> Iterator[dict[str, Any]]:
        calls.append(kind)
        raise BackendUnavailableError(f"Kubernetes unavailable (list {kind})")

    cache = WatchCache(refusing, FakeApi({}).watch)
    try:
        started = time.monotonic()
        assert cache.wait_first_sync(30.0) is False
        assert time.monotonic() - started < 5.0  # not the 30 s: the first listing failed
        assert calls
    finally:
        cache.stop()


def test_the_copy_keeps_packed_objects_and_keys_of_its_own(cache: WatchCache, api: FakeApi) -> None:
    assert cache.wait_first_sync(5.0)
    added = job("job-d", 40)
    api.send("jobs", "ADDED", added)
    api.send("pods", "ADDED", pod("job-d", "d-0", 41))
    api.send("pods", "ADDED", pod("job-d", "d-1", 42))
    wait_until(lambda: (view := cache.view("job-d")) and len(view[1]) == 2, timeout=5)
    # One bytes per Job and one for all of a job's Pods (or a slice of a compacted block:
    # below), nothing referencing an event.
    assert all(
        isinstance(packed, bytes | memoryview)
        for packed in [*cache.jobs.values(), *cache.pods.values()]
    )
    assert sorted(p["metadata"]["name"] for p in unpack_list(cache.pods["job-d"])) == ["d-0", "d-1"]
    # (a job id of more than one character: CPython shares the one-character strings)
    key = next(key for key in cache.jobs if key == "job-d")
    assert key is not added["metadata"]["labels"]["ocps.lsst.io/job-id"]
    api.send("pods", "DELETED", pod("job-d", "d-0", 43))
    wait_until(lambda: (view := cache.view("job-d")) and len(view[1]) == 1, timeout=5)
    api.send("pods", "DELETED", pod("job-d", "d-1", 44))
    wait_until(lambda: "job-d" not in cache.pods, timeout=5)


def test_the_tables_are_compacted_into_one_block_each_after_changes(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "COMPACT_DELAY_SECONDS", 0.05)
    cache = WatchCache(api.list_pages, api.watch)
    try:
        assert cache.wait_first_sync(5.0)
        added = job("job-e", 80)
        api.send("jobs", "ADDED", added)
        api.send("pods", "ADDED", pod("job-e", "e-0", 81))
        wait_until(lambda: (view := cache.view("job-e")) and view[1], timeout=5)
        wait_until(lambda: cache.jobs.changes == 0 and cache.pods.changes == 0, timeout=5)
        for table in (cache.jobs, cache.pods):
            blocks = {id(packed.obj) for packed in table.values() if isinstance(packed, memoryview)}
            assert len(blocks) == 1 and all(isinstance(p, memoryview) for p in table.values())
            # Kept as places in the block (one small int each), not as memoryview objects.
            assert all(isinstance(kept, int) for kept in table.entries.values())
        # Fresh keys, one string per job across both tables, none of them the event's.
        job_key = next(key for key in cache.jobs if key == "job-e")
        pod_key = next(key for key in cache.pods if key == "job-e")
        assert job_key is pod_key
        assert job_key is not added["metadata"]["labels"]["ocps.lsst.io/job-id"]
        view = cache.view("job-e")
        assert view is not None and view[0]["metadata"]["resourceVersion"] == "80"
        assert [p["metadata"]["name"] for p in view[1]] == ["e-0"]
    finally:
        cache.stop()
