"""What the web view shows: jobs and results turned into rows and pages, and their templates."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FunctionLoader, select_autoescape

from ..conventions import LOG_RESULT_NAME, output_prefix
from ..models import FINAL_PHASES, JobRecord, Phase, ResultFile
from ..resultids import encode_result_id

__all__ = [
    "JOBS_PER_PAGE",
    "LOG_TAIL_BYTES",
    "LOG_TAIL_LINES",
    "JobFilters",
    "JobRow",
    "ResultRow",
    "duration_text",
    "fingerprint",
    "job_row",
    "log_result",
    "render_page",
    "result_rows",
    "time_text",
]

JOBS_PER_PAGE = 50
LOG_TAIL_BYTES = 64 * 1024  # the most of a log a page holds, served or followed
LOG_TAIL_LINES = 1000  # a running job's page starts from its log's last lines
FIRST_LINE_LENGTH = 200

_TEMPLATES = "web_templates"


def _template_source(name: str) -> str | None:
    """A template shipped in the package (``ocps_jobs/http/web_templates``)."""
    path = resources.files(__package__).joinpath(_TEMPLATES, name)
    return path.read_text(encoding="utf-8") if path.is_file() else None


@cache
def _environment() -> Environment:
    """The templates' environment, built on first use: every value is escaped."""
    return Environment(
        loader=FunctionLoader(_template_source),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(template: str, **values: Any) -> str:
    """One template rendered with ``values``; HTML-escaped throughout."""
    return _environment().get_template(template).render(**values)


def time_text(value: datetime | None) -> str:
    """A time as the pages show it: UTC to the second, ``2026-03-17 20:58:54Z``; or empty."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def duration_text(record: JobRecord, now: datetime) -> str:
    """How long the job ran (or has run so far): ``1 h 02 min``, ``3 min 05 s``, ``12 s``."""
    if record.start_time is None:
        return ""
    end = record.end_time or (None if record.phase in FINAL_PHASES else now)
    if end is None:
        return ""
    seconds = max(0, int((end - record.start_time).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {seconds:02d} s"
    return f"{seconds} s"


def first_line(text: str) -> str:
    """The first non-empty line of an error message, shortened for a table cell."""
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            if len(line) > FIRST_LINE_LENGTH:
                return line[: FIRST_LINE_LENGTH - 1] + "…"
            return line
    return ""


@dataclass(frozen=True)
class JobFilters:
    """The jobs table's filters and page (the cursor of the list), as the query string has them."""

    phase: Phase | None = None
    run_id: str = ""
    created_after: datetime | None = None
    cursor: str = ""  # the page after this job's place (the service's list cursor); "" first

    def query(self, **changes: Any) -> str:
        """The query string of these filters with ``changes`` (e.g. another page)."""
        values = {
            "phase": self.phase.value if self.phase else "",
            "run_id": self.run_id,
            "created_after": (
                self.created_after.strftime("%Y-%m-%dT%H:%M:%S") if self.created_after else ""
            ),
            "cursor": self.cursor,
        }
        values.update({key: str(value) for key, value in changes.items()})
        kept = {key: value for key, value in values.items() if value}
        return urlencode(kept)

    def matches(self, record: JobRecord) -> bool:
        """Whether a job passes the run id filter (a substring of the run id)."""
        return not self.run_id or self.run_id in record.run_id


@dataclass(frozen=True)
class JobRow:
    """One row of the jobs table."""

    job_id: str
    run_id: str
    owner: str
    phase: str
    created: str
    started: str
    ended: str
    duration: str
    error: str


def job_row(record: JobRecord, now: datetime) -> JobRow:
    """A job as the table shows it."""
    return JobRow(
        job_id=record.job_id,
        run_id=record.run_id,
        owner=record.owner,
        phase=record.phase.value,
        created=time_text(record.creation_time),
        started=time_text(record.start_time),
        ended=time_text(record.end_time),
        duration=duration_text(record, now),
        error=first_line(record.error_message),
    )


def fingerprint(rows: Sequence[JobRow], more: bool) -> str:
    """A short digest of what a table shows: changes when a job appears or changes phase."""
    digest = hashlib.sha256(b"more" if more else b"last")
    for row in rows:
        digest.update(f"|{row.job_id}:{row.phase}:{row.started}:{row.ended}".encode())
    return digest.hexdigest()[:20]


@dataclass(frozen=True)
class ResultRow:
    """One result of a job: its path under the job's outputs, size, type and download link."""

    name: str
    size: int
    size_text: str
    content_type: str
    href: str


def size_text(size: int) -> str:
    """Bytes in a unit a reader takes in at once: ``812 B``, ``1.5 KiB``, ``3.2 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def result_name(job_id: str, result: ResultFile) -> str:
    """The result's path relative to the job's output folder (its key's tail otherwise)."""
    prefix = output_prefix(job_id)
    if result.key.startswith(prefix):
        return result.key[len(prefix) :]
    return posixpath.basename(result.key)


def result_rows(job_id: str, results: Sequence[ResultFile], download_base: str) -> list[ResultRow]:
    """The results as the job page lists them, each linking to the API's download route."""
    return [
        ResultRow(
            name=result_name(job_id, result),
            size=result.size,
            size_text=size_text(result.size),
            content_type=result.content_type,
            href=f"{download_base}/{quote(encode_result_id(result.key), safe='')}",
        )
        for result in results
    ]


def log_result(job_id: str, results: Sequence[ResultFile]) -> ResultFile | None:
    """The job's log among its results (``ocps-job.log``, else a replica's first log)."""
    logs = [
        result
        for result in results
        if posixpath.basename(result.key).startswith("ocps-job")
        and result.key.endswith(".log")
        and posixpath.dirname(result_name(job_id, result)) == ""
    ]
    for result in logs:
        if posixpath.basename(result.key) == LOG_RESULT_NAME:
            return result
    return min(logs, key=lambda result: result.key, default=None)
