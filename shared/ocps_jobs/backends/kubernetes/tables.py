"""The watched copy's tables: packed objects by job id, compacted together into one block.

Each watch event replaces one packed object (a ``bytes``) and, for a new job, adds one key.
Made one by one while lists and events parse megabytes of temporary objects, these
long-lived pieces end up scattered across the allocators' pages and arenas, each keeping
its page or its 1 MiB ``pymalloc`` arena mapped once the temporaries are gone.
``compact_tables`` gathers the tables' every object into one block of its own and gives
each table fresh keys, made together: the old pieces and what they kept mapped are freed.

Each object is kept deflated with a preset dictionary, its table's *model*: the first
object the table was given. One job's Job or Pods differ from another's in a few ids and
times, so each is kept in a tenth of its JSON's size, and read back in microseconds.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .views import PodView, newer, pack, unpack, unpack_list

__all__ = ["Packed", "PackedTable", "TableCopy", "compact_tables", "pods_after"]

# A packed object: its own ``bytes``, or a slice of a compacted table's block.
Packed = bytes | memoryview


# zlib's level: smaller than its fastest (1) by a fifth with a dictionary, as fast.
_LEVEL = 6


def _deflate(packed: bytes, model: bytes) -> bytes:
    compressor = zlib.compressobj(_LEVEL, zdict=model)
    return compressor.compress(packed) + compressor.flush()


def _inflate(kept: Packed, model: bytes) -> bytes:
    return zlib.decompressobj(zdict=model).decompress(kept)


@dataclass(frozen=True)
class TableCopy:
    """A table's objects at one moment, as kept; ``get`` and ``read`` give them back packed."""

    entries: dict[str, Packed]
    model: bytes

    def read(self, kept: Packed) -> bytes:
        """One of ``entries``' values as the packed object it was given as."""
        return _inflate(kept, self.model)

    def get(self, key: str) -> bytes | None:
        """The packed object of ``key``, or None."""
        kept = self.entries.get(key)
        return None if kept is None else _inflate(kept, self.model)


def _own(text: str) -> str:
    """A copy of ``text`` of its own, made now (not a reference to a parsed object's)."""
    return text.encode().decode()


class PackedTable:
    """Packed objects by job id, kept deflated, counting the changes since the last compaction.

    ``entries`` holds them as kept; ``get`` and ``copy`` give them back.
    """

    __slots__ = ("changes", "entries", "model")

    def __init__(self, packed: dict[str, bytes] | None = None) -> None:
        packed = packed or {}
        self.model: bytes = next(iter(packed.values()), b"")
        self.entries: dict[str, Packed] = {
            key: _deflate(value, self.model) for key, value in packed.items()
        }
        self.changes = len(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def get(self, key: str) -> bytes | None:
        """The packed object of ``key``, or None."""
        kept = self.entries.get(key)
        return None if kept is None else _inflate(kept, self.model)

    def put(self, key: str, packed: bytes) -> None:
        """Set the packed object of ``key`` (a new key is copied: see ``_own``)."""
        if not self.model:
            self.model = packed  # the first object of an empty table
        self.entries[key if key in self.entries else _own(key)] = _deflate(packed, self.model)
        self.changes += 1

    def pop(self, key: str) -> None:
        """Remove ``key`` when present."""
        if self.entries.pop(key, None) is not None:
            self.changes += 1

    def copy(self) -> TableCopy:
        """The table as it is now, for reading outside the lock that guards it."""
        return TableCopy(dict(self.entries), self.model)


def compact_tables(tables: Iterable[PackedTable]) -> None:
    """Move every table's objects into one block per table, under fresh shared keys.

    Copies each object once (milliseconds for thousands of jobs); the keys of one job are
    one string across the tables. The caller holds whatever lock guards the tables.
    """
    tables = list(tables)
    keys: dict[str, str] = {}
    for table in tables:
        for key in table.entries:
            if key not in keys:
                keys[key] = _own(key)
    for table in tables:
        block = memoryview(b"".join(table.entries.values()))
        compacted: dict[str, Packed] = {}
        offset = 0
        for key, packed in table.entries.items():
            size = len(packed)
            compacted[keys[key]] = block[offset : offset + size]
            offset += size
        table.entries = compacted
        table.changes = 0


def pods_after(
    current: Packed | None, name: str, packed: bytes | None
) -> tuple[bool, bytes | None]:
    """A job's packed Pods after a change to its Pod ``name`` (``packed``; None: deleted).

    Whether they changed (an older version of a Pod changes nothing), and the new packed
    list, None when no Pod is left.
    """
    pods = unpack_list(current) if current is not None else []
    index = next((i for i, pod in enumerate(pods) if PodView(pod).name == name), None)
    if packed is None:
        if index is None:
            return False, None
        del pods[index]
        return True, pack(pods) if pods else None
    pod = unpack(packed)
    if index is None:
        pods.append(pod)
    elif newer(pod, pods[index]):
        pods[index] = pod
    else:
        return False, None
    return True, pack(pods)
