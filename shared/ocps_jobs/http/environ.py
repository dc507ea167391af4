"""WSGI environ keys the embedded server provides and the handlers read, declared once."""

from __future__ import annotations

__all__ = ["CLIENT_DISCONNECTED_KEY"]

# A callable telling whether the request's client has gone (waitress puts it there; the
# guarded server answers it by looking at the socket). Absent under other servers.
CLIENT_DISCONNECTED_KEY = "waitress.client_disconnected"
