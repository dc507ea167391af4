"""The embedded HTTP server: waitress, guarded against clients that would hold it.

On top of waitress's own limits (total connections, idle timeout), the guarded server

- closes a connection whose request headers are not complete within the header timeout
  (counted from the connection, or from the first byte of each later request), however
  slowly they trickle in;
- refuses connections past ``connections_per_client`` from one client address, and gives
  one address at most ``requests_per_client`` threads at once (its other requests wait);
- closes a connection whose response made no progress for the send timeout, which frees
  the thread writing it (a download nobody reads);
- tells the app whether a request's client has hung up
  (``environ[CLIENT_DISCONNECTED_KEY]()``) by peeking at its socket when asked, rather
  than by reading on while every request runs (waitress's ``channel_request_lookahead``,
  which costs every request CPU in the I/O loop).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from .environ import CLIENT_DISCONNECTED_KEY
from .sendqueue import SendQueueChannel

__all__ = ["CLIENT_DISCONNECTED_KEY", "GuardedServer", "ServerLimits", "create_guarded_server"]

log = logging.getLogger(__name__)

# How often the server looks for connections past a deadline (whole seconds, for waitress).
MAINTENANCE_INTERVAL_SECONDS = 1


@dataclass(frozen=True)
class ServerLimits:
    """How long and how many: the embedded server's defences (Settings ``http_*``)."""

    threads: int
    connection_limit: int
    connections_per_client: int
    requests_per_client: int
    header_timeout_seconds: float
    send_timeout_seconds: float
    idle_timeout_seconds: float


class GuardedChannel(SendQueueChannel):
    """A connection that knows since when it has been waiting for request headers.

    Its responses are sent from the chunks the app wrote, without copying them
    (``SendQueueChannel``).
    """

    server: GuardedServer

    def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        # A new connection owes its first request's headers from now.
        self.headers_due_since: float | None = self.creation_time

    def service(self) -> None:
        """Serve one request as waitress does, then let the client's next one in."""
        try:
            super().service()
        finally:
            self.server.request_done(self)

    def check_client_disconnected(self) -> bool:  # type: ignore[override]  # stub says None
        """Whether the client has hung up: its socket reads as closed (nothing is consumed).

        Called from the thread serving the request, while the I/O loop leaves this channel's
        input alone (waitress reads no further request while one runs), so the peek races
        with nothing; a pipelined next request reads as data, not as a hang-up.
        """
        connection = self.socket
        if not self.connected or connection is None:
            return True
        try:
            return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False  # nothing to read: still there
        except OSError:
            return True  # reset, or closed by the server

    def received(self, data: bytes) -> bool:
        """Parse input as waitress does, then note whether headers are still incomplete."""
        now = time.time()
        result = bool(super().received(data))
        request = self.request
        if request is None or request.headers_finished:
            self.headers_due_since = None
        elif self.headers_due_since is None:
            self.headers_due_since = now
        return result


class GuardedServer(TcpWSGIServer):
    """waitress's TCP server with per-client, header and send limits."""

    channel_class = GuardedChannel

    def __init__(self, *args: Any, limits: ServerLimits, **kwargs: Any) -> None:
        self.limits = limits
        self._busy_lock = threading.Lock()
        self._busy: dict[str, int] = {}
        self._held_back: dict[str, collections.deque[Any]] = {}
        super().__init__(*args, **kwargs)

    def add_task(self, task: Any) -> None:
        """Give a request a thread, unless its client address already has its share."""
        host = _host(task)
        with self._busy_lock:
            if self._busy.get(host, 0) >= self.limits.requests_per_client:
                self._held_back.setdefault(host, collections.deque()).append(task)
                return
            self._busy[host] = self._busy.get(host, 0) + 1
        super().add_task(task)

    def request_done(self, channel: Any) -> None:
        """A thread is back: the address's next held-back request (if any) takes it."""
        host = _host(channel)
        following = None
        with self._busy_lock:
            self._busy[host] = self._busy.get(host, 1) - 1
            waiting = self._held_back.get(host)
            if waiting:
                following = waiting.popleft()
                self._busy[host] += 1
                if not waiting:
                    del self._held_back[host]
            elif self._busy[host] <= 0:
                del self._busy[host]
        if following is not None:
            super().add_task(following)

    def _channels(self) -> list[Any]:
        """The open connections (waitress's stubs type them loosely)."""
        return list(cast(dict[int, Any], self.active_channels).values())

    def handle_accept(self) -> None:
        """Accept a connection unless its address already holds its share."""
        try:
            accepted = self.accept()
            if accepted is None:
                return
            connection, address = accepted
            self.set_socket_options(connection)  # TCP_NODELAY, as waitress's own
        except OSError:
            return
        address = self.fix_addr(address)
        host = address[0] if isinstance(address, tuple) else str(address)
        held = sum(1 for channel in self._channels() if _host(channel) == host)
        if held >= self.limits.connections_per_client:
            log.debug("refused a connection from %s: it holds %d", host, held)
            _close_quietly(connection)
            return
        self.channel_class(self, connection, address, self.adj, map=cast(Any, self)._map)

    def maintenance(self, now: float) -> None:
        """Close idle connections (waitress), and those past the header or send deadline."""
        super().maintenance(cast(Any, now))
        for channel in self._channels():
            due = getattr(channel, "headers_due_since", None)
            if due is not None and now - due > self.limits.header_timeout_seconds:
                channel.will_close = True
            elif (
                channel.requests
                and channel.total_outbufs_len
                and now - channel.last_activity > self.limits.send_timeout_seconds
            ):
                # Closed here, not flagged: a socket that cannot take data is never
                # writable, so waitress would never act on ``will_close``. Closing wakes the
                # thread writing the response (ClientDisconnected).
                channel.handle_close()


def _host(channel: Any) -> str:
    address = getattr(channel, "addr", None)
    return address[0] if isinstance(address, tuple) else str(address)


def _close_quietly(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.close()


def create_guarded_server(
    app: Callable[..., Any], listening: socket.socket, limits: ServerLimits, **adjustments: Any
) -> GuardedServer:
    """A guarded server on an already bound socket; ``adjustments`` go to waitress as they are."""
    adj = Adjustments(
        sockets=[listening],
        threads=limits.threads,
        connection_limit=limits.connection_limit,
        channel_timeout=max(1, round(limits.idle_timeout_seconds)),
        cleanup_interval=MAINTENANCE_INTERVAL_SECONDS,
        **adjustments,
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(limits.threads)
    family, kind, proto = listening.family, listening.type, listening.proto
    return GuardedServer(
        app,
        {},
        True,
        listening,
        dispatcher=dispatcher,
        adj=adj,
        bind_socket=False,
        sockinfo=(family, kind, proto, listening.getsockname()),
        limits=limits,
    )
