"""The store's history index on both stores: moto's real S3 endpoint and the filesystem."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ocps_jobs.objectstore import ObjectStore
from ocps_jobs.objectstore.filesystem import FilesystemStore
from ocps_jobs.objectstore.history import HistoryIndex, is_sort_key, place_of, sort_key
from ocps_jobs.objectstore.s3 import S3Store

BASE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["s3", "filesystem"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        made: ObjectStore = S3Store(request.getfixturevalue("bucket"), endpoint)
    else:
        made = FilesystemStore(tmp_path / "store")
    made.ensure_ready()
    return made


def test_sort_key_orders_newest_first_then_higher_id_first() -> None:
    ids = sorted(uuid.uuid4().hex for _ in range(3))
    older, newer = BASE, BASE + timedelta(microseconds=1)
    keys = [
        sort_key(older, ids[0]),
        sort_key(newer, ids[0]),
        sort_key(older, ids[2]),
        sort_key(older, ids[1]),
    ]
    # exactly the reverse of sorting by (creation time, job id)
    assert sorted(keys) == [keys[1], keys[2], keys[3], keys[0]]
    assert all(is_sort_key(key) for key in keys)
    assert place_of(keys[1]) == (newer, ids[0])  # to the microsecond, back again
    assert not is_sort_key("../" + keys[0])


def test_pages_follow_each_other_newest_first_per_owner(store: ObjectStore) -> None:
    index = HistoryIndex(store)
    jobs = [(uuid.uuid4().hex, BASE + timedelta(seconds=n)) for n in range(25)]
    for number, (job_id, created) in enumerate(jobs):
        index.add(job_id, "alice" if number % 5 else "bob", created, None)
    newest_first = [job_id for job_id, _ in reversed(jobs)]
    assert [entry.job_id for entry in index.newest(None, page_size=4)] == newest_first
    bobs = [job_id for number, (job_id, _) in enumerate(jobs) if number % 5 == 0]
    assert [entry.job_id for entry in index.newest("bob", page_size=2)] == bobs[::-1]
    first = list(zip(range(10), index.newest(None, page_size=10), strict=False))
    cursor = first[-1][1].sort_key
    rest = [entry.job_id for entry in index.newest(None, cursor, page_size=10)]
    assert rest == newest_first[10:]


def test_removal_and_the_destruction_sweep(store: ObjectStore) -> None:
    index = HistoryIndex(store)
    doomed, moved, kept = (uuid.uuid4().hex for _ in range(3))
    index.add(doomed, "alice", BASE, BASE + timedelta(seconds=10))
    index.add(moved, "alice", BASE, BASE + timedelta(seconds=20))
    index.add(kept, "alice", BASE, None)
    now = BASE + timedelta(seconds=30)
    assert [job_id for job_id, _ in index.expired(now)] == [doomed, moved]
    index.move_destruction(moved, BASE + timedelta(seconds=20), BASE + timedelta(days=1))
    assert [job_id for job_id, _ in index.expired(now)] == [doomed]
    index.remove(doomed, "alice", BASE, BASE + timedelta(seconds=10))
    assert list(index.expired(now)) == []
    assert {entry.job_id for entry in index.newest("alice")} == {moved, kept}
