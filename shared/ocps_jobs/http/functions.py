"""What each Knative function's main.py shares: its dispatcher and its two error handlers."""

from __future__ import annotations

import flask
import functions_framework
from flask import Response
from werkzeug.exceptions import HTTPException

from ..errors import OCPSError
from .app import FUNCTION_ROUTES, FunctionApp
from .render import render_error

__all__ = ["function_dispatcher"]


def function_dispatcher(name: str) -> FunctionApp:
    """The dispatcher of function ``name``, with its error handlers registered.

    Call it at the import of the function's main.py, which functions-framework loads after
    creating its app: an ``OCPSError`` that escapes the dispatcher renders as the JSON error
    body, and a path Flask's own router refuses (a newline in it) still reaches the
    dispatcher. Settings are read on the first request, not here.
    """
    dispatch = FunctionApp(FUNCTION_ROUTES[name])

    def ocps_error(error: OCPSError) -> Response:
        return render_error(error)

    def unrouted(error: HTTPException) -> Response:
        return dispatch(flask.request)

    # Looked up now, not at this module's import: functions-framework rebinds it per app.
    functions_framework.errorhandler(OCPSError)(ocps_error)
    functions_framework.errorhandler(HTTPException)(unrouted)
    return dispatch
