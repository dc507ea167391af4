"""Handlers of the operator's web view: the jobs table at ``/``, one job's page, and abort.

Server-rendered HTML (autoescaped templates shipped in the package) that reads without
JavaScript; a small script shipped beside it long-polls for changes and sends aborts.
Every page goes through the same authentication and owner checks as the API: it calls
the same service methods with the same caller.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Response

from ..errors import InvalidRequestError, JobNotFoundError, OCPSError, RouteNotFoundError
from ..models import FINAL_PHASES, JobRecord, LogQuery, Phase
from ..objectstore.history import sort_key
from ..service import ListQuery
from ..transitions import WAITABLE_PHASES
from .json_api import API
from .logs import LOG_ROUTES
from .routing import Context
from .web_routes import WEB
from .webpages import (
    JOBS_PER_PAGE,
    LOG_TAIL_BYTES,
    LOG_TAIL_LINES,
    JobFilters,
    duration_text,
    fingerprint,
    job_row,
    log_result,
    render_page,
    result_rows,
    time_text,
)

__all__ = [
    "ABORT_HEADER",
    "WEB",
    "abort_job",
    "job_changes",
    "job_page",
    "jobs_changes",
    "jobs_page",
    "log_follow_url",
    "static_file",
]

# A cross-site form or link cannot send a custom header; a cross-origin script must ask
# first (CORS preflight), which the service does not grant for it: the abort of a page.
ABORT_HEADER = "X-OCPS-Web-Action"
# The longest a long poll is held open (capped by wait_max_seconds); a new job appears
# on the next look, at most RECHECK_SECONDS later (a running one's change wakes it at once).
LONG_POLL_SECONDS = 25.0
RECHECK_SECONDS = 1.0

_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "private, no-store",
}


def _html(body: str, status: int = 200) -> Response:
    response = Response(body, status=status, mimetype="text/html")
    response.headers.update(_SECURITY_HEADERS)
    return response


def _json(data: Any, status: int = 200) -> Response:
    response = Response(json.dumps(data), status=status, mimetype="application/json")
    response.headers.update(_SECURITY_HEADERS)
    return response


def _now() -> datetime:
    return datetime.now(UTC)


def _error_page(ctx: Context, error: OCPSError) -> Response:
    return _html(
        render_page("error.html", status=error.status, message=error.message, caller=ctx.caller),
        error.status,
    )


# --- the jobs table ------------------------------------------------------------------------


def _filters(ctx: Context) -> JobFilters:
    """The table's filters from the query string; 400 for a malformed one."""
    args = ctx.request.args
    phase = None
    if args.get("phase"):
        try:
            phase = Phase(args["phase"].lower())
        except ValueError:
            raise InvalidRequestError(f"Unknown phase {args['phase'][:40]!r}") from None
    created_after = None
    if args.get("created_after"):
        try:
            created_after = datetime.fromisoformat(args["created_after"])
        except ValueError:
            raise InvalidRequestError(
                "created_after must be a time such as 2026-03-17T20:58"
            ) from None
        if created_after.tzinfo is None:
            created_after = created_after.replace(tzinfo=UTC)  # the form says UTC
    return JobFilters(
        phase=phase,
        run_id=args.get("run_id", "")[:255],
        created_after=created_after,
        cursor=args.get("cursor", "")[:80],
    )


def _page_of_jobs(ctx: Context, filters: JobFilters) -> tuple[list[JobRecord], str | None]:
    """One page of the table, newest first, from the service's own pages: never the whole list.

    The run id filter (a substring) is not one the service knows: pages are read on until
    enough jobs match, or the list ends. The cursor names the last job shown.
    """
    query = ListQuery(
        phases=frozenset({filters.phase}) if filters.phase else None,
        after=filters.created_after,
        limit=JOBS_PER_PAGE,
        cursor=filters.cursor or None,
    )
    page = ctx.service.list_page(ctx.caller, query)
    if not filters.run_id:
        return page.records, page.next_cursor
    shown = [record for record in page.records if filters.matches(record)]
    while len(shown) <= JOBS_PER_PAGE and page.next_cursor is not None:
        page = ctx.service.list_page(ctx.caller, replace(query, cursor=page.next_cursor))
        shown += [record for record in page.records if filters.matches(record)]
    if len(shown) <= JOBS_PER_PAGE:
        return shown, None
    shown = shown[:JOBS_PER_PAGE]
    return shown, sort_key(shown[-1].creation_time, shown[-1].job_id)


def _table(ctx: Context, filters: JobFilters) -> dict[str, Any]:
    """The values of one page of the table: newest first, filtered."""
    shown, next_cursor = _page_of_jobs(ctx, filters)
    now = _now()
    rows = [job_row(record, now) for record in shown]
    return {
        "rows": rows,
        "active": [r for r in shown if r.phase in WAITABLE_PHASES],
        "count": len(rows),
        "next_cursor": next_cursor,
        "filters": filters,
        "fingerprint": fingerprint(rows, next_cursor is not None),
        "phases": list(Phase),
        "web": WEB,
    }


def jobs_page(ctx: Context) -> Response:
    """``GET /``: the jobs the caller may see, newest first, with filters and pages."""
    try:
        table = _table(ctx, _filters(ctx))
    except OCPSError as error:
        return _error_page(ctx, error)
    return _html(render_page("jobs.html", caller=ctx.caller, **table))


def _wait_while_running(ctx: Context, record: JobRecord, seconds: float) -> None:
    """Sleep until this job changes phase (woken by the backend's watch), or ``seconds``."""
    try:
        ctx.service.wait_for_job(record.job_id, ctx.caller, seconds, phase=record.phase)
    except JobNotFoundError:
        return


def jobs_changes(ctx: Context) -> Response:
    """``GET /web/jobs/changes?since=<fingerprint>``: long poll for the table's next state.

    Answers at once when the table differs from ``since``; else holds the request until
    it does (200 with the new rows) or the poll's time is up (204).
    """
    filters = _filters(ctx)
    since = ctx.request.args.get("since", "")
    seconds = min(LONG_POLL_SECONDS, float(ctx.settings.wait_max_seconds))
    with ctx.service.held_request() as held:  # none free: the state now, at once
        deadline = time.monotonic() + (seconds if held else 0)
        while True:
            table = _table(ctx, filters)
            if table["fingerprint"] != since:
                html = render_page("job_rows.html", **table)
                return _json(
                    {"fingerprint": table["fingerprint"], "html": html, "count": table["count"]}
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Response(status=204)
            step = min(remaining, RECHECK_SECONDS)
            if table["active"]:
                _wait_while_running(ctx, table["active"][0], step)
            else:
                time.sleep(step)


# --- one job -------------------------------------------------------------------------------


def _log_tail(ctx: Context, record: JobRecord, results: list[Any]) -> tuple[str, bool] | None:
    """The last LOG_TAIL_BYTES of the job's log result, and whether it was cut; or None."""
    log = log_result(record.job_id, results)
    if log is None:
        return None
    start = max(0, log.size - LOG_TAIL_BYTES)
    try:
        stream = ctx.service.open_result(log, start, None)
    except OCPSError:
        return None
    try:
        data = b"".join(stream.chunks)
    finally:
        stream.close()
    text = data.decode("utf-8", "replace")
    if start > 0:
        text = text.partition("\n")[2]  # from the first whole line
    return text, start > 0


def _live_log_tail(ctx: Context, record: JobRecord) -> tuple[str, bool] | None:
    """A running job's log so far (its last lines, at most LOG_TAIL_BYTES), and whether cut."""
    try:
        log = ctx.service.job_log(record.job_id, ctx.caller, LogQuery(tail=LOG_TAIL_LINES))
        kept: deque[str] = deque()
        size, cut = 0, any(log.skipped)
        for line in log.lines:
            kept.append(line)
            size += len(line.encode())
            while size > LOG_TAIL_BYTES and kept:
                size -= len(kept.popleft().encode())
                cut = True
    except OCPSError:
        return None
    return "".join(kept), cut


def log_follow_url(job_id: str) -> str:
    """Where the page's script follows a running job's log: its tail, then as it grows."""
    path = LOG_ROUTES[0].template.format(job_id=job_id)
    return f"{path}?{urlencode(LogQuery(tail=LOG_TAIL_LINES, follow=True).query_parameters())}"


def _job_values(ctx: Context, record: JobRecord) -> dict[str, Any]:
    results = ctx.service.results_of(record)
    waiting = record.phase in WAITABLE_PHASES
    tail = _live_log_tail(ctx, record) if waiting else _log_tail(ctx, record, results)
    return {
        "job": record,
        "row": job_row(record, _now()),
        "times": {
            "created": time_text(record.creation_time),
            "started": time_text(record.start_time),
            "ended": time_text(record.end_time),
            "destruction": time_text(record.destruction),
        },
        "duration": duration_text(record, _now()),
        "results": result_rows(record.job_id, results, f"{API}/job/result"),
        "log": tail[0] if tail else None,
        "log_cut": bool(tail and tail[1]),
        "log_tail_kib": LOG_TAIL_BYTES // 1024,
        "log_tail_bytes": LOG_TAIL_BYTES,
        "log_follow": log_follow_url(record.job_id) if waiting else None,
        "abortable": record.phase not in FINAL_PHASES,
        "waiting": waiting,
        "abort_header": ABORT_HEADER,
        "web": WEB,
    }


def job_page(ctx: Context) -> Response:
    """``GET /web/jobs/{job_id}``: parameters, times, error, log tail, results, Abort."""
    try:
        record = ctx.service.get_job(ctx.params["job_id"], ctx.caller)
        values = _job_values(ctx, record)
    except OCPSError as error:
        return _error_page(ctx, error)
    return _html(render_page("job.html", caller=ctx.caller, **values))


def job_changes(ctx: Context) -> Response:
    """``GET /web/jobs/{job_id}/changes?phase=<phase>``: long poll for the job's next phase.

    200 with the page's live part once the job is in another phase than ``phase``; 204
    when the poll's time is up first.
    """
    job_id = ctx.params["job_id"]
    shown = ctx.request.args.get("phase", "")
    record = ctx.service.get_job(job_id, ctx.caller)
    if record.phase.value == shown and record.phase in WAITABLE_PHASES:
        seconds = min(LONG_POLL_SECONDS, float(ctx.settings.wait_max_seconds))
        record = ctx.service.wait_for_job(job_id, ctx.caller, seconds, phase=record.phase)
        if record.phase.value == shown:
            return Response(status=204)
    values = _job_values(ctx, record)
    return _json(
        {
            "phase": record.phase.value,
            "waiting": values["waiting"],
            "html": render_page("job_live.html", **values),
        }
    )


def _same_origin(ctx: Context) -> bool:
    """Whether the request comes from a page of this service (Origin and Fetch metadata)."""
    headers = ctx.request.headers
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get("Origin")
    if origin is None or origin == "null":
        return site is not None or origin is None
    host = ctx.request.host
    if ctx.settings.public_url:
        host = urlsplit(ctx.settings.public_url).netloc or host
    return urlsplit(origin).netloc == host


def abort_job(ctx: Context) -> Response:
    """``POST /web/jobs/{job_id}/abort``: the Abort button, sent by the page's script.

    Needs the ABORT_HEADER (no cross-site form can send one) and a same-origin request;
    then the same abort, with the same caller's checks, as the API's.
    """
    if ctx.request.headers.get(ABORT_HEADER) != "abort" or not _same_origin(ctx):
        return _json(
            {"error": "forbidden", "message": "Abort from the job's page of this service"}, 403
        )
    record = ctx.service.abort_job(ctx.params["job_id"], ctx.caller, wait=10.0)
    return _json({"phase": record.phase.value})


# --- static files --------------------------------------------------------------------------


def static_file(ctx: Context) -> Response:
    """``GET /web/static/{name}``: the page's stylesheet and script, shipped in the package."""
    name = ctx.params["name"]
    suffix = name[name.rfind(".") :] if "." in name else ""
    folder = resources.files(__package__).joinpath("web_static")
    path = folder.joinpath(name)
    if suffix not in _STATIC_TYPES or "/" in name or name.startswith(".") or not path.is_file():
        raise RouteNotFoundError(f"No file {name[:64]!r}")
    response = Response(path.read_bytes(), mimetype=_STATIC_TYPES[suffix].split(";")[0])
    response.headers["Content-Type"] = _STATIC_TYPES[suffix]
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
