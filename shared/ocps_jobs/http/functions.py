"""What each Knative function's main.py shares: its dispatcher and its two error handlers."""

from __future__ import annotations

import flask
import functions_framework
from flask import Response
from werkzeug.exceptions import HTTPException

from ..composition import build_service
from ..errors import OCPSError
from ..observability.startup import start_function
from .app import FUNCTION_ROUTES, FunctionApp
from .render import render_error

__all__ = ["function_dispatcher"]


def function_dispatcher(name: str) -> FunctionApp:
    """The dispatcher of function ``name``, with its error handlers registered.

    Call it at the import of the function's main.py, which functions-framework loads after
    creating its app: that import is the function's start, so the settings are read and
    checked here (a bad one exits the process with one line naming it, and the revision
    never becomes ready). An ``OCPSError`` that escapes the dispatcher renders as the JSON
    error body, and a path Flask's own router refuses (a newline in it) still reaches the
    dispatcher. The service itself is built on the first request.
    """
    settings = start_function(name)
    dispatch = FunctionApp(FUNCTION_ROUTES[name], lambda: build_service(settings), name=name)

    def ocps_error(error: OCPSError) -> Response:
        return render_error(error)

    def unrouted(error: HTTPException) -> Response:
        return dispatch(flask.request)

    # Looked up now, not at this module's import: functions-framework rebinds it per app.
    functions_framework.errorhandler(OCPSError)(ocps_error)
    functions_framework.errorhandler(HTTPException)(unrouted)
    return dispatch
