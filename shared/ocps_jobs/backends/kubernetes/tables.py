"""The watched copy's tables: packed objects by job id, compacted together into one block.

Each watch event replaces one packed object (a ``bytes``) and, for a new job, adds one key.
Made one by one while lists and events parse megabytes of temporary objects, these
long-lived pieces end up scattered across the allocators' pages and arenas, each keeping
its page or its 1 MiB ``pymalloc`` arena mapped once the temporaries are gone.
``compact_tables`` gathers the tables' every object into one block of its own and gives
each table fresh keys, made together: the old pieces and what they kept mapped are freed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .views import PodView, newer, pack, unpack, unpack_list

__all__ = ["Packed", "PackedTable", "compact_tables", "pods_after"]

# A packed object: its own ``bytes``, or a slice of a compacted table's block.
Packed = bytes | memoryview


def _own(text: str) -> str:
    """A copy of ``text`` of its own, made now (not a reference to a parsed object's)."""
    return text.encode().decode()


# Where a compacted object is in its table's block: ``offset << _SIZE_BITS | size``, one
# small int (32 bytes) where a memoryview of the slice would take 184.
_SIZE_BITS = 32
_SIZE_MASK = (1 << _SIZE_BITS) - 1


class PackedTable:
    """Packed objects by job id, counting the changes made since the last compaction.

    An object changed since then is its own ``bytes``; a compacted one, its place in the
    table's block. Every accessor gives back the packed object (a slice of the block).
    """

    __slots__ = ("_block", "changes", "entries")

    def __init__(self, entries: dict[str, Packed] | None = None) -> None:
        self.entries: dict[str, Packed | int] = dict(entries or {})
        self._block = b""
        self.changes = len(self.entries)

    def _packed(self, kept: Packed | int) -> Packed:
        if isinstance(kept, int):
            offset = kept >> _SIZE_BITS
            return memoryview(self._block)[offset : offset + (kept & _SIZE_MASK)]
        return kept

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __getitem__(self, key: str) -> Packed:
        return self._packed(self.entries[key])

    def get(self, key: str) -> Packed | None:
        """The packed object of ``key``, or None."""
        kept = self.entries.get(key)
        return None if kept is None else self._packed(kept)

    def put(self, key: str, packed: bytes) -> None:
        """Set the packed object of ``key`` (a new key is copied: see ``_own``)."""
        self.entries[key if key in self.entries else _own(key)] = packed
        self.changes += 1

    def pop(self, key: str) -> None:
        """Remove ``key`` when present."""
        if self.entries.pop(key, None) is not None:
            self.changes += 1

    def values(self) -> list[Packed]:
        """Every packed object, in a list of its own."""
        return [self._packed(kept) for kept in self.entries.values()]

    def items(self) -> dict[str, Packed]:
        """A copy of the table, every object packed."""
        return {key: self._packed(kept) for key, kept in self.entries.items()}


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
        packed = table.items()
        block = b"".join(packed.values())
        compacted: dict[str, Packed | int] = {}
        offset = 0
        for key, value in packed.items():
            size = len(value)
            compacted[keys[key]] = offset << _SIZE_BITS | size
            offset += size
        del packed
        table.entries, table._block = compacted, block
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
