"""The web view's routes, declared without loading the view: its handlers load on first use.

A function's start (its cold start) imports the route tables, not the view's module and
templates; the first request for a page imports them.
"""

from __future__ import annotations

import importlib

from flask import Response

from .routing import Context, Handler, Route

__all__ = ["WEB", "WEB_CREATE_JOB_ROUTES", "WEB_QUERY_JOB_ROUTES", "WEB_VIEW_MODULE"]

WEB = "/web"
WEB_VIEW_MODULE = f"{__package__}.web"


def _view(name: str) -> Handler:
    """The web view's handler ``name``, its module imported when first called."""

    def handler(ctx: Context) -> Response:
        view: Handler = getattr(importlib.import_module(WEB_VIEW_MODULE), name)
        return view(ctx)

    handler.__name__ = handler.__qualname__ = name
    return handler


WEB_QUERY_JOB_ROUTES = [
    Route("GET", "/", _view("jobs_page")),
    Route("GET", f"{WEB}/static/{{name}}", _view("static_file"), public=True),
    Route("GET", f"{WEB}/jobs/changes", _view("jobs_changes")),
    Route("GET", f"{WEB}/jobs/{{job_id}}", _view("job_page")),
    Route("GET", f"{WEB}/jobs/{{job_id}}/changes", _view("job_changes")),
]

WEB_CREATE_JOB_ROUTES = [
    Route("POST", f"{WEB}/jobs/{{job_id}}/abort", _view("abort_job")),
]
