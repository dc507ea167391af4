"""The files a job's upload could not keep, tallied within a bound: named, then counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_SKIPPED_LISTED", "SkipTally", "skipped_entries"]

# The manifest names at most this many skipped files and folders; past it, one entry per
# reason says how many more there are (``{"more": n, "reason": ...}``).
MAX_SKIPPED_LISTED = 300


class SkipTally:
    """Skipped result names with their reasons: the first ``limit`` named, the rest counted."""

    def __init__(self, limit: int = MAX_SKIPPED_LISTED) -> None:
        self.limit = limit
        self.named: dict[str, str] = {}
        self.more: Counter[str] = Counter()

    def __len__(self) -> int:
        """Every skipped file and folder, named or counted."""
        return len(self.named) + sum(self.more.values())

    def add(self, name: str, reason: str) -> bool:
        """Tally one; True when it is named (within the bound), False when only counted."""
        if name in self.named or len(self.named) < self.limit:
            self.named[name] = reason
            return True
        self.more[reason] += 1
        return False

    def add_more(self, reason: str, count: int) -> None:
        """Tally ``count`` unnamed ones (a replica's manifest's summary)."""
        if count > 0:
            self.more[reason] += count

    def merged(self, other: SkipTally) -> SkipTally:
        """A new tally within this one's bound: its entries, then ``other``'s."""
        result = SkipTally(self.limit)
        for tally in (self, other):
            for name, reason in tally.named.items():
                result.add(name, reason)
            for reason, count in tally.more.items():
                result.add_more(reason, count)
        return result


def skipped_entries(
    skipped: Mapping[str, str], more: Mapping[str, int] | None = None
) -> list[dict[str, Any]]:
    """The manifest's ``skipped`` list: named entries by name, at most ``MAX_SKIPPED_LISTED``.

    The names past the bound, and the ``more`` already counted, become one
    ``{"more": n, "reason": ...}`` entry per reason, after the named ones.
    """
    counted: Counter[str] = Counter({reason: n for reason, n in (more or {}).items() if n > 0})
    names = sorted(skipped)
    for name in names[MAX_SKIPPED_LISTED:]:
        counted[skipped[name]] += 1
    entries: list[dict[str, Any]] = [
        {"path": name, "reason": skipped[name]} for name in names[:MAX_SKIPPED_LISTED]
    ]
    entries.extend({"more": count, "reason": reason} for reason, count in sorted(counted.items()))
    return entries
