"""The access line and request metrics of every request, and its request id.

``answer_logged`` wraps a dispatcher: it takes the request id from ``X-Request-Id`` or
``traceparent`` (a new one otherwise), sends it back, and once the answer is known (for a
streamed download, once it has been sent) logs one access line and counts the request.
Handlers and use cases add what only they know through ``note_request``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from flask import Request, Response

from . import metrics
from .context import RequestNotes, note_request, request_notes
from .logs import request_id_scope

__all__ = ["REQUEST_ID_HEADER", "answer_logged", "note_request", "request_id_of"]

log = logging.getLogger("ocps_jobs.access")

REQUEST_ID_HEADER = "X-Request-Id"
UNMATCHED_ROUTE = "unmatched"  # the route label of a request no route took (bounded labels)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@+=-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def request_id_of(request: Request) -> str:
    """The client's ``X-Request-Id``, else the trace id of its ``traceparent``, else a new id."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if _REQUEST_ID.fullmatch(given):
        return given
    trace = _TRACEPARENT.fullmatch(request.headers.get("traceparent", "").strip())
    if trace is not None and trace.group(1) != "0" * 32:
        return trace.group(1)
    return uuid.uuid4().hex


def answer_logged(
    function: str, request: Request, answer: Callable[[Request], Response]
) -> Response:
    """``answer(request)``, with the request id, one access line and the request metrics."""
    started = time.perf_counter()
    request_id = request_id_of(request)
    with request_notes() as notes, request_id_scope(request_id):
        response = answer(request)
    response.headers[REQUEST_ID_HEADER] = request_id
    first_byte = time.perf_counter() - started
    status, length = response.status_code, response.content_length

    def finish() -> None:
        # Not the response itself: held by its own close callbacks, it would be a cycle
        # that keeps an unread download's open file until the garbage collector runs.
        _record(function, request, status, length, notes, request_id, started, first_byte)

    if response.is_streamed:
        response.call_on_close(finish)
    else:
        finish()
    return response


def _record(
    function: str,
    request: Request,
    status: int,
    length: int | None,
    notes: RequestNotes,
    request_id: str,
    started: float,
    first_byte: float,
) -> None:
    route = notes.route or UNMATCHED_ROUTE
    metrics.HTTP_REQUESTS.labels(function, route, request.method, str(status)).inc()
    metrics.HTTP_REQUEST_SECONDS.labels(function, route, request.method).observe(first_byte)
    if status == 500:
        level = logging.ERROR
    elif status in (401, 403) or status >= 500:
        level = logging.WARNING
    else:
        level = logging.INFO
    if not log.isEnabledFor(level):
        return
    fields = {
        "request_id": request_id,
        "function": function,
        "method": request.method,
        "path": request.path[:1000],
        "route": route,
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "bytes": length,
        "user": notes.user or None,  # None: anonymous
        "job_id": notes.job_id,
        "remote_addr": request.remote_addr,
        "user_agent": request.headers.get("User-Agent", "")[:300] or None,
    }
    log.log(level, "%s %s %d", request.method, fields["path"], status, extra=fields)
