"""The Prometheus metrics of a process, and their text exposition for ``/metrics``.

One registry per process (functions-framework runs one gunicorn worker per container):
counters of what this instance did, and, at each scrape, gauges of the jobs by phase.
Which instance counts what, and how to sum them, is in the README ("Logs and metrics").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = [
    "ARCHIVE_WRITES",
    "BACKEND_ERRORS",
    "CONTENT_TYPE",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_SECONDS",
    "JOBS_CREATED",
    "JOBS_ENDED",
    "JOB_EXECUTING_SECONDS",
    "JOB_QUEUED_SECONDS",
    "REGISTRY",
    "RESULT_BYTES",
    "RESULT_FILES",
    "UPLOAD_RETRIES",
    "UPLOAD_SKIPPED",
    "count_backend_error",
    "exposition",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry()

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)

HTTP_REQUESTS = Counter(
    "ocps_http_requests",
    "Requests answered, by function, route template, method and status.",
    ["function", "route", "method", "status"],
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "ocps_http_request_duration_seconds",
    "Time to answer a request (a streamed download until its first byte), by route.",
    ["function", "route", "method"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
JOBS_CREATED = Counter("ocps_jobs_created", "Jobs created by this instance.", registry=REGISTRY)
JOBS_ENDED = Counter(
    "ocps_jobs_ended",
    "Jobs that reached a final phase, counted once per job by the instance that saw it first.",
    ["phase"],
    registry=REGISTRY,
)
JOB_QUEUED_SECONDS = Histogram(
    "ocps_job_queued_seconds",
    "Seconds from creation to start, of the jobs counted in ocps_jobs_ended.",
    buckets=_JOB_BUCKETS,
    registry=REGISTRY,
)
JOB_EXECUTING_SECONDS = Histogram(
    "ocps_job_executing_seconds",
    "Seconds from start to end, of the jobs counted in ocps_jobs_ended, by final phase.",
    ["phase"],
    buckets=_JOB_BUCKETS,
    registry=REGISTRY,
)
RESULT_FILES = Counter(
    "ocps_results_uploaded_files", "Result files uploaded (from the manifests).", registry=REGISTRY
)
RESULT_BYTES = Counter(
    "ocps_results_uploaded_bytes", "Bytes of result files (from the manifests).", registry=REGISTRY
)
UPLOAD_RETRIES = Counter(
    "ocps_upload_retries",
    "Store calls the uploader retried (from the manifests).",
    registry=REGISTRY,
)
UPLOAD_SKIPPED = Counter(
    "ocps_upload_skipped_files",
    "Files the uploader could not keep (from the manifests).",
    registry=REGISTRY,
)
ARCHIVE_WRITES = Counter(
    "ocps_archive_writes",
    "Writes of a job's archived record (job.json) by this instance, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
BACKEND_ERRORS = Counter(
    "ocps_backend_errors",
    "Failed calls to Kubernetes or S3 (unreachable or 5xx), by system and action.",
    ["system", "action"],
    registry=REGISTRY,
)


def count_backend_error(system: str) -> Callable[[str], None]:
    """A callback counting failed calls of ``system`` by action (given to the S3 store)."""

    def count(action: str) -> None:
        BACKEND_ERRORS.labels(system, action).inc()

    return count


class _PhaseGauges(Collector):
    """``ocps_jobs_current{phase}``, read from the backend when scraped."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "ocps_jobs_current",
            "Jobs by current phase (as this instance sees them).",
            labels=["phase"],
        )
        for phase, count in sorted(self._counts().items()):
            family.add_metric([phase], count)
        yield family


def exposition(phase_counts: Callable[[], Mapping[str, int]] | None = None) -> bytes:
    """The process's metrics in the Prometheus text format, with the phase gauges if given."""
    text = generate_latest(REGISTRY)
    if phase_counts is not None:
        gauges = CollectorRegistry(auto_describe=False)
        gauges.register(_PhaseGauges(phase_counts))
        text += generate_latest(gauges)
    return text
