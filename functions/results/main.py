"""Knative function results: result listings and downloads."""

import flask
import functions_framework
from flask import Request, Response
from werkzeug.exceptions import HTTPException

from ocps_jobs.errors import OCPSError
from ocps_jobs.http import FUNCTION_ROUTES, FunctionApp, build_service, render_error
from ocps_jobs.observability.startup import start_function

# Loading this module is the function's start: a bad setting stops the process here.
_settings = start_function("results")
_dispatch = FunctionApp(
    FUNCTION_ROUTES["results"], lambda: build_service(_settings), name="results"
)


@functions_framework.http
def results(request: Request) -> Response:
    """Parse, call one service method, render."""
    return _dispatch(request)


@functions_framework.errorhandler(OCPSError)  # type: ignore[untyped-decorator]
def ocps_error(error: OCPSError) -> Response:
    """Render any error that escaped the dispatcher as the JSON error body."""
    return render_error(error)


@functions_framework.errorhandler(HTTPException)  # type: ignore[untyped-decorator]
def unrouted(error: HTTPException) -> Response:
    """A path Flask's own router refuses (a newline in it) still gets the dispatcher's answer."""
    return _dispatch(flask.request)
