"""``GET /api/v1/job/{jobId}/log``: a job's log as text, its tail, or followed as it grows."""

from __future__ import annotations

import re
from collections.abc import Iterator

from flask import Response

from ..errors import InvalidRequestError
from ..models import LOG_REPLICAS_HEADER, LOG_SKIPPED_HEADER, MAX_REPLICAS, LogQuery
from .parsing import parse_natural, refuse_unknown_query
from .routing import Context, Route

__all__ = ["LOG_ROUTES", "SKIP_PATTERN", "get_log", "parse_log_query"]

API = "/api/v1"
_FOLLOW = {"true": True, "false": False}
_ACCEPTED = ("tail", "follow", "skip")
# skip: one count per replica, at most MAX_REPLICAS (the OpenAPI document uses it too).
SKIP_PATTERN = rf"^[0-9]+(,[0-9]+){{0,{MAX_REPLICAS - 1}}}$"
_SKIP = re.compile(SKIP_PATTERN)


def parse_log_query(args: dict[str, str]) -> LogQuery:
    """``tail=N``, ``follow=true|false``, ``skip=N[,N...]``, as the OpenAPI document says.

    What the document does not allow is a 400: another parameter, an empty ``skip``, a
    ``follow`` that is not ``true`` or ``false``.
    """
    refuse_unknown_query(args, _ACCEPTED)
    tail = None
    if "tail" in args:
        tail = parse_natural(args["tail"])
        if tail is None:
            raise InvalidRequestError("tail must be a non-negative integer")
    follow = _FOLLOW.get(args.get("follow", "false"))
    if follow is None:
        raise InvalidRequestError("follow must be true or false")
    skip: list[int] = []
    if "skip" in args:
        if not _SKIP.match(args["skip"]):
            raise InvalidRequestError(
                f"skip must be at most {MAX_REPLICAS} non-negative integers (one per replica) "
                "separated by commas"
            )
        parts = args["skip"].split(",")
        skip = [int(part) if len(part) <= 18 else 10**18 for part in parts]
    return LogQuery(tail=tail, follow=follow, skip=tuple(skip))


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
