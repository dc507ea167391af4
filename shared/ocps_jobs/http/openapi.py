"""The OpenAPI 3.1 document of the JSON interface, generated from the pydantic models."""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Any

from pydantic.json_schema import models_json_schema

from ..conventions import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from ..models import (
    MAX_RESULTS_PAGE,
    DeleteResponse,
    ErrorBody,
    JobDocument,
    JobRequest,
    Phase,
    ResultListing,
)
from ..objectstore.history import SORT_KEY_PATTERN
from .logs import SKIP_PATTERN
from .parsing import form_schema

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Bad input",
        401: "No valid credentials where authentication is required (see WWW-Authenticate)",
        404: "No such job or result (also for another owner's)",
        405: "Method not allowed on this path",
        409: "Illegal in the job's current phase",
        413: "Body or job metadata over the documented limits",
        415: "Body is neither JSON nor form fields",
        416: "Range outside the file",
        503: "Kubernetes or the object store is unavailable; retry",
    }
    # Every operation answers 401 where authentication is on (bad token, or none when required).
    return {
        str(status): _json(_ref("ErrorBody"), text[status]) for status in sorted({401, *statuses})
    }


_JOB_ID = {
    "name": "jobId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}

_RANGE = {
    "name": "Range",
    "in": "header",
    "required": False,
    "description": "One byte range, e.g. `bytes=0-1023` (206; 416 if outside the file); "
    "anything else gets the whole file",
    "schema": {"type": "string"},
}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for ``/api/v1``; schemas are the models that validate and render."""
    _, definitions = models_json_schema(
        [
            (JobRequest, "validation"),
            (JobDocument, "serialization"),
            (ResultListing, "serialization"),
            (DeleteResponse, "serialization"),
            (ErrorBody, "serialization"),
        ],
        ref_template=_REF,
    )
    schemas = definitions["$defs"]
    job = _json(_ref("JobDocument"), "The job object")
    phase_values = [phase.value for phase in Phase]
    # The list filter takes a phase in any case (``executing``, ``EXECUTING``); empty = all.
    any_case = "|".join("".join(f"[{c}{c.upper()}]" for c in value) for value in phase_values)
    paths: dict[str, Any] = {
        "/api/v1/job": {
            "put": {
                "operationId": "createJob",
                "summary": "Create a job and queue it at once",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("JobRequest")},
                        "application/x-www-form-urlencoded": {"schema": form_schema(JobRequest)},
                    },
                },
                "responses": {"200": job, **_errors(400, 413, 415, 503)},
            },
            "get": {
                "operationId": "listJobs",
                "summary": "List jobs, optionally of one phase",
                "parameters": [
                    {
                        "name": "phase",
                        "in": "query",
                        "required": False,
                        "description": "One phase, in any case; empty for every phase",
                        "schema": {"type": "string", "pattern": f"^({any_case})?$"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": (
                            "Page size: one page of jobs, newest first, with a Link rel=next"
                            f" header while more follow ({DEFAULT_PAGE_SIZE} with a cursor)"
                        ),
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "The next page after the one whose Link header gave it",
                        "schema": {"type": "string", "pattern": SORT_KEY_PATTERN},
                    },
                ],
                "responses": {
                    "200": _json(
                        {"type": "array", "items": _ref("JobDocument")},
                        "Jobs, oldest first; newest first with limit",
                    ),
                    **_errors(400, 503),
                },
            },
        },
        "/api/v1/job/{jobId}": {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": "getJob",
                "responses": {"200": job, **_errors(404, 503)},
            },
            "delete": {
                "operationId": "deleteJob",
                "summary": "Stop the job and remove it with its results",
                "responses": {
                    "200": _json(_ref("DeleteResponse"), "Deleted"),
                    **_errors(404, 503),
                },
            },
        },
        "/api/v1/job/{jobId}/phase": {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": "getJobPhase",
                "responses": {
                    "200": _json({"type": "string", "enum": phase_values}, "The phase"),
                    **_errors(404, 503),
                },
            },
        },
        "/api/v1/job/{jobId}/parameters": {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": "getJobParameters",
                "responses": {
                    "200": _json(_ref("SeedParameters"), "The job's parameters"),
                    **_errors(404, 503),
                },
            },
        },
        "/api/v1/job/{jobId}/results": {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": "listJobResults",
                "summary": "List the job's results, all of them or one page",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": (
                            "Page size: one page of results, in the listing's order, with a"
                            " Link rel=next header while more follow"
                            f" ({MAX_RESULTS_PAGE} with a cursor alone)"
                        ),
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS_PAGE},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "Where the next page starts, as the Link header gave it",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "responses": {
                    "200": _json(
                        {"type": "array", "items": _ref("ResultListing")},
                        "Results; without limit or cursor, every one",
                    ),
                    **_errors(400, 404, 503),
                },
            },
        },
        "/api/v1/job/{jobId}/log": {
            "parameters": [
                _JOB_ID,
                {
                    "name": "tail",
                    "in": "query",
                    "description": "Only the last N lines (of each replica)",
                    "schema": {"type": "integer", "minimum": 0},
                },
                {
                    "name": "follow",
                    "in": "query",
                    "description": "Keep sending new lines until the job ends (at most "
                    "the WAIT cap; then reconnect with skip)",
                    "schema": {"type": "boolean", "default": False},
                },
                {
                    "name": "skip",
                    "in": "query",
                    "description": "Lines already had, per replica index, comma-separated",
                    "schema": {"type": "string", "pattern": SKIP_PATTERN},
                },
            ],
            "get": {
                "operationId": "getJobLog",
                "responses": {
                    "200": {
                        "description": "The log as text; with several replicas each line "
                        "starts with `[index] `",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 404, 503),
                },
            },
        },
        "/api/v1/job/result/{resultId}": {
            "parameters": [
                {
                    "name": "resultId",
                    "in": "path",
                    "required": True,
                    "description": "URL-safe base64 of the object key (standard base64 "
                    "and the 2021 absolute-path form are accepted too)",
                    "schema": {"type": "string"},
                },
                _RANGE,
            ],
            "get": {
                "operationId": "downloadResult",
                "responses": {
                    "200": {"description": "The file, streamed"},
                    "206": {"description": "One byte range of the file"},
                    "307": {"description": "With presigned downloads: the object's URL"},
                    **_errors(404, 416, 503),
                },
            },
        },
        "/api/v1/job/result/{jobId}/{n}": {
            "parameters": [
                _JOB_ID,
                {
                    "name": "n",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0},
                },
                _RANGE,
            ],
            "get": {
                "operationId": "downloadResultByIndex",
                "responses": {
                    "200": {"description": "The n-th result file (from 0), streamed"},
                    "206": {"description": "One byte range of the file"},
                    **_errors(400, 404, 416, 503),
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OCPS Job Manager",
            "version": importlib.metadata.version("ocps-jobs"),
            "description": "The OCPS JSON interface, byte-compatible with the 2021 prototype.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
