"""HTTP layer: routing, the JSON (and UWS XML) handlers, rendering and the one error renderer."""

from __future__ import annotations

from .app import FUNCTION_ROUTES, FunctionApp, build_service, create_embedded_app
from .render import render_error

__all__ = ["FUNCTION_ROUTES", "FunctionApp", "build_service", "create_embedded_app", "render_error"]
