"""waitress's output buffer without its copies: a response's chunks are sent from themselves.

waitress queues every byte the app writes in a ``BytesIO`` (one copy), reads a slice out of
it for each ``send()`` (a second copy), and only then the kernel copies it into the socket.
A download of 1 MiB chunks paid both copies for every byte. ``SendQueueChannel`` keeps the
written ``bytes`` objects themselves and gives ``send()`` views into them; small writes
(headers, small bodies) are still joined, so a small answer leaves in one ``send()`` as
before. Flow control is waitress's own: the app thread waits while more than
``outbuf_high_watermark`` bytes are queued for its client.
"""

from __future__ import annotations

import collections
from typing import Any, cast

from waitress.buffers import ReadOnlyFileBasedBuffer
from waitress.channel import ClientDisconnected, HTTPChannel

__all__ = ["JOIN_BELOW_BYTES", "SendQueue", "SendQueueChannel"]

# Writes queued one after the other are joined (copied) while the result stays below this:
# headers and small bodies go out in one send(), large chunks by reference.
JOIN_BELOW_BYTES = 64 * 1024


class SendQueue:
    """The bytes still to send on one connection, held by reference (waitress's buffer API)."""

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._sent_of_first = 0  # bytes of the first chunk already sent
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def __bool__(self) -> bool:
        return self._length > 0

    def append(self, data: bytes) -> None:
        """Queue ``data`` (copied only when small enough to join, or not immutable)."""
        if not data:
            return
        chunk = data if type(data) is bytes else bytes(data)
        chunks = self._chunks
        if chunks and len(chunks[-1]) + len(chunk) < JOIN_BELOW_BYTES:
            chunks[-1] += chunk
        else:
            chunks.append(chunk)
        self._length += len(chunk)

    def get(self, numbytes: int = -1, skip: bool = False) -> memoryview | bytes:
        """A view of at most ``numbytes`` of the next bytes (from one chunk); ``skip`` consumes."""
        if not self._chunks:
            return b""
        first = self._chunks[0]
        start = self._sent_of_first
        stop = len(first) if numbytes < 0 else min(len(first), start + numbytes)
        view = memoryview(first)[start:stop]
        if skip:
            self.skip(len(view))
        return view

    def skip(self, numbytes: int, allow_prune: bool = False) -> None:
        """Forget the next ``numbytes`` bytes: they were sent."""
        if numbytes > self._length:
            raise ValueError(f"Can't skip {numbytes} bytes in a queue of {self._length}")
        self._length -= numbytes
        chunks = self._chunks
        numbytes += self._sent_of_first
        while chunks and numbytes >= len(chunks[0]):
            numbytes -= len(chunks.popleft())
        self._sent_of_first = numbytes

    def prune(self) -> None:
        """Nothing to do: sent chunks are dropped as they go."""

    def close(self) -> None:
        """Drop what is still queued."""
        self._chunks.clear()
        self._sent_of_first = 0
        self._length = 0


class SendQueueChannel(HTTPChannel):
    """waitress's connection with a ``SendQueue`` as output buffer (waitress 3.0's logic)."""

    def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        cast(Any, self).outbufs = [SendQueue()]

    def write_soon(self, data: Any) -> int:
        """Queue a write (waitress's ``write_soon``, with a ``SendQueue`` for each new buffer)."""
        if not self.connected:
            # A closed socket: interrupt the task so that it cleans up before its app_iter ends.
            raise ClientDisconnected
        if not data:
            return 0
        channel = cast(Any, self)  # waitress's internals, which its stubs do not declare
        outbufs: list[Any] = channel.outbufs
        # The I/O loop may be taking data off the buffers: this task thread may wait here.
        with self.outbuf_lock:
            channel._flush_outbufs_below_high_watermark()
            if not self.connected:
                raise ClientDisconnected
            num_bytes = len(data)
            if isinstance(data, ReadOnlyFileBasedBuffer):  # wsgi.file_wrapper
                outbufs.append(data)
                outbufs.append(SendQueue())
                self.current_outbuf_count = 0
            else:
                if self.current_outbuf_count >= self.adj.outbuf_high_watermark:
                    # A new buffer for each request (waitress's service() asks for one so).
                    outbufs.append(SendQueue())
                    self.current_outbuf_count = 0
                outbufs[-1].append(data)
                self.current_outbuf_count += num_bytes
            self.total_outbufs_len += num_bytes
            if self.total_outbufs_len >= self.adj.send_bytes:
                flushed, exception = channel._flush_exception(channel._flush_some, do_close=False)
                if exception or not flushed or self.total_outbufs_len >= self.adj.send_bytes:
                    self.server.pull_trigger()
        return num_bytes
