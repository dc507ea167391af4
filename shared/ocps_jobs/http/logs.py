"""``GET /api/v1/job/{jobId}/log``: a job's log as text, its tail, or followed as it grows."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Response

from ..errors import InvalidRequestError
from ..models import LOG_REPLICAS_HEADER, LOG_SKIPPED_HEADER, MAX_REPLICAS, LogQuery
from .parsing import parse_natural
from .routing import Context, Route

__all__ = ["LOG_ROUTES", "get_log", "parse_log_query"]

API = "/api/v1"
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no", ""})


def parse_log_query(args: dict[str, str]) -> LogQuery:
    """``tail=N``, ``follow=true``, ``skip=N[,N...]``: ``LogQuery.query_parameters`` parsed."""
    tail = None
    if "tail" in args:
        tail = parse_natural(args["tail"])
        if tail is None:
            raise InvalidRequestError("tail must be a non-negative integer")
    follow_text = args.get("follow", "").strip().lower()
    if follow_text not in _TRUE | _FALSE:
        raise InvalidRequestError("follow must be true or false")
    skip: list[int] = []
    if args.get("skip", "").strip():
        parts = args["skip"].split(",")
        if len(parts) > MAX_REPLICAS:
            raise InvalidRequestError(f"skip has at most {MAX_REPLICAS} counts, one per replica")
        for part in parts:
            count = parse_natural(part)
            if count is None:
                raise InvalidRequestError("skip must be non-negative integers separated by commas")
            skip.append(count)
    return LogQuery(tail=tail, follow=follow_text in _TRUE, skip=tuple(skip))


def get_log(ctx: Context) -> Response:
    """The log as ``text/plain``; a follow streams until the job ends or the WAIT cap passes."""
    query = parse_log_query(dict(ctx.request.args))
    log = ctx.service.job_log(ctx.params["job_id"], ctx.caller, query)

    def body() -> Iterator[bytes]:
        for line in log.lines:
            yield line.encode("utf-8")

    response = Response(body(), mimetype="text/plain")
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Accel-Buffering"] = "no"  # proxies pass a followed log on at once
    if log.marked:
        response.headers[LOG_REPLICAS_HEADER] = str(log.replicas)
    if any(log.skipped):
        response.headers[LOG_SKIPPED_HEADER] = ",".join(str(count) for count in log.skipped)
    return response


LOG_ROUTES = [Route("GET", f"{API}/job/{{job_id}}/log", get_log)]
