"""A job process's stderr: copied to its log in bounded chunks, the last bytes kept for its error.

However long a line (a job may write gigabytes without a newline), the reader holds one
chunk and a tail of ``STDERR_TAIL_BYTES``; the whole stream stays in the job's log result.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import IO

__all__ = [
    "ERROR_MESSAGE_MAX_BYTES",
    "STDERR_TAIL_BYTES",
    "STDERR_TAIL_LINES",
    "StderrTail",
    "cap_message",
    "collect_stderr",
]

STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 4096
READ_CHUNK_BYTES = 64 * 1024
# A job's error_message is at most this long in UTF-8; the full story is in its log result.
ERROR_MESSAGE_MAX_BYTES = 4096
_ELISION = " […] "


class StderrTail:
    """The last lines (at most ``STDERR_TAIL_BYTES``) a process wrote to stderr."""

    def __init__(self) -> None:
        self._tail = bytearray()
        self._notes: list[str] = []
        self.thread: threading.Thread | None = None

    def feed(self, chunk: bytes) -> None:
        """Add bytes read from the stream, keeping only the last ``STDERR_TAIL_BYTES``."""
        self._tail += chunk
        if len(self._tail) > STDERR_TAIL_BYTES:
            del self._tail[: len(self._tail) - STDERR_TAIL_BYTES]

    def note(self, text: str) -> None:
        """Add a line of the job manager's own after what the process wrote."""
        self._notes.append(text)

    def text(self) -> str:
        """The tail as text: its last ``STDERR_TAIL_LINES`` lines, stripped."""
        lines = self._tail.decode("utf-8", "replace").splitlines()[-STDERR_TAIL_LINES:]
        return "\n".join([*lines, *self._notes]).strip()

    def join(self) -> None:
        """Wait until the stream is read to its end."""
        if self.thread is not None:
            self.thread.join()


def collect_stderr(process: subprocess.Popen[bytes], log_file: IO[bytes]) -> StderrTail:
    """Start a thread copying the process's stderr to ``log_file``; its tail."""
    tail = StderrTail()
    stream = process.stderr
    assert stream is not None
    descriptor = stream.fileno()

    def pump() -> None:
        try:
            while chunk := os.read(descriptor, READ_CHUNK_BYTES):
                log_file.write(chunk)
                log_file.flush()
                tail.feed(chunk)
        finally:
            stream.close()

    tail.thread = threading.Thread(target=pump, daemon=True)
    tail.thread.start()
    return tail


def cap_message(message: str, limit: int = ERROR_MESSAGE_MAX_BYTES) -> str:
    """``message`` if it fits in ``limit`` bytes of UTF-8, else its start and end, elided."""
    encoded = message.encode()
    if len(encoded) <= limit:
        return message
    room = limit - len(_ELISION.encode())
    head = encoded[: room // 4].decode("utf-8", "ignore")
    end = encoded[len(encoded) - (room - room // 4) :].decode("utf-8", "ignore")
    return head + _ELISION + end
