"""The operations routes every function and ``serve`` answer: liveness, readiness, metrics."""

from __future__ import annotations

from flask import Response

from ..http.render import json_response
from ..http.routing import Context, Route
from ..models import Phase
from . import metrics
from .health import check_readiness

__all__ = ["LIVENESS_PATH", "METRICS_PATH", "READINESS_PATH", "operations_routes"]

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"


def liveness(context: Context) -> Response:
    """200 while the process answers."""
    return json_response({"status": "ok"})


def readiness(context: Context) -> Response:
    """200 with the report when settings, backend and object store are up; else 503."""
    service = context.service
    result = check_readiness(service.settings, service.backend, service.store)
    return json_response(result.report, 200 if result.ready else 503)


def _metrics_with_phases(context: Context) -> Response:
    service = context.service

    def phase_counts() -> dict[str, int]:
        counts = dict.fromkeys((phase.value for phase in Phase), 0)
        for record in service.backend.list_records(None):
            service.events.observe(record)  # a scrape also finds the jobs that ended unread
            counts[record.phase.value] += 1
        return counts

    return Response(metrics.exposition(phase_counts), content_type=metrics.CONTENT_TYPE)


def _metrics(context: Context) -> Response:
    return Response(metrics.exposition(), content_type=metrics.CONTENT_TYPE)


def operations_routes(*, phase_gauges: bool) -> list[Route]:
    """The three routes, public; ``phase_gauges`` where the backend's jobs are watched anyway."""
    return [
        Route("GET", LIVENESS_PATH, liveness, public=True),
        Route("GET", READINESS_PATH, readiness, public=True),
        Route("GET", METRICS_PATH, _metrics_with_phases if phase_gauges else _metrics, public=True),
    ]
