"""The C allocator's side of a long-lived serving process: fewer arenas, free pages returned.

glibc's ``malloc`` gives each thread that allocates under contention an arena of its own
(up to eight per core), and keeps what is freed in each. A server answering lists of
thousands of jobs on hundreds of threads thus holds many times the memory its watched copy
needs. Its threshold for giving a large block its own mapping also rises to the size of
each such block freed, so that the megabytes of every later list page or response come
from the arenas and leave holes there. Both calls do nothing on another C library.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["MALLOC_ARENAS", "MMAP_THRESHOLD", "limit_malloc_arenas", "release_free_memory"]

MALLOC_ARENAS = 2
# Blocks of at least this many bytes get a mapping of their own, unmapped when freed.
MMAP_THRESHOLD = 256 * 1024
_M_ARENA_MAX = -8  # mallopt's parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


@functools.cache
def _libc() -> Any:
    # Imported here, not with the module: ctypes and ctypes.util (which imports subprocess)
    # cost a function's cold start about 5 ms, and most processes never release memory.
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim, libc.mallopt  # noqa: B018 (both are glibc's)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """At most ``arenas`` malloc arenas from now on, and a fixed ``MMAP_THRESHOLD``."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_free_memory() -> None:
    """Give the C allocator's free pages back to the system (glibc's ``malloc_trim``).

    A listing parses hundreds of MB of pages that are freed once packed, and a long list
    renders as much; glibc keeps most of that memory mapped, scattered between the few
    objects that stay, unless asked. Costs milliseconds.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
