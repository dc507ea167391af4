"""Fault injection for tests: a loopback TCP proxy that can be cut and restored on its port,
and an S3 endpoint that answers every request 503 SlowDown, as a saturated MinIO does.

The proxy sits between a client (the sidecar) and a real server (moto's S3 endpoint). The
test can cut it (the listening socket closes, so new connections are refused, and every
open connection is reset) and restore it on the same port, or have it cut itself once a
given number of bytes has gone upstream, so the cut lands in the middle of an upload.
Everything stays on 127.0.0.1; connections and threads are bounded.
"""

from __future__ import annotations

import contextlib
import http.server
import selectors
import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["SlowDownS3", "TcpProxy"]

_CHUNK = 64 * 1024
_POLL = 0.05


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN: the peer sees a dropped connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``; ``cut()`` and ``restore()`` it at will."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        max_connections: int = 64,
        upstream_rate: float | None = None,
    ) -> None:
        if upstream[0] not in ("127.0.0.1", "localhost"):
            raise ValueError("the proxy only forwards to loopback")
        self.upstream = upstream
        self.max_connections = max_connections
        self.upstream_rate = upstream_rate  # bytes per second per connection, None = unlimited
        self.port = 0
        self.bytes_up = 0  # bytes forwarded client -> server, over the proxy's life
        self.connections = 0  # connections accepted, over the proxy's life
        self.cuts = 0
        self.went_down = threading.Event()
        self._lock = threading.Lock()
        self._epoch = 0  # bumped by every cut: threads of an older epoch drop their sockets
        self._up = False
        self._cut_after: int | None = None
        self._acceptor: threading.Thread | None = None
        self._pumps: set[threading.Thread] = set()

    # --- control ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        """True while the proxy accepts and forwards connections."""
        return self._up

    def start(self) -> TcpProxy:
        """Listen (on a free port the first time, on the same port after a cut) and forward."""
        self._join_stale()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        with self._lock:
            self._up = True
            self.went_down.clear()
            epoch = self._epoch
        self._acceptor = threading.Thread(
            target=self._accept_loop, args=(listener, epoch), name="proxy-accept", daemon=True
        )
        self._acceptor.start()
        return self

    restore = start

    def cut(self) -> None:
        """Refuse new connections and reset the open ones; returns once they are gone."""
        self._trigger_cut()
        self._join_stale()

    def cut_after(self, upstream_bytes: int) -> threading.Event:
        """Cut by itself once ``upstream_bytes`` more bytes have gone upstream."""
        with self._lock:
            self._cut_after = self.bytes_up + upstream_bytes
        return self.went_down

    def close(self) -> None:
        """Stop for good (same as a cut)."""
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------------

    def _trigger_cut(self) -> None:
        with self._lock:
            if not self._up:
                return
            self._up = False
            self._epoch += 1
            self._cut_after = None
            self.cuts += 1
        self.went_down.set()

    def _join_stale(self, timeout: float = 10.0) -> None:
        """Wait for the threads of past epochs: the acceptor first, as it is what adds pumps."""
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        if self._acceptor is not None and self._acceptor is not me:
            self._acceptor.join(timeout)
            if self._acceptor.is_alive():
                raise RuntimeError("proxy acceptor did not stop")
        with self._lock:
            pumps, self._pumps = self._pumps, set()
        for pump in pumps:
            if pump is not me:
                pump.join(max(0.0, deadline - time.monotonic()))
                if pump.is_alive():
                    raise RuntimeError("proxy connection thread did not stop")

    def _current(self, epoch: int) -> bool:
        return self._up and self._epoch == epoch

    def _accept_loop(self, listener: socket.socket, epoch: int) -> None:
        with listener, selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            while self._current(epoch):
                if not selector.select(_POLL):
                    continue
                try:
                    client, _address = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                with self._lock:
                    self._pumps = {t for t in self._pumps if t.is_alive()}
                    full = len(self._pumps) >= self.max_connections
                    current = self._epoch == epoch
                if full or not current:
                    _reset(client)
                    continue
                try:
                    server = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    _reset(client)
                    continue
                self.connections += 1
                pump = threading.Thread(
                    target=self._pump, args=(client, server, epoch), name="proxy-pump", daemon=True
                )
                with self._lock:
                    self._pumps.add(pump)
                pump.start()

    def _pump(self, client: socket.socket, server: socket.socket, epoch: int) -> None:
        for sock in (client, server):
            sock.settimeout(10)  # bounds sendall() to a peer that stopped reading
        peers = {client: server, server: client}
        dropped = False
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(client, selectors.EVENT_READ)
                selector.register(server, selectors.EVENT_READ)
                while True:
                    if not self._current(epoch):
                        dropped = True
                        return
                    for key, _events in selector.select(_POLL):
                        source: socket.socket = key.fileobj  # type: ignore[assignment]
                        data = source.recv(_CHUNK)
                        if not data:
                            return  # one side closed: close both, gracefully
                        if source is client:
                            self._throttle(len(data))
                            if not self._current(epoch):
                                dropped = True
                                return
                        peers[source].sendall(data)
                        if source is client:
                            self._count_up(len(data))
        except OSError:
            dropped = True
        finally:
            for sock in (client, server):
                if dropped:
                    _reset(sock)
                else:
                    sock.close()

    def _throttle(self, size: int) -> None:
        if self.upstream_rate:
            time.sleep(size / self.upstream_rate)

    def _count_up(self, size: int) -> None:
        with self._lock:
            self.bytes_up += size
            limit = self._cut_after
        if limit is not None and self.bytes_up >= limit:
            self._trigger_cut()


class _SlowDownHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue" at once
    BODY = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )

    def _answer(self) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.BODY)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class SlowDownS3:
    """An HTTP endpoint on loopback answering every S3 request ``503 SlowDown``."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowDownHandler)
        self.server.requests = 0  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def requests(self) -> int:
        return int(self.server.requests)  # type: ignore[attr-defined]

    def __enter__(self) -> SlowDownS3:
        self.thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
