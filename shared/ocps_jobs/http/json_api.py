"""Handlers of the OCPS JSON interface (``/api/v1``): parse, call one service method, render."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from flask import Response

from ..conventions import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from ..errors import InvalidRequestError
from ..models import MAX_RESULTS_PAGE, DeleteResponse, JobRecord, JobRequest, Phase
from ..service import ListQuery
from .downloads import download_response
from .openapi import openapi_document
from .parsing import parse_body, parse_natural, refuse_unknown_query
from .render import job_document, json_list_response, json_response, json_text, result_listing
from .routing import Context, Route

__all__ = ["CREATE_JOB_ROUTES", "QUERY_JOB_ROUTES", "RESULTS_ROUTES", "results_page_path"]

API = "/api/v1"


def _results_path(job_id: str) -> str:
    return f"{API}/job/{job_id}/results"


def results_page_path(job_id: str, limit: int = MAX_RESULTS_PAGE, cursor: int = 0) -> str:
    """The paginated results listing: ``limit`` results from position ``cursor``.

    Its query has only digits (it is written out: built for every job of a long list).
    """
    return f"{_results_path(job_id)}?limit={limit}" + (f"&cursor={cursor}" if cursor else "")


def _document(ctx: Context, record: JobRecord) -> dict[str, Any]:
    """The job object, linking to its paginated results when it cannot list them all."""
    results, count = ctx.service.results_preview(record)
    link = results_page_path(record.job_id)
    return job_document(record, results, ctx.service.store, link, count)


def _job_response(ctx: Context, job_id: str) -> Response:
    return json_response(_document(ctx, ctx.service.get_job(job_id, ctx.caller)))


def create_job(ctx: Context) -> Response:
    """``PUT /api/v1/job``: create and queue a job; 200 with the job object."""
    request = parse_body(ctx.request, JobRequest, ctx.settings.max_body_bytes)
    record = ctx.service.create_job(request, ctx.caller)
    return json_response(job_document(record, [], ctx.service.store))


def delete_job(ctx: Context) -> Response:
    """``DELETE /api/v1/job/{jobId}``: stop the job and remove it."""
    ctx.service.delete_job(ctx.params["job_id"], ctx.caller)
    return json_response(DeleteResponse().model_dump())


def _page_size(text: str | None, cursor: str | None) -> int | None:
    """``limit``: 1 to ``MAX_PAGE_SIZE``; ``DEFAULT_PAGE_SIZE`` for a cursor without it."""
    if text is None:
        return DEFAULT_PAGE_SIZE if cursor is not None else None
    size = parse_natural(text)
    if size is None or not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidRequestError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    return size


def list_jobs(ctx: Context) -> Response:
    """``GET /api/v1/job[?phase=][&limit=n][&cursor=c]``: the caller's jobs.

    Without paging parameters (as the CSC asks): every kept job, oldest first. With
    ``limit`` (and ``cursor`` from the previous page): one page, newest first, and a
    ``Link: <...>; rel="next"`` header while more jobs follow.
    """
    refuse_unknown_query(ctx.request.args, ("phase", "limit", "cursor"))
    phase_text = ctx.request.args.get("phase", "")
    phases = None
    if phase_text:
        try:
            phases = frozenset({Phase(phase_text.lower())})
        except ValueError:
            valid = ", ".join(phase.value for phase in Phase)
            raise InvalidRequestError(
                f"Unknown phase {phase_text[:40]!r}; valid phases are {valid}"
            ) from None
    cursor = ctx.request.args.get("cursor")
    limit = _page_size(ctx.request.args.get("limit"), cursor)
    asked = ListQuery(phases=phases, limit=limit, cursor=cursor)
    page = ctx.service.render_page(ctx.caller, asked, lambda r: json_text(_document(ctx, r)))
    response = json_list_response(page.records if limit is not None else page.records[::-1])
    if page.next_cursor is not None and limit is not None:
        query = {"limit": str(limit), "cursor": page.next_cursor}
        if phase_text:
            query["phase"] = phase_text.lower()
        response.headers["Link"] = f'<{API}/job?{urlencode(query)}>; rel="next"'
    return response


def get_job(ctx: Context) -> Response:
    """``GET /api/v1/job/{jobId}``."""
    return _job_response(ctx, ctx.params["job_id"])


def get_phase(ctx: Context) -> Response:
    """``GET /api/v1/job/{jobId}/phase``: a JSON string such as ``"executing"``."""
    record = ctx.service.get_job(ctx.params["job_id"], ctx.caller)
    return json_response(record.phase.value)


def get_parameters(ctx: Context) -> Response:
    """``GET /api/v1/job/{jobId}/parameters``: the job object's ``parameters``."""
    record = ctx.service.get_job(ctx.params["job_id"], ctx.caller)
    return json_response(job_document(record, [], ctx.service.store)["parameters"])


def get_openapi(ctx: Context) -> Response:
    """``GET /api/v1/openapi.json``."""
    return json_response(openapi_document())


def list_results(ctx: Context) -> Response:
    """``GET /api/v1/job/{jobId}/results[?limit=n][&cursor=c]``: ``[{id, uri, size, ...}]``.

    Without paging parameters (as the 2021 clients ask): every result. With ``limit`` (and
    ``cursor`` from the previous page's ``Link: <...>; rel="next"`` header): one page, in
    the same order, with that header while more results follow.
    """
    refuse_unknown_query(ctx.request.args, ("limit", "cursor"))
    job_id = ctx.params["job_id"]
    cursor_text = ctx.request.args.get("cursor")
    limit_text = ctx.request.args.get("limit")
    cursor = 0
    if cursor_text is not None:
        parsed = parse_natural(cursor_text)
        if parsed is None:
            raise InvalidRequestError("cursor must be a non-negative integer")
        cursor = parsed
    limit = None
    if limit_text is not None or cursor_text is not None:
        limit = MAX_RESULTS_PAGE if limit_text is None else parse_natural(limit_text)
        if limit is None or not 1 <= limit <= MAX_RESULTS_PAGE:
            raise InvalidRequestError(f"limit must be an integer from 1 to {MAX_RESULTS_PAGE}")
    if limit is None:
        page = ctx.service.list_results(job_id, ctx.caller)
        total = len(page)
    else:  # of a job of many results, only this page's entries are read
        page, total = ctx.service.results_page(job_id, ctx.caller, cursor, limit)
    response = json_response([result_listing(result, ctx.service.store) for result in page])
    if limit is not None and cursor + limit < total:
        link = results_page_path(job_id, limit, cursor + limit)
        response.headers["Link"] = f'<{link}>; rel="next"'
    return response


_BY_INDEX = re.compile(r"^(?P<job_id>[0-9a-f]{32})/(?P<index>[^/]+)$")


def download_result(ctx: Context) -> Response:
    """``GET /api/v1/job/result/{resultId}`` or ``/result/{jobId}/{n}``: the file, streamed.

    A standard base64 result ID may hold ``/``, so the reference is the rest of the path:
    ``<32 hex>/<n>`` is the index form (n from 0), anything else a result ID.
    """
    reference = ctx.params["reference"]
    by_index = _BY_INDEX.match(reference)
    if by_index is None:
        result = ctx.service.find_result(reference, ctx.caller)
    else:
        index = parse_natural(by_index["index"])
        if index is None:
            raise InvalidRequestError("The result index must be a non-negative integer")
        result = ctx.service.find_result_by_index(by_index["job_id"], index, ctx.caller)
    return download_response(ctx.service, result, ctx.request)


CREATE_JOB_ROUTES = [
    Route("PUT", f"{API}/job", create_job),
    Route("DELETE", f"{API}/job/{{job_id}}", delete_job),
]

QUERY_JOB_ROUTES = [
    # Public: clients read it before they have credentials, and Knative probes it.
    Route("GET", f"{API}/openapi.json", get_openapi, public=True),
    Route("GET", f"{API}/job", list_jobs),
    Route("GET", f"{API}/job/{{job_id}}", get_job),
    Route("GET", f"{API}/job/{{job_id}}/phase", get_phase),
    Route("GET", f"{API}/job/{{job_id}}/parameters", get_parameters),
]

RESULTS_ROUTES = [
    Route("GET", f"{API}/job/result/{{reference:path}}", download_result),
    Route("GET", f"{API}/job/{{job_id}}/results", list_results),
]
