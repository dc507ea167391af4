"""Handlers of the IVOA UWS 1.1 interface (``/uws/async``): parse, call the service, render.

Parameter names are case-insensitive; values come from the query string and, on POST,
from form fields (``application/x-www-form-urlencoded`` or ``multipart/form-data``).

Creating a job (``POST /uws/async``) takes the job parameters (``JOB_PARAMETERS``) by
their UWS names: ``command`` (required), ``RUNID``, ``url``, ``commit_ref``, ``replicas``,
and environment variables either as repeated ``env`` fields ``NAME=value`` (split at the
first ``=``) or as one ``environment`` field holding the JSON array
``[{"name": ..., "value": ...}]`` the JSON API takes (both may be given: the array's
entries come first). Also ``PHASE=RUN`` (queue at once),
``EXECUTIONDURATION`` and ``DESTRUCTION``. Any other name is refused with 400, so a
misspelt parameter is not silently dropped; the request is validated by ``JobRequest``.

State changes answer 303 See Other with an absolute ``Location``. Errors are
``text/plain`` with the message: 400 malformed or out-of-range values, 404 unknown job,
405 wrong method, 409 illegal in the job's phase (``PHASE=RUN`` on a finished job,
``PHASE=ABORT`` on a completed or failed one, ``EXECUTIONDURATION`` once it runs),
413 body over the limit, 415 a body that is not form fields.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from flask import Response
from pydantic import ValidationError

from ..errors import InvalidRequestError, UnsupportedMediaTypeError
from ..models import JOB_PARAMETERS, JobRequest, ParameterKind, Phase
from ..service import ListQuery
from .environ import CLIENT_DISCONNECTED_KEY
from .hosts import is_trusted_host
from .json_api import results_page_path
from .parsing import (
    FORM_TYPES,
    form_fields,
    parse_natural,
    read_body,
    require_utf8_fields,
    validation_message,
)
from .routing import Context, Route
from .uws_xml import (
    ENV_ENTRY,
    job_document,
    job_list_document,
    parameters_document,
    plain_text,
    results_document,
    text_response,
    uws_time,
    xml_response,
)

__all__ = ["UWS_CREATE_JOB_ROUTES", "UWS_QUERY_JOB_ROUTES", "UWS_RESULTS_ROUTES"]

ASYNC = "/uws/async"
JOB = ASYNC + "/{job_id}"

# How long ``PHASE=ABORT`` waits for the job to reach ABORTED before the 303.
ABORT_WAIT_SECONDS = 30.0

# The creation fields by lower-cased name, each with its spelling in messages.
_CREATION_NAMES = {
    spelling.lower(): spelling
    for parameter in JOB_PARAMETERS
    for spelling in (
        [parameter.uws, ENV_ENTRY]
        if parameter.kind is ParameterKind.ENVIRONMENT
        else [parameter.uws]
    )
}
_CREATION_CONTROLS = {name.lower(): name for name in ("PHASE", "EXECUTIONDURATION", "DESTRUCTION")}
_DURATION = re.compile(r"^\+?([0-9]{1,10}(\.[0-9]*)?|\.[0-9]+)$")
# executionDuration is an xs:int in UWS.xsd.
MAX_DURATION = 2**31 - 1

Params = dict[str, list[str]]

# --- reading parameters ---------------------------------------------------------------------


def _params(ctx: Context) -> Params:
    """Query and form fields by lower-cased name, values in the order given."""
    params: Params = {}
    require_utf8_fields(ctx.request.query_string, "A query parameter")
    for name, values in ctx.request.args.lists():
        params.setdefault(name.lower(), []).extend(values)
    if ctx.request.method == "POST":
        data = read_body(ctx.request, ctx.settings.max_body_bytes)
        if ctx.request.mimetype in FORM_TYPES:
            if ctx.request.files:
                raise InvalidRequestError("File uploads are not accepted as UWS parameters")
            for name, values in form_fields(ctx.request):
                params.setdefault(name.lower(), []).extend(values)
        elif data.strip():
            raise UnsupportedMediaTypeError(
                "UWS parameters are form fields: send application/x-www-form-urlencoded"
            )
    return params


def _one(params: Params, name: str) -> str | None:
    """The single value of a parameter, or None; 400 when given more than once."""
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequestError(f"{name.upper()} is given more than once")
    return values[0]


def _required(params: Params, name: str) -> str:
    value = _one(params, name)
    if value is None:
        raise InvalidRequestError(f"{name.upper()} is required")
    return value


def parse_phase(text: str) -> Phase:
    """A UWS phase name, any case; 400 for anything else."""
    try:
        return Phase(text.strip().lower())
    except ValueError:
        valid = ", ".join(phase.uws for phase in Phase)
        raise InvalidRequestError(f"Unknown phase {text[:40]!r}; phases are {valid}") from None


def parse_duration(text: str) -> int:
    """``EXECUTIONDURATION``: non-negative seconds (0 = unlimited); fractions are rounded."""
    text = text.strip()
    seconds = math.floor(float(text) + 0.5) if _DURATION.fullmatch(text) else -1
    if not 0 <= seconds <= MAX_DURATION:
        raise InvalidRequestError(
            f"EXECUTIONDURATION must be a number of seconds from 0 (unlimited) to {MAX_DURATION}"
        )
    return seconds


def parse_time(text: str, name: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidRequestError(
            f"{name} must be an ISO 8601 time such as 2030-01-01T00:00:00Z"
        ) from None


def _environment(params: Params, name: str) -> list[Any]:
    """The JSON array of field ``name``, then each ``env`` entry."""
    entries: list[Any] = []
    text = _one(params, name)
    if text is not None and text.strip():
        try:
            entries = json.loads(text)
        except (ValueError, RecursionError):
            raise InvalidRequestError(
                f"{name} must be a JSON array of {{name, value}} objects"
            ) from None
        if not isinstance(entries, list):
            raise InvalidRequestError(f"{name} must be a JSON array of {{name, value}} objects")
    for item in params.get(ENV_ENTRY, []):
        variable, separator, value = item.partition("=")
        if not separator:
            raise InvalidRequestError(f"{ENV_ENTRY} must be NAME=value, not {item[:64]!r}")
        entries.append({"name": variable, "value": value})
    return entries


def _job_request(params: Params) -> JobRequest:
    """The job parameters (``JOB_PARAMETERS``, by their UWS names) validated as a request."""
    unknown = sorted(set(params) - set(_CREATION_NAMES) - set(_CREATION_CONTROLS))
    if unknown:
        names = ", ".join(name[:40] for name in unknown[:5])
        accepted = ", ".join([*_CREATION_NAMES.values(), *_CREATION_CONTROLS.values()])
        raise InvalidRequestError(f"Unknown job parameter(s): {names}; accepted are {accepted}")
    payload: dict[str, Any] = {}
    for parameter in JOB_PARAMETERS:
        if parameter.kind is ParameterKind.ENVIRONMENT:
            payload[parameter.name] = _environment(params, parameter.uws.lower())
            continue
        value = _one(params, parameter.uws.lower())
        if value is None:
            continue
        if parameter.kind is ParameterKind.INTEGER:
            number = parse_natural(value)
            if number is None:
                raise InvalidRequestError(f"{parameter.uws} must be a positive integer")
            payload[parameter.name] = number
        else:
            payload[parameter.name] = value
    try:
        return JobRequest.model_validate(payload)
    except ValidationError as error:
        raise InvalidRequestError(validation_message(error)) from None


# --- links ----------------------------------------------------------------------------------


def _base(ctx: Context) -> str:
    """The service's absolute URL as clients see it, ending in ``/``.

    ``public_url`` when set; else the request's own, when its Host is trusted (a loopback
    name or one of ``trusted_hosts``): a forged Host never names where links lead.
    """
    base = ctx.settings.public_url
    if not base:
        if not is_trusted_host(ctx.request.host, ctx.settings.trusted_hosts):
            raise InvalidRequestError(
                "The request's Host is not one this service builds links for:"
                " its operator sets OCPS_PUBLIC_URL or OCPS_TRUSTED_HOSTS"
            )
        base = ctx.request.url_root
    return base if base.endswith("/") else base + "/"


def _job_url(ctx: Context, job_id: str) -> str:
    return f"{_base(ctx)}uws/async/{job_id}"


def _results_listing_url(ctx: Context, job_id: str, cursor: int = 0) -> str:
    """The JSON interface's paginated listing of a job's results, from ``cursor`` on."""
    return _base(ctx) + results_page_path(job_id, cursor=cursor).removeprefix("/")


def _download_base(ctx: Context) -> str:
    """Result links download through the JSON interface's ``/api/v1/job/result/{id}``."""
    return f"{_base(ctx)}api/v1/job/result/"


def _see_other(location: str) -> Response:
    response = Response(status=303)
    response.headers["Location"] = location
    return response


def _job_xml(ctx: Context, job_id: str, wait: bool = False) -> Response:
    service = ctx.service
    if wait:
        params = _params(ctx)
        timeout = _wait_seconds(_required(params, "wait"))
        guard = _one(params, "phase")
        record = service.wait_for_job(
            job_id,
            ctx.caller,
            timeout,
            parse_phase(guard) if guard is not None else None,
            disconnected=ctx.request.environ.get(CLIENT_DISCONNECTED_KEY),
        )
    else:
        record = service.get_job(job_id, ctx.caller)
    results, count = service.results_preview(record)
    listing = _results_listing_url(ctx, record.job_id)
    return xml_response(job_document(record, results, _download_base(ctx), listing, count))


def _wait_seconds(text: str) -> float:
    """``WAIT``: whole seconds, or -1 for as long as allowed (the service caps both)."""
    seconds = -1 if text.strip() == "-1" else parse_natural(text)
    if seconds is None:
        raise InvalidRequestError("WAIT must be a whole number of seconds, or -1")
    return float(seconds)


# --- create_job: every state change ---------------------------------------------------------


def create_job(ctx: Context) -> Response:
    """``POST /uws/async``: a new job, PENDING, or QUEUED with ``PHASE=RUN``; 303 to it."""
    params = _params(ctx)
    request = _job_request(params)
    phase = _one(params, "phase")
    if phase is not None and phase.strip().upper() != "RUN":
        raise InvalidRequestError("PHASE at creation can only be RUN")
    duration = _one(params, "executionduration")
    destruction = _one(params, "destruction")
    record = ctx.service.create_job(
        request,
        ctx.caller,
        start=phase is not None,
        execution_duration=parse_duration(duration) if duration is not None else None,
        destruction=parse_time(destruction, "DESTRUCTION") if destruction is not None else None,
    )
    return _see_other(_job_url(ctx, record.job_id))


def post_job(ctx: Context) -> Response:
    """``POST /uws/async/{jobId}`` with ``ACTION=DELETE``: as DELETE."""
    action = _required(_params(ctx), "action")
    if action.strip().upper() != "DELETE":
        raise InvalidRequestError("ACTION can only be DELETE")
    return delete_job(ctx)


def delete_job(ctx: Context) -> Response:
    """``DELETE /uws/async/{jobId}``: stop the job, remove it; 303 to the job list."""
    ctx.service.delete_job(ctx.params["job_id"], ctx.caller)
    return _see_other(_base(ctx) + ASYNC.lstrip("/"))


def post_phase(ctx: Context) -> Response:
    """``POST .../phase``: ``RUN`` queues a pending job, ``ABORT`` stops it; 303 to it."""
    job_id = ctx.params["job_id"]
    phase = _required(_params(ctx), "phase").strip().upper()
    if phase == "RUN":
        ctx.service.start_job(job_id, ctx.caller)
    elif phase == "ABORT":
        ctx.service.abort_job(job_id, ctx.caller, wait=ABORT_WAIT_SECONDS)
    else:
        raise InvalidRequestError("PHASE can only be RUN or ABORT")
    return _see_other(_job_url(ctx, job_id))


def post_execution_duration(ctx: Context) -> Response:
    """``POST .../executionduration``: set (clamped) before the job runs; 303 to it."""
    seconds = parse_duration(_required(_params(ctx), "executionduration"))
    record = ctx.service.set_execution_duration(ctx.params["job_id"], ctx.caller, seconds)
    return _see_other(_job_url(ctx, record.job_id))


def post_destruction(ctx: Context) -> Response:
    """``POST .../destruction``: set the (clamped) destruction time; 303 to the job."""
    when = parse_time(_required(_params(ctx), "destruction"), "DESTRUCTION")
    record = ctx.service.set_destruction(ctx.params["job_id"], ctx.caller, when)
    return _see_other(_job_url(ctx, record.job_id))


# --- query_job: every read, blocking WAIT included ------------------------------------------


def list_jobs(ctx: Context) -> Response:
    """``GET /uws/async[?PHASE=...&AFTER=...&LAST=...]``: filters combined with AND.

    ``PHASE`` may repeat (union); without it ARCHIVED jobs are left out. ``AFTER`` keeps
    jobs created strictly after an ISO 8601 time; ``LAST=n`` the newest n, newest first.
    """
    params = _params(ctx)
    phases = frozenset(parse_phase(text) for text in params.get("phase", []))
    if not phases:
        phases = frozenset(set(Phase) - {Phase.ARCHIVED})
    after = _one(params, "after")
    last_text = _one(params, "last")
    last = parse_natural(last_text) if last_text is not None else None
    if last_text is not None and last is None:
        raise InvalidRequestError("LAST must be a non-negative integer")
    query = ListQuery(
        phases=phases,
        after=parse_time(after, "AFTER") if after is not None else None,
        last=last,
    )
    records = ctx.service.list_jobs(ctx.caller, query)
    return xml_response(job_list_document(records, _base(ctx) + "uws/async/"))


def get_job(ctx: Context) -> Response:
    """``GET /uws/async/{jobId}[?WAIT=n[&PHASE=p]]``: the job document.

    ``WAIT=n`` (``-1`` = as long as allowed) blocks while the job is PENDING, QUEUED or
    EXECUTING (and, with ``PHASE``, in that phase) until it changes phase, at most
    ``wait_max_seconds``; otherwise it answers at once.
    """
    wait = any(name.lower() == "wait" for name in ctx.request.args)
    return _job_xml(ctx, ctx.params["job_id"], wait=wait)


def get_phase(ctx: Context) -> Response:
    """``GET .../phase``: e.g. ``EXECUTING``."""
    return text_response(ctx.service.get_job(ctx.params["job_id"], ctx.caller).phase.uws)


def get_execution_duration(ctx: Context) -> Response:
    """``GET .../executionduration``: whole seconds, 0 = unlimited."""
    record = ctx.service.get_job(ctx.params["job_id"], ctx.caller)
    return text_response(str(record.execution_duration or 0))


def get_destruction(ctx: Context) -> Response:
    """``GET .../destruction``: the time, or empty when the job is kept until deleted."""
    record = ctx.service.get_job(ctx.params["job_id"], ctx.caller)
    return text_response(uws_time(record.destruction) if record.destruction else "")


def get_error(ctx: Context) -> Response:
    """``GET .../error``: the full error message of an ERROR or ABORTED job, else empty."""
    record = ctx.service.get_job(ctx.params["job_id"], ctx.caller)
    failed = record.phase in (Phase.ERROR, Phase.ABORTED)
    return text_response(plain_text(record.error_message) if failed else "")


def get_quote(ctx: Context) -> Response:
    """``GET .../quote``: empty, as the service makes no estimate (``xsi:nil`` in the job)."""
    ctx.service.get_job(ctx.params["job_id"], ctx.caller)
    return text_response("")


def get_owner(ctx: Context) -> Response:
    """``GET .../owner``: the owner, empty when anonymous."""
    return text_response(ctx.service.get_job(ctx.params["job_id"], ctx.caller).owner)


def get_parameters(ctx: Context) -> Response:
    """``GET .../parameters``: ``<uws:parameters>``."""
    record = ctx.service.get_job(ctx.params["job_id"], ctx.caller)
    return xml_response(parameters_document(record))


# --- results --------------------------------------------------------------------------------


def get_results(ctx: Context) -> Response:
    """``GET .../results``: ``<uws:results>``, each with an absolute download link.

    It lists the first ``MAX_JOB_OBJECT_RESULTS``; a job with more has them all in the
    paginated JSON listing, which a comment names and whose next page (the results after
    these) is in a ``Link: <...>; rel="next"`` header.
    """
    record = ctx.service.get_job(ctx.params["job_id"], ctx.caller)
    results, count = ctx.service.results_preview(record)
    listing = _results_listing_url(ctx, record.job_id)
    document = results_document(record, results, _download_base(ctx), count, listing)
    response = xml_response(document)
    if count > len(results):
        following = _results_listing_url(ctx, record.job_id, len(results))
        response.headers["Link"] = f'<{following}>; rel="next"'
    return response


UWS_CREATE_JOB_ROUTES = [
    Route("POST", ASYNC, create_job),
    Route("POST", JOB, post_job),
    Route("DELETE", JOB, delete_job),
    Route("POST", JOB + "/phase", post_phase),
    Route("POST", JOB + "/executionduration", post_execution_duration),
    Route("POST", JOB + "/destruction", post_destruction),
]

UWS_QUERY_JOB_ROUTES = [
    Route("GET", ASYNC, list_jobs),
    Route("GET", JOB, get_job),
    Route("GET", JOB + "/phase", get_phase),
    Route("GET", JOB + "/executionduration", get_execution_duration),
    Route("GET", JOB + "/destruction", get_destruction),
    Route("GET", JOB + "/error", get_error),
    Route("GET", JOB + "/quote", get_quote),
    Route("GET", JOB + "/owner", get_owner),
    Route("GET", JOB + "/parameters", get_parameters),
]

UWS_RESULTS_ROUTES = [
    Route("GET", JOB + "/results", get_results),
]
