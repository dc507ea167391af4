"""Knative function create_job: every request that changes a job's state."""

import functions_framework
from flask import Request, Response

from ocps_jobs.http import function_dispatcher

_dispatch = function_dispatcher("create_job")


@functions_framework.http
def create_job(request: Request) -> Response:
    """Parse, call one service method, render."""
    return _dispatch(request)
