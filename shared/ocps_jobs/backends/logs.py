"""A job's log as lines per stream (one stream per replica), read live or from stored bytes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FOLLOW_POLL_SECONDS", "LogLine", "follow_file", "split_lines", "whole_lines"]

# How often a followed log file is checked for new bytes.
FOLLOW_POLL_SECONDS = 0.2
_READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class LogLine:
    """One line of a job's log: its stream (the replica index, 0 for one pod) and its text.

    ``text`` ends with its newline, except the last line of a log that does not end in one.
    """

    stream: int
    text: str


def split_lines(chunks: Iterable[bytes], stream: int = 0) -> Iterator[LogLine]:
    """The lines of a byte stream, decoded as UTF-8 (undecodable bytes replaced)."""
    return whole_lines(chunks, stream, lambda: True)


def follow_file(
    path: Path, finished: Callable[[], bool], until: float | None, stream: int = 0
) -> Iterator[LogLine]:
    """The lines of a file that another process appends to, as they are written.

    Without ``until`` the file as it is now; with it, new lines until ``finished()`` is true
    (then the rest of the file) or the monotonic time ``until`` passes. A file that does
    not exist yet is waited for the same way.
    """
    ended = [False]  # the log is complete: its unfinished last line may go out too

    def chunks() -> Iterator[bytes]:
        handle = None
        try:
            while True:
                if handle is None:
                    try:
                        handle = open(path, "rb")  # noqa: SIM115 (closed in finally)
                    except FileNotFoundError:
                        handle = None
                if handle is not None:
                    data = handle.read(_READ_SIZE)
                    if data:
                        yield data
                        continue
                if until is None:
                    ended[0] = True
                    return
                # Nothing new: once the job has ended, the file is complete (read it out).
                if finished():
                    if handle is not None:
                        yield handle.read()
                    ended[0] = True
                    return
                if time.monotonic() >= until:
                    return
                time.sleep(FOLLOW_POLL_SECONDS)
        finally:
            if handle is not None:
                handle.close()

    return whole_lines(chunks(), stream, lambda: ended[0])


def whole_lines(
    chunks: Iterable[bytes], stream: int, complete: Callable[[], bool]
) -> Iterator[LogLine]:
    """``split_lines``, except that an unfinished last line is kept back unless ``complete()``.

    A follow cut by its deadline must not send half a line: a reconnection counts lines.
    """
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield LogLine(stream, line.decode("utf-8", "replace") + "\n")
    if pending and complete():
        yield LogLine(stream, pending.decode("utf-8", "replace"))
