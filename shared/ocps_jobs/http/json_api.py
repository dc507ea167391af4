"""Handlers of the OCPS JSON interface (``/api/v1``): parse, call one service method, render."""

from __future__ import annotations

import re

from flask import Response

from ..errors import InvalidRequestError
from ..models import DeleteResponse, JobRequest, Phase
from ..service import ListQuery
from .downloads import download_response
from .openapi import openapi_document
from .parsing import parse_body, parse_natural
from .render import job_document, json_response, result_listing
from .routing import Context, Route

__all__ = ["CREATE_JOB_ROUTES", "QUERY_JOB_ROUTES", "RESULTS_ROUTES"]

API = "/api/v1"


def _job_response(ctx: Context, job_id: str) -> Response:
    record = ctx.service.get_job(job_id, ctx.caller)
    return json_response(job_document(record, ctx.service.results_of(record), ctx.service.store))


def create_job(ctx: Context) -> Response:
    """``PUT /api/v1/job``: create and queue a job; 200 with the job object."""
    request = parse_body(ctx.request, JobRequest, ctx.settings.max_body_bytes)
    record = ctx.service.create_job(request, ctx.caller)
    return json_response(job_document(record, [], ctx.service.store))


def delete_job(ctx: Context) -> Response:
    """``DELETE /api/v1/job/{jobId}``: stop the job and remove it."""
    ctx.service.delete_job(ctx.params["job_id"], ctx.caller)
    return json_response(DeleteResponse().model_dump())


def list_jobs(ctx: Context) -> Response:
    """``GET /api/v1/job[?phase=]``: the caller's jobs, oldest first."""
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
    records = ctx.service.list_jobs(ctx.caller, ListQuery(phases=phases))
    store = ctx.service.store
    return json_response(
        [job_document(record, ctx.service.results_of(record), store) for record in records]
    )


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
    """``GET /api/v1/job/{jobId}/results``: ``[{id, uri, size, mimeType}]``."""
    results = ctx.service.list_results(ctx.params["job_id"], ctx.caller)
    return json_response([result_listing(result, ctx.service.store) for result in results])


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
