"""The time-ordered index of archived jobs in the object store: history without a database.

Each archived job has empty marker objects whose keys alone carry the order:

- ``history/all/<sort key>`` and ``history/owners/<owner digest>/<sort key>``, where the
  sort key grows as creation time falls (newest first in key order, as S3 lists), then
  as the job id falls: a listing from a cursor is one ``list_objects_v2`` call with
  ``StartAfter``, whatever the number of jobs kept;
- ``history/destruction/<epoch seconds>-<job id>``, oldest destruction first, for the
  sweep of jobs past their destruction time whose Kubernetes Job is gone.

Stdlib only: the uploader writes these entries beside job.json, the backend lists them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .base import ObjectStore

__all__ = [
    "HISTORY_ROOT",
    "SORT_KEY_PATTERN",
    "HistoryEntry",
    "HistoryIndex",
    "is_sort_key",
    "place_of",
    "sort_key",
]

HISTORY_ROOT = "history/"
_ALL = HISTORY_ROOT + "all/"
_OWNERS = HISTORY_ROOT + "owners/"
_DESTRUCTION = HISTORY_ROOT + "destruction/"
_MICROSECONDS_DIGITS = 17  # creation time in microseconds since 1970, inverted, zero-padded
_LATEST = 10**_MICROSECONDS_DIGITS - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INVERT_HEX = str.maketrans("0123456789abcdef", "fedcba9876543210")
# A sort key, which is also the cursor a list page returns.
SORT_KEY_PATTERN = rf"^[0-9]{{{_MICROSECONDS_DIGITS}}}-[0-9a-f]{{32}}$"
_SORT_KEY = re.compile(SORT_KEY_PATTERN)


def sort_key(creation_time: datetime, job_id: str) -> str:
    """The job's place in every list: ascending keys are newest first (ties: higher id first).

    Exactly the reverse of ordering by (creation time, job id), so that a list built from
    live Jobs and one read from the index interleave into one order.
    """
    moment = creation_time if creation_time.tzinfo else creation_time.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return f"{_LATEST - micros:0{_MICROSECONDS_DIGITS}d}-{job_id.translate(_INVERT_HEX)}"


def place_of(key: str) -> tuple[datetime, str]:
    """The (creation time, job id) a sort key stands for: ascending keys, descending places."""
    micros, _, inverted = key.partition("-")
    created = _EPOCH + timedelta(microseconds=_LATEST - int(micros))
    return created, inverted.translate(_INVERT_HEX)


def is_sort_key(text: str) -> bool:
    """True for a well-formed sort key (a list cursor names the last job it returned)."""
    return bool(_SORT_KEY.fullmatch(text))


def _owner_prefix(owner: str) -> str:
    return f"{_OWNERS}{hashlib.sha256(owner.encode()).hexdigest()[:40]}/"


@dataclass(frozen=True)
class HistoryEntry:
    """What the index knows of one archived job: its sort key, creation time and id."""

    sort_key: str
    creation_time: datetime
    job_id: str


class HistoryIndex:
    """Writes, lists and removes the history entries of archived jobs in one store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def _keys(
        job_id: str, owner: str, creation_time: datetime, destruction: datetime | None
    ) -> list[str]:
        place = sort_key(creation_time, job_id)
        keys = [_ALL + place, _owner_prefix(owner) + place]
        if destruction is not None:
            keys.append(f"{_DESTRUCTION}{int(destruction.timestamp()):012d}-{job_id}")
        return keys

    def add(
        self, job_id: str, owner: str, creation_time: datetime, destruction: datetime | None
    ) -> None:
        """Index an archived job (idempotent: the entries are empty markers)."""
        for key in self._keys(job_id, owner, creation_time, destruction):
            self.store.put_bytes(key, b"", "application/octet-stream")

    def remove(
        self, job_id: str, owner: str, creation_time: datetime, destruction: datetime | None
    ) -> None:
        """Drop a job's entries (a destroyed job, or an old destruction time)."""
        for key in self._keys(job_id, owner, creation_time, destruction):
            self.store.delete_prefix(key)

    def move_destruction(self, job_id: str, old: datetime | None, new: datetime | None) -> None:
        """The job's destruction time changed: its sweep entry moves with it."""
        if old == new:
            return
        if old is not None:
            self.store.delete_prefix(f"{_DESTRUCTION}{int(old.timestamp()):012d}-{job_id}")
        if new is not None:
            key = f"{_DESTRUCTION}{int(new.timestamp()):012d}-{job_id}"
            self.store.put_bytes(key, b"", "application/octet-stream")

    def newest(
        self, owner: str | None, after: str = "", page_size: int = 100
    ) -> Iterator[HistoryEntry]:
        """Entries newest first (of ``owner`` when given), after the sort key ``after``.

        Read one listing page at a time, as the caller consumes them: memory holds one
        page, not the history.
        """
        prefix = _ALL if owner is None else _owner_prefix(owner)
        start = prefix + after if after else ""
        page_size = max(1, min(page_size, 1000))
        while True:
            keys = self.store.list_keys(prefix, start, page_size)
            for key in keys:
                place = key.removeprefix(prefix)
                if is_sort_key(place):
                    yield HistoryEntry(place, *place_of(place))
            if len(keys) < page_size:
                return
            start = keys[-1]

    def drop(self, key: str) -> None:
        """Remove one entry (a sweep entry left by a job that is already gone)."""
        self.store.delete_prefix(key)

    def expired(self, now: datetime) -> Iterator[tuple[str, str]]:
        """(job id, entry key) of indexed jobs whose destruction time has come, oldest first."""
        limit = int(now.timestamp())
        start = ""
        while True:
            keys = self.store.list_keys(_DESTRUCTION, start, 1000)
            for key in keys:
                seconds, _, job_id = key.removeprefix(_DESTRUCTION).partition("-")
                if not seconds.isdigit() or int(seconds) > limit:
                    return
                yield job_id, key
            if len(keys) < 1000:
                return
            start = keys[-1]
