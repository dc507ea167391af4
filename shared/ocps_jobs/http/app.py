"""A dispatcher per function over its route table, and the embedded app with all three."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from flask import Flask, Request, Response, request
from werkzeug.exceptions import HTTPException

from ..composition import build_service
from ..config import Settings
from ..errors import OCPSError
from ..memory import release_free_memory
from ..models import Caller
from ..observability.access import answer_logged
from ..observability.context import note_request
from ..observability.routes import operations_routes
from ..service import JobService
from .auth import Authenticator
from .json_api import CREATE_JOB_ROUTES, QUERY_JOB_ROUTES, RESULTS_ROUTES
from .logs import LOG_ROUTES
from .render import render_error
from .routing import Context, Route, Router
from .uws import UWS_CREATE_JOB_ROUTES, UWS_QUERY_JOB_ROUTES, UWS_RESULTS_ROUTES
from .uws_xml import render_uws_error
from .web_routes import WEB_CREATE_JOB_ROUTES, WEB_QUERY_JOB_ROUTES

__all__ = ["FUNCTION_ROUTES", "FunctionApp", "create_embedded_app", "render_error_for"]

log = logging.getLogger(__name__)

FUNCTION_ROUTES: dict[str, list[Route]] = {
    "create_job": [
        *CREATE_JOB_ROUTES,
        *UWS_CREATE_JOB_ROUTES,
        *operations_routes(phase_gauges=False),
        *WEB_CREATE_JOB_ROUTES,
    ],
    "query_job": [
        *QUERY_JOB_ROUTES,
        *LOG_ROUTES,
        *UWS_QUERY_JOB_ROUTES,
        *operations_routes(phase_gauges=True),
        *WEB_QUERY_JOB_ROUTES,
    ],
    "results": [*RESULTS_ROUTES, *UWS_RESULTS_ROUTES, *operations_routes(phase_gauges=False)],
}


def render_error_for(path: str, error: OCPSError) -> Response:
    """The one error renderer per interface: text/plain under ``/uws``, JSON elsewhere."""
    if path == "/uws" or path.startswith("/uws/"):
        return render_uws_error(error)
    return render_error(error)


ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


# A response this large was rendered from as much memory, freed by the time it is sent
# (a list of thousands of jobs): the C allocator keeps it mapped unless asked.
RELEASE_AFTER_BYTES = 1024 * 1024


def _released_once_sent(response: Response) -> Response:
    """``response``, giving the memory freed while it was made back once it has been sent."""
    if not response.is_streamed and (response.content_length or 0) >= RELEASE_AFTER_BYTES:
        response.call_on_close(release_free_memory)
    return response


class FunctionApp:
    """Dispatches requests over a route table; builds its service on the first request."""

    def __init__(
        self,
        routes: Sequence[Route],
        service_factory: Callable[[], JobService] | None = None,
        name: str = "serve",
    ) -> None:
        self.name = name  # the access lines' and request metrics' "function"
        self.router = Router(routes)
        self._factory = service_factory or (lambda: build_service(Settings.from_env()))
        self._service: JobService | None = None
        self._authenticator: Authenticator | None = None
        self._lock = threading.Lock()

    @property
    def service(self) -> JobService:
        """The service, created once (configuration is read then, not at import)."""
        if self._service is None:
            with self._lock:
                if self._service is None:
                    service = self._factory()
                    self._authenticator = Authenticator(service.settings)
                    self._service = service
        return self._service

    def __call__(self, http_request: Request) -> Response:
        """Answer one request, with its request id, access line and metrics."""
        return _released_once_sent(answer_logged(self.name, http_request, self._answer_with_cors))

    def _answer_with_cors(self, http_request: Request) -> Response:
        """Answer one request, with CORS headers where configured."""
        origin = http_request.headers.get("Origin")
        if origin is None:
            return self._answer(http_request)
        allowed = self.service.settings.cors_origins
        if origin not in allowed and "*" not in allowed:
            return self._answer(http_request)
        if (
            http_request.method == "OPTIONS"
            and "Access-Control-Request-Method" in http_request.headers
        ):
            response = Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, PUT, DELETE"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Range"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = self._answer(http_request)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = (
            "Location, Content-Range, Content-Disposition, Content-Length"
        )
        response.headers.add("Vary", "Origin")
        return response

    def _answer(self, http_request: Request) -> Response:
        """Dispatch; every failure becomes an error document, never a traceback."""
        try:
            route, params = self.router.route_for(http_request.method, http_request.path)
            note_request(route=route.template, job_id=params.get("job_id"))
            service = self.service  # built on first use: bad settings fail here, every time
            caller = (
                Caller() if route.public else self._authenticator.identify(http_request)  # type: ignore[union-attr]
            )
            note_request(user=caller.name)
            context = Context(
                request=http_request,
                service=service,
                settings=service.settings,
                caller=caller,
                params=params,
            )
            return route.handler(context)
        except OCPSError as error:
            return render_error_for(http_request.path, error)
        except HTTPException as error:
            failure = OCPSError(error.description or error.name)
            failure.status, failure.code = error.code or 400, "bad_request"
            return render_error_for(http_request.path, failure)
        except Exception:
            log.exception("unhandled error on %s %s", http_request.method, http_request.path)
            return render_error_for(
                http_request.path, OCPSError("Internal error; it has been logged")
            )


def create_embedded_app(service: JobService) -> Flask:
    """All three functions' routes in one Flask app (the embedded default)."""
    dispatch = FunctionApp(
        [
            *RESULTS_ROUTES,
            *CREATE_JOB_ROUTES,
            *QUERY_JOB_ROUTES,
            *LOG_ROUTES,
            *UWS_RESULTS_ROUTES,
            *UWS_CREATE_JOB_ROUTES,
            *UWS_QUERY_JOB_ROUTES,
            *operations_routes(phase_gauges=True),
            *WEB_CREATE_JOB_ROUTES,
            *WEB_QUERY_JOB_ROUTES,
        ],
        service_factory=lambda: service,
    )
    app = Flask("ocps_jobs")
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False

    def view(path: str = "") -> Response:
        return dispatch(request._get_current_object())  # type: ignore[attr-defined]

    app.add_url_rule("/", "root", view, methods=ALL_METHODS, provide_automatic_options=False)
    app.add_url_rule(
        "/<path:path>", "any", view, methods=ALL_METHODS, provide_automatic_options=False
    )

    def unrouted(error: HTTPException) -> Response:
        """Flask's own refusals (a newline in a path, an unknown method) go to the dispatcher.

        So they get the interface's error document too, never Flask's HTML error page.
        """
        return view()

    app.register_error_handler(HTTPException, unrouted)
    app.extensions["ocps_service"] = service
    return app
