"""Every name the product shares with the outside world: annotations, labels, env, object keys."""

from __future__ import annotations

import re

__all__ = [
    "ANNOTATIONS",
    "ANNOTATION_PREFIX",
    "COMPLETION_INDEX_ANNOTATION",
    "CONTAINER_GIT_CLONE",
    "CONTAINER_JOB",
    "CONTAINER_UPLOADER",
    "DEFAULT_PAGE_SIZE",
    "ENV_JOB_REPLICA_INDEX",
    "JOB_ID_PATTERN",
    "LABEL_JOB_ID",
    "LABEL_MANAGED_BY",
    "LABEL_OWNER",
    "LABEL_RUN_ID",
    "LOG_RESULT_NAME",
    "MANAGED_BY",
    "MAX_PAGE_SIZE",
    "RESERVED_ENV_NAMES",
    "archive_key",
    "is_job_id",
    "job_name",
    "job_prefix",
    "manifest_key",
    "output_key",
    "output_prefix",
    "replica_log_name",
    "replica_manifest_key",
]

# --- job identifiers -----------------------------------------------------------------------

JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


def is_job_id(value: str) -> bool:
    """True for a well-formed job id: 32 lower-case hex digits."""
    return bool(JOB_ID_PATTERN.fullmatch(value))


# --- job lists ------------------------------------------------------------------------------

# The most jobs one page of a list holds (JSON ``limit``, the CLI's ``--limit``).
MAX_PAGE_SIZE = 1000
# The jobs on one page when a caller pages without saying how many (a cursor alone).
DEFAULT_PAGE_SIZE = 100


# --- Kubernetes labels (selectors only) and annotations (all metadata) ----------------------

ANNOTATION_PREFIX = "ocps.lsst.io/"
MANAGED_BY = "ocps-jobs"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB_ID = ANNOTATION_PREFIX + "job-id"
LABEL_OWNER = ANNOTATION_PREFIX + "owner"
LABEL_RUN_ID = ANNOTATION_PREFIX + "run-id"


class ANNOTATIONS:
    """Annotation keys on a Kubernetes Job, all under ``ANNOTATION_PREFIX``."""

    RUN_ID = ANNOTATION_PREFIX + "run-id"
    OWNER = ANNOTATION_PREFIX + "owner"
    PARAMETERS = ANNOTATION_PREFIX + "parameters"
    CREATION_TIME = ANNOTATION_PREFIX + "creation-time"
    EXECUTION_DURATION = ANNOTATION_PREFIX + "execution-duration"
    DESTRUCTION = ANNOTATION_PREFIX + "destruction"
    ABORT_REQUESTED = ANNOTATION_PREFIX + "abort-requested"
    ABORT_REASON = ANNOTATION_PREFIX + "abort-reason"
    # A job that could not start within the start timeout: when it was given up, and why.
    START_TIMED_OUT = ANNOTATION_PREFIX + "start-timed-out"
    START_FAILURE = ANNOTATION_PREFIX + "start-failure"
    # On the pod template: the record the uploader archives, which it reads as a file.
    RECORD = ANNOTATION_PREFIX + "record"


# --- containers of a job's pod -------------------------------------------------------------

CONTAINER_JOB = "job"
CONTAINER_GIT_CLONE = "git-clone"
CONTAINER_UPLOADER = "uploader"
JOB_NAME_PREFIX = "ocps-job-"


def job_name(job_id: str) -> str:
    """Name of the Kubernetes Job of a job id."""
    return JOB_NAME_PREFIX + job_id


# --- environment every job sees -------------------------------------------------------------

ENV_JOB_ID = "JOB_ID"
ENV_JOB_OUTPUT_DIR = "JOB_OUTPUT_DIR"
ENV_JOB_SOURCE_DIR = "JOB_SOURCE_DIR"
ENV_SRC_GIT_URL = "SRC_GIT_URL"
ENV_GIT_COMMIT_REF = "GIT_COMMIT_REF"
ENV_PROJECT_PATH = "PROJECT_PATH"
ENV_DATA_DIR_PREFIX = "DATA_DIR_"
# With replicas > 1: which one this process is, 0 to replicas - 1.
ENV_JOB_REPLICA_INDEX = "JOB_REPLICA_INDEX"
# Where Kubernetes writes a pod's index in an Indexed Job.
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

# The caller may not override these: the product's own plumbing depends on them.
RESERVED_ENV_NAMES = frozenset(
    {ENV_JOB_ID, ENV_JOB_OUTPUT_DIR, ENV_JOB_SOURCE_DIR, ENV_SRC_GIT_URL, ENV_GIT_COMMIT_REF}
)

# The job's combined stdout and stderr, kept as a result file beside its outputs.
LOG_RESULT_NAME = "ocps-job.log"


def replica_log_name(index: int) -> str:
    """The log of one replica of a Kubernetes job with replicas > 1 (each pod has its own)."""
    return f"ocps-job-{index}.log"


# --- object store layout (DESIGN section 6) ---------------------------------------------------

JOBS_ROOT = "jobs/"


def job_prefix(job_id: str) -> str:
    """Every object of one job lives under this prefix."""
    return f"{JOBS_ROOT}{job_id}/"


def output_prefix(job_id: str) -> str:
    """The job's output files live under this prefix."""
    return f"{JOBS_ROOT}{job_id}/out/"


def output_key(job_id: str, relative_path: str) -> str:
    """Object key of one output file, from its path relative to ``$JOB_OUTPUT_DIR``."""
    return output_prefix(job_id) + relative_path


def manifest_key(job_id: str) -> str:
    """The upload manifest, written last: its presence means the outputs are complete."""
    return f"{JOBS_ROOT}{job_id}/manifest.json"


def archive_key(job_id: str) -> str:
    """The archived final job record."""
    return f"{JOBS_ROOT}{job_id}/job.json"


def ended_marker_key(job_id: str) -> str:
    """Written once, by the first instance that sees the job final: it logs and counts the end."""
    return f"{JOBS_ROOT}{job_id}/ended.json"


def replica_manifest_key(job_id: str, index: int) -> str:
    """One replica's upload manifest (the last replica to finish merges them all)."""
    return f"{JOBS_ROOT}{job_id}/replicas/{index}/manifest.json"
