"""Knative function query_job: every read of jobs and job lists, including blocking WAIT."""

import functions_framework
from flask import Request, Response

from ocps_jobs.http import function_dispatcher

_dispatch = function_dispatcher("query_job")


@functions_framework.http
def query_job(request: Request) -> Response:
    """Parse, call one service method, render."""
    return _dispatch(request)
