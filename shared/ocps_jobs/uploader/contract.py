"""The uploader's contract, declared once: its variables, work-file names and defaults (stdlib)."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from ..conventions import ENV_JOB_ID, ENV_JOB_OUTPUT_DIR, ENV_JOB_REPLICA_INDEX, LOG_RESULT_NAME

__all__ = [
    "COMMIT_FILE_NAME",
    "DEFAULT_BUCKET",
    "DEFAULT_LOG_FORMAT",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_OUTPUT_LIMITS",
    "DEFAULT_S3_REGION",
    "DEFAULT_UPLOAD_ATTEMPTS",
    "DEFAULT_UPLOAD_BACKOFF_SECONDS",
    "DEFAULT_UPLOAD_INTERVAL_SECONDS",
    "ENV_BUCKET",
    "ENV_EXIT_CODE_FILE",
    "ENV_JOB_RECORD",
    "ENV_JOB_RECORD_FILE",
    "ENV_LOG_FILE",
    "ENV_LOG_FORMAT",
    "ENV_LOG_LEVEL",
    "ENV_MAX_OUTPUT_BYTES",
    "ENV_MAX_OUTPUT_DEPTH",
    "ENV_MAX_OUTPUT_FILES",
    "ENV_REPLICAS",
    "ENV_S3_ENDPOINT",
    "ENV_S3_REGION",
    "ENV_STORE_DIR",
    "ENV_UPLOAD_ATTEMPTS",
    "ENV_UPLOAD_BACKOFF",
    "ENV_UPLOAD_INTERVAL",
    "EXIT_CODE_FILE_NAME",
    "FAILURE_FILE_NAME",
    "LOG_FILE_NAME",
    "STDERR_FILE_NAME",
    "OutputLimits",
    "UploaderConfig",
    "UploaderConfigError",
]

# --- the variables the uploader reads (besides the job's JOB_ID and JOB_OUTPUT_DIR) ----------

ENV_EXIT_CODE_FILE = "OCPS_EXIT_CODE_FILE"
ENV_LOG_FILE = "OCPS_LOG_FILE"
ENV_BUCKET = "OCPS_BUCKET"
ENV_S3_REGION = "OCPS_S3_REGION"
ENV_S3_ENDPOINT = "OCPS_S3_ENDPOINT"
ENV_STORE_DIR = "OCPS_STORE_DIR"
ENV_UPLOAD_INTERVAL = "OCPS_UPLOAD_INTERVAL"
ENV_UPLOAD_ATTEMPTS = "OCPS_UPLOAD_ATTEMPTS"
ENV_UPLOAD_BACKOFF = "OCPS_UPLOAD_BACKOFF"
ENV_JOB_RECORD_FILE = "OCPS_JOB_RECORD_FILE"
ENV_JOB_RECORD = "OCPS_JOB_RECORD"
ENV_REPLICAS = "OCPS_REPLICAS"
ENV_LOG_LEVEL = "OCPS_LOG_LEVEL"
ENV_LOG_FORMAT = "OCPS_LOG_FORMAT"
# The operator's limits on one job's outputs: the same names as the service's settings.
ENV_MAX_OUTPUT_BYTES = "OCPS_MAX_OUTPUT_BYTES"
ENV_MAX_OUTPUT_FILES = "OCPS_MAX_OUTPUT_FILES"
ENV_MAX_OUTPUT_DEPTH = "OCPS_MAX_OUTPUT_DEPTH"

# --- the files the job's side leaves in its work folder (the output folder's parent) --------

EXIT_CODE_FILE_NAME = "exit-code"  # the command's exit code, written (atomically) when it ends
STDERR_FILE_NAME = "stderr"  # the command's standard error, for the record's error message
FAILURE_FILE_NAME = "failure"  # why the pod failed before the command (a failed git clone)
LOG_FILE_NAME = LOG_RESULT_NAME  # stdout and stderr together, kept as a result
COMMIT_FILE_NAME = "commit"  # the commit the clone checked out (``git rev-parse HEAD``)

# --- defaults --------------------------------------------------------------------------------

DEFAULT_BUCKET = "ocps-jobs"
DEFAULT_S3_REGION = "us-east-1"
DEFAULT_UPLOAD_INTERVAL_SECONDS = 30
DEFAULT_UPLOAD_ATTEMPTS = 6
DEFAULT_UPLOAD_BACKOFF_SECONDS = 0.5
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_LOG_FORMAT = "auto"  # JSON lines, or text in a terminal (observability.logs)

Number = TypeVar("Number", int, float)


@dataclass(frozen=True)
class OutputLimits:
    """What one job's results may hold; the files past a limit are skipped, the rest kept.

    ``max_bytes`` is the sum of the files' apparent sizes (a sparse file counts in full),
    ``max_files`` the number of files, ``max_depth`` the most folders a file may be below
    ``$JOB_OUTPUT_DIR`` (``a/b/c.txt`` is two deep). The captured log is not counted.
    """

    max_bytes: int = 100 * 1024**3
    max_files: int = 100_000
    max_depth: int = 64


DEFAULT_OUTPUT_LIMITS = OutputLimits()


class UploaderConfigError(ValueError):
    """A variable of the uploader's environment is missing or has a value it cannot use."""


@dataclass(frozen=True)
class UploaderConfig:
    """Everything the uploader is told, as the Job builder writes it and the uploader reads it.

    Paths are the pod's (POSIX) paths, as text. ``None`` is "not set": the exit-code file
    then is the work folder's, and the record is the inline ``job_record`` if any.
    ``replica_index`` is set by the pod itself (the downward API) in an Indexed Job.
    """

    job_id: str
    output_dir: str
    exit_code_file: str | None = None
    log_file: str | None = None
    bucket: str = DEFAULT_BUCKET
    s3_region: str = DEFAULT_S3_REGION
    s3_endpoint: str | None = None
    store_dir: str | None = None
    upload_interval_seconds: float = DEFAULT_UPLOAD_INTERVAL_SECONDS
    upload_attempts: int = DEFAULT_UPLOAD_ATTEMPTS
    upload_backoff_seconds: float = DEFAULT_UPLOAD_BACKOFF_SECONDS
    job_record_file: str | None = None
    job_record: str | None = None
    replicas: int = 1
    replica_index: int | None = None
    log_level: str = DEFAULT_LOG_LEVEL
    log_format: str = DEFAULT_LOG_FORMAT
    limits: OutputLimits = DEFAULT_OUTPUT_LIMITS

    @property
    def work_dir(self) -> str:
        """The work folder: the output folder's parent, where the job's side leaves its files."""
        return posixpath.dirname(self.output_dir.rstrip("/"))

    def work_file(self, name: str) -> str:
        """The path of one of the work folder's files (``EXIT_CODE_FILE_NAME``...)."""
        return posixpath.join(self.work_dir, name)

    @property
    def exit_code_path(self) -> str:
        """Where the job's wrapper writes the command's exit code."""
        return self.exit_code_file or self.work_file(EXIT_CODE_FILE_NAME)

    @property
    def index(self) -> int:
        """The replica's index: 0 unless the job has several replicas."""
        return (self.replica_index or 0) if self.replicas > 1 else 0

    def to_environment(self) -> dict[str, str]:
        """The variables that tell the uploader this configuration.

        Unset fields are left out, and so is the replica count of a plain (one-pod) job.
        """
        optional = {
            ENV_EXIT_CODE_FILE: self.exit_code_file,
            ENV_LOG_FILE: self.log_file,
            ENV_S3_ENDPOINT: self.s3_endpoint,
            ENV_STORE_DIR: self.store_dir,
            ENV_JOB_RECORD_FILE: self.job_record_file,
            ENV_JOB_RECORD: self.job_record,
            ENV_JOB_REPLICA_INDEX: None if self.replica_index is None else str(self.replica_index),
            ENV_REPLICAS: str(self.replicas) if self.replicas != 1 else None,
        }
        return {
            ENV_JOB_ID: self.job_id,
            ENV_JOB_OUTPUT_DIR: self.output_dir,
            ENV_BUCKET: self.bucket,
            ENV_S3_REGION: self.s3_region,
            ENV_UPLOAD_INTERVAL: _number_text(self.upload_interval_seconds),
            ENV_UPLOAD_ATTEMPTS: str(self.upload_attempts),
            ENV_UPLOAD_BACKOFF: _number_text(self.upload_backoff_seconds),
            ENV_LOG_LEVEL: self.log_level,
            ENV_LOG_FORMAT: self.log_format,
            ENV_MAX_OUTPUT_BYTES: str(self.limits.max_bytes),
            ENV_MAX_OUTPUT_FILES: str(self.limits.max_files),
            ENV_MAX_OUTPUT_DEPTH: str(self.limits.max_depth),
            **{name: value for name, value in optional.items() if value is not None},
        }

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> UploaderConfig:
        """The configuration the variables ``env`` describe; UploaderConfigError naming a bad one.

        An empty value is the same as an unset variable.
        """

        def text(name: str) -> str | None:
            return env.get(name) or None

        def required(name: str) -> str:
            value = text(name)
            if value is None:
                raise UploaderConfigError(f"{name} is not set")
            return value

        def number(
            name: str, parse: Callable[[str], Number], default: Number, minimum: float
        ) -> Number:
            value = text(name)
            if value is None:
                return default
            try:
                parsed = parse(value)
            except ValueError:
                parsed = None
            if parsed is None or not minimum <= parsed < float("inf"):
                kind = "a whole number" if parse is int else "a number"
                raise UploaderConfigError(f"{name} must be {kind} ≥ {minimum:g}, not {value!r}")
            return parsed

        index = text(ENV_JOB_REPLICA_INDEX)
        return cls(
            job_id=required(ENV_JOB_ID),
            output_dir=required(ENV_JOB_OUTPUT_DIR),
            exit_code_file=text(ENV_EXIT_CODE_FILE),
            log_file=text(ENV_LOG_FILE),
            bucket=text(ENV_BUCKET) or DEFAULT_BUCKET,
            s3_region=text(ENV_S3_REGION) or DEFAULT_S3_REGION,
            s3_endpoint=text(ENV_S3_ENDPOINT),
            store_dir=text(ENV_STORE_DIR),
            upload_interval_seconds=number(
                ENV_UPLOAD_INTERVAL, float, float(DEFAULT_UPLOAD_INTERVAL_SECONDS), 0
            ),
            upload_attempts=number(ENV_UPLOAD_ATTEMPTS, int, DEFAULT_UPLOAD_ATTEMPTS, 1),
            upload_backoff_seconds=number(
                ENV_UPLOAD_BACKOFF, float, DEFAULT_UPLOAD_BACKOFF_SECONDS, 0
            ),
            job_record_file=text(ENV_JOB_RECORD_FILE),
            job_record=text(ENV_JOB_RECORD),
            replicas=number(ENV_REPLICAS, int, 1, 1),
            replica_index=None if index is None else number(ENV_JOB_REPLICA_INDEX, int, 0, 0),
            log_level=text(ENV_LOG_LEVEL) or DEFAULT_LOG_LEVEL,
            log_format=text(ENV_LOG_FORMAT) or DEFAULT_LOG_FORMAT,
            limits=OutputLimits(
                max_bytes=number(ENV_MAX_OUTPUT_BYTES, int, DEFAULT_OUTPUT_LIMITS.max_bytes, 1),
                max_files=number(ENV_MAX_OUTPUT_FILES, int, DEFAULT_OUTPUT_LIMITS.max_files, 1),
                max_depth=number(ENV_MAX_OUTPUT_DEPTH, int, DEFAULT_OUTPUT_LIMITS.max_depth, 0),
            ),
        )


def _number_text(value: float) -> str:
    """``30`` for 30.0, ``0.5`` for 0.5: what a person would write in the variable."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
