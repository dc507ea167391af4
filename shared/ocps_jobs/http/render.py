"""Rendering of JSON documents and the one error renderer of the OCPS JSON interface."""

from __future__ import annotations

import json
from typing import Any

from flask import Response

from ..errors import (
    AuthenticationRequiredError,
    MethodNotAllowedError,
    OCPSError,
    RangeNotSatisfiableError,
)
from ..models import MAX_JOB_OBJECT_RESULTS, JobRecord, ResultFile, format_seed_time
from ..objectstore import ObjectStore
from ..resultids import encode_result_id

__all__ = [
    "job_document",
    "json_list_response",
    "json_response",
    "json_text",
    "provenance",
    "render_error",
    "result_listing",
]

JSON_TYPE = "application/json"


# Lists longer than this are written compact: an indent makes json use its pure-Python
# encoder, five times slower, which a list of 10,000 jobs would feel.
COMPACT_LIST_LENGTH = 100


def json_response(data: Any, status: int = 200) -> Response:
    """JSON with two-space indents, as the 2021 seed server wrote it; long lists compact."""
    indent = None if isinstance(data, list) and len(data) > COMPACT_LIST_LENGTH else 2
    return Response(json.dumps(data, indent=indent), status=status, mimetype=JSON_TYPE)


def json_text(document: Any) -> str:
    """One item of a long list, serialized on its own for ``json_list_response``."""
    return json.dumps(document)


def json_list_response(items: list[str]) -> Response:
    """A list whose items ``json_text`` serialized one by one: as ``json_response`` writes it.

    ``json.dumps`` writes a compact list as its items' own text joined by ``", "``; a short
    list is read back and indented (at most ``COMPACT_LIST_LENGTH`` small documents).
    """
    if len(items) <= COMPACT_LIST_LENGTH:
        return json_response([json.loads(item) for item in items])
    return Response(f"[{', '.join(items)}]", mimetype=JSON_TYPE)


def render_error(error: OCPSError) -> Response:
    """``{"error": code, "message": text}`` with the error's status."""
    response = Response(
        json.dumps({"error": error.code, "message": error.message}),
        status=error.status,
        mimetype=JSON_TYPE,
    )
    if isinstance(error, MethodNotAllowedError):
        response.headers["Allow"] = ", ".join(error.allowed)
    if isinstance(error, AuthenticationRequiredError):
        response.headers["WWW-Authenticate"] = 'Bearer realm="ocps-jobs"'
    if isinstance(error, RangeNotSatisfiableError):
        response.headers["Content-Range"] = f"bytes */{error.size}"
    return response


def result_reference(result: ResultFile, store: ObjectStore) -> dict[str, Any]:
    """A result as the job object lists it: ``{id, uri}``."""
    return {"id": encode_result_id(result.key), "uri": store.uri(result.key)}


def result_listing(result: ResultFile, store: ObjectStore) -> dict[str, Any]:
    """A result as ``/results`` lists it: ``{id, uri, size, mimeType, sha256}``."""
    return {
        **result_reference(result, store),
        "size": result.size,
        "mimeType": result.content_type,
        "sha256": result.sha256,
    }


def job_document(
    record: JobRecord,
    results: list[ResultFile],
    store: ObjectStore,
    results_link: str | None = None,
    result_count: int | None = None,
) -> dict[str, Any]:
    """The seed's job object, field for field and in the seed's order.

    It lists the first ``MAX_JOB_OBJECT_RESULTS`` results; with more (``result_count``, or
    else ``results`` is every one), ``jobInfo`` has ``resultCount`` (all of them) and
    ``resultsLink`` (the paginated listing's first page).
    """
    info: dict[str, Any] = dict(provenance(record))
    count = len(results) if result_count is None else result_count
    if count > MAX_JOB_OBJECT_RESULTS:
        info["resultCount"] = count
        if results_link is not None:
            info["resultsLink"] = results_link
    return {
        "jobId": record.job_id,
        "runId": record.run_id,
        "ownerId": record.owner,
        "phase": record.phase.value,
        "creationTime": format_seed_time(record.creation_time),
        "startTime": format_seed_time(record.start_time),
        "endTime": format_seed_time(record.end_time),
        "executionDuration": record.execution_duration,
        "destruction": format_seed_time(record.destruction),
        "parameters": {
            "command": ["/bin/bash", "-c", record.parameters.command],
            # As model_dump() writes them, at a sixth of the cost (lists of 10,000 jobs).
            "environment": [
                {"name": entry.name, "value": entry.value} for entry in record.environment
            ],
            "url": record.parameters.url,
            "commit_ref": record.parameters.commit_ref,
        },
        "results": [result_reference(result, store) for result in results[:MAX_JOB_OBJECT_RESULTS]],
        # While queued, why its pods cannot start: the seed's fields, no new one for the CSC.
        "errorSummary": {"message": record.error_message or record.waiting_reason},
        "jobInfo": info,
    }


def provenance(record: JobRecord) -> dict[str, str]:
    """What exactly ran, as far as it is known: ``{commitSha, imageDigest}``; empty before."""
    known = {"commitSha": record.commit_sha, "imageDigest": record.image_digest}
    return {name: value for name, value in known.items() if value}
