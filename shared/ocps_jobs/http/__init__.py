"""HTTP layer: routing, the JSON (and UWS XML) handlers, rendering and the one error renderer."""

from __future__ import annotations

from .app import FUNCTION_ROUTES, FunctionApp, create_embedded_app
from .functions import function_dispatcher
from .render import render_error

__all__ = [
    "FUNCTION_ROUTES",
    "FunctionApp",
    "create_embedded_app",
    "function_dispatcher",
    "render_error",
]
