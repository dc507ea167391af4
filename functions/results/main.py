"""Knative function results: result listings and downloads."""

import functions_framework
from flask import Request, Response

from ocps_jobs.http import function_dispatcher

_dispatch = function_dispatcher("results")


@functions_framework.http
def results(request: Request) -> Response:
    """Parse, call one service method, render."""
    return _dispatch(request)
