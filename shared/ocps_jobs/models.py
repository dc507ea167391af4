"""Pydantic models: job requests as clients send them, job records as the service keeps them."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)

from .conventions import RESERVED_ENV_NAMES
from .podconfig import QUANTITY

__all__ = [
    "ACTIVE_PHASES",
    "FINAL_PHASES",
    "JOB_PARAMETERS",
    "LOG_REPLICAS_HEADER",
    "LOG_SKIPPED_HEADER",
    "MAX_JOB_OBJECT_RESULTS",
    "MAX_RESULTS_PAGE",
    "Caller",
    "DeleteResponse",
    "EnvironmentVariable",
    "ErrorBody",
    "JobDocument",
    "JobParameter",
    "JobParameters",
    "JobRecord",
    "JobRequest",
    "LogQuery",
    "ParameterKind",
    "Phase",
    "ResultFile",
    "ResultReference",
    "Spelled",
    "format_seed_time",
    "utcnow",
]

# Limits a client can meet; the README documents them.
MAX_COMMAND_LENGTH = 65_536
MAX_RUN_ID_LENGTH = 255
MAX_ENV_ENTRIES = 256
MAX_ENV_NAME_LENGTH = 255
MAX_ENV_VALUE_LENGTH = 32_768
MAX_URL_LENGTH = 2_048
MAX_COMMIT_REF_LENGTH = 255
MAX_REPLICAS = 16
# The job object (JSON and UWS) lists at most this many results, the first in the listing's
# order; past it, its jobInfo has the count and a link to the paginated listing.
MAX_JOB_OBJECT_RESULTS = 1000
# The most results one page of ``GET /api/v1/job/{jobId}/results?limit=`` holds.
MAX_RESULTS_PAGE = 1000


def utcnow() -> datetime:
    """The current time in UTC, to the second (the seed's times carry no fractions)."""
    return datetime.now(UTC).replace(microsecond=0)


def format_seed_time(value: datetime | None) -> str | None:
    """A time as the seed's JSON shows it: ``2021-03-17 20:58:54+00:00``."""
    if value is None:
        return None
    return str(value.astimezone(UTC).replace(microsecond=0))


class Phase(enum.StrEnum):
    """UWS execution phases, lower-case as the OCPS JSON interface shows them."""

    PENDING = "pending"
    QUEUED = "queued"
    EXECUTING = "executing"
    COMPLETED = "completed"
    ERROR = "error"
    ABORTED = "aborted"
    UNKNOWN = "unknown"
    HELD = "held"
    SUSPENDED = "suspended"
    ARCHIVED = "archived"

    @property
    def uws(self) -> str:
        """The phase as UWS XML spells it."""
        return self.value.upper()


ACTIVE_PHASES = frozenset(
    {Phase.PENDING, Phase.QUEUED, Phase.EXECUTING, Phase.HELD, Phase.SUSPENDED}
)
FINAL_PHASES = frozenset({Phase.COMPLETED, Phase.ERROR, Phase.ABORTED, Phase.ARCHIVED})


def _integral_number(value: Any) -> Any:
    """JSON Schema's integer includes ``2.0``: take it as 2 (text and booleans stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _utf8_at_most(limit: int) -> AfterValidator:
    """At most ``limit`` bytes in UTF-8: what execve() is given (an argument or variable)."""

    def check(value: str) -> str:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise ValueError(f"is {size} bytes in UTF-8; at most {limit} are accepted")
        return value

    return AfterValidator(check)


_NO_NUL = r"^[^\x00]*$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# No control characters (C0, DEL, C1) and no Unicode line or paragraph separators.
_PRINTABLE_LINE = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"


class EnvironmentVariable(BaseModel):
    """One ``{name, value}`` entry of a job's environment."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str,
        Field(pattern=_ENV_NAME, max_length=MAX_ENV_NAME_LENGTH),
        # A request may not set the reserved names (JobRequest's validator refuses them);
        # a job's own environment, as rendered, has them.
        WithJsonSchema(
            {
                "type": "string",
                "pattern": _ENV_NAME,
                "maxLength": MAX_ENV_NAME_LENGTH,
                "not": {"enum": sorted(RESERVED_ENV_NAMES)},
            },
            mode="validation",
        ),
    ]
    value: Annotated[
        str,
        Field(max_length=MAX_ENV_VALUE_LENGTH, pattern=_NO_NUL),
        _utf8_at_most(MAX_ENV_VALUE_LENGTH),
        # A request may send null for an empty value (see the validator below).
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "maxLength": MAX_ENV_VALUE_LENGTH, "pattern": _NO_NUL},
                    {"type": "null"},
                ],
                "default": "",
            },
            mode="validation",
        ),
    ] = ""

    @field_validator("value", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value


class ParameterKind(enum.StrEnum):
    """How a job parameter travels where JSON has no type: in a UWS form, on the command line."""

    TEXT = "text"
    INTEGER = "integer"
    ENVIRONMENT = "environment"  # name/value pairs: ``env NAME=value`` and a JSON array


@dataclass(frozen=True)
class Spelled:
    """A job parameter's names outside JSON, given with its field of ``JobRequest``.

    ``uws`` is its UWS name (matched in any case); ``cli`` the ``ocps-jobs submit`` option,
    or a positional argument's metavar when it does not start with ``-``; ``kept`` False
    for one the record keeps outside ``JobParameters`` (the run id).
    """

    uws: str
    cli: str
    kept: bool = True


@dataclass(frozen=True)
class JobParameter:
    """One job parameter as every interface reads it, derived from ``JobRequest``."""

    name: str
    kind: ParameterKind
    uws: str
    cli: str
    kept: bool
    required: bool
    default: Any
    description: str


# A resource request: a Kubernetes quantity, or empty (the same as not given).
_REQUEST_QUANTITY = r"^(" + QUANTITY.removeprefix("^").removesuffix("$") + r")?$"


class JobRequest(BaseModel):
    """The body of ``PUT /api/v1/job``, as the OCPS CSC sends it."""

    model_config = ConfigDict(extra="forbid", title="JobRequest")

    command: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_COMMAND_LENGTH,
            pattern=_NO_NUL,
            description=f"Run as `/bin/bash -c <command>`; at most {MAX_COMMAND_LENGTH} bytes "
            "in UTF-8.",
        ),
        _utf8_at_most(MAX_COMMAND_LENGTH),
        Spelled(uws="command", cli="COMMAND"),
    ]
    run_id: Annotated[
        str | None,
        Field(
            max_length=MAX_RUN_ID_LENGTH,
            pattern=_PRINTABLE_LINE,
            description="Free-form identifier for the client; defaults to the job id.",
        ),
        Spelled(uws="RUNID", cli="--run-id", kept=False),
    ] = None
    environment: Annotated[
        list[EnvironmentVariable],
        Field(max_length=MAX_ENV_ENTRIES, description="Variables added after the system ones."),
        Spelled(uws="environment", cli="--env"),
    ] = []
    url: Annotated[
        str | None,
        Field(
            max_length=MAX_URL_LENGTH,
            # Empty is accepted as "none" (the validator below), so the pattern allows it.
            pattern=r"^([^\x00-\x20\x7f\-][^\x00-\x20\x7f]*)?$",
            description="Git repository cloned into `$JOB_SOURCE_DIR` before the command runs.",
        ),
        Spelled(uws="url", cli="--git-url"),
    ] = None
    commit_ref: Annotated[
        str | None,
        Field(
            max_length=MAX_COMMIT_REF_LENGTH,
            pattern=r"^([^\x00-\x20\x7f~^:?*\[\\\-][^\x00-\x20\x7f~^:?*\[\\]*)?$",
            description="Branch, tag or commit checked out after the clone.",
        ),
        Spelled(uws="commit_ref", cli="--commit-ref"),
    ] = None
    replicas: Annotated[
        int,
        Field(ge=1, le=MAX_REPLICAS, strict=True),
        BeforeValidator(_integral_number),
        Spelled(uws="replicas", cli="--replicas"),
    ] = 1

    cpu: Annotated[
        str | None,
        Field(
            max_length=32,
            pattern=_REQUEST_QUANTITY,
            description="CPU the job's container asks for (e.g. `4`, `500m`), at most the "
            "operator's maximum; default: the operator's resources.",
        ),
        Spelled(uws="cpu", cli="--cpu"),
    ] = None
    memory: Annotated[
        str | None,
        Field(
            max_length=32,
            pattern=_REQUEST_QUANTITY,
            description="Memory the job's container asks for (e.g. `16Gi`), at most the "
            "operator's maximum; default: the operator's resources.",
        ),
        Spelled(uws="memory", cli="--memory"),
    ] = None

    @field_validator("run_id", "url", "commit_ref", "cpu", "memory", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("environment")
    @classmethod
    def _no_reserved_names(cls, value: list[EnvironmentVariable]) -> list[EnvironmentVariable]:
        reserved = sorted({entry.name for entry in value} & RESERVED_ENV_NAMES)
        if reserved:
            raise ValueError(
                f"reserved environment variable(s) cannot be set: {', '.join(reserved)}"
            )
        return value


def _declared_parameters(model: type[BaseModel]) -> tuple[JobParameter, ...]:
    """The job parameters: the fields of ``model`` with their ``Spelled`` names."""
    declared = []
    for name, field in model.model_fields.items():
        (spelled,) = [item for item in field.metadata if isinstance(item, Spelled)]
        if field.annotation is int:
            kind = ParameterKind.INTEGER
        elif "list" in str(field.annotation):
            kind = ParameterKind.ENVIRONMENT
        else:
            kind = ParameterKind.TEXT
        declared.append(
            JobParameter(
                name=name,
                kind=kind,
                uws=spelled.uws,
                cli=spelled.cli,
                kept=spelled.kept,
                required=field.is_required(),
                default=None if field.is_required() else field.default,
                description=field.description or "",
            )
        )
    return tuple(declared)


# Every job parameter, in JobRequest's order: JSON and UWS parsing, the OpenAPI document,
# the client's submit and the CLI all read them from here.
JOB_PARAMETERS = _declared_parameters(JobRequest)


class JobParameters(BaseModel):
    """What the caller asked for, kept verbatim with the job: the parameters ``kept``."""

    command: str
    environment: list[EnvironmentVariable] = []
    url: str | None = None
    commit_ref: str | None = None
    replicas: int = 1
    cpu: str | None = None
    memory: str | None = None

    @classmethod
    def from_request(cls, request: JobRequest) -> JobParameters:
        """The parameters of a validated request, as the job keeps them."""
        kept = {item.name for item in JOB_PARAMETERS if item.kept}
        return cls.model_validate(request.model_dump(include=kept))


class ResultFile(BaseModel):
    """One output file of a finished job."""

    key: str
    size: int
    content_type: str = "application/octet-stream"
    sha256: str = ""  # hex, as the manifest lists it; empty when unknown

    @classmethod
    def listed(cls, files: Iterable[Any]) -> list[ResultFile]:
        """The results for the files a manifest lists (``uploader.manifest.ManifestFile``)."""
        return [
            cls(key=item.key, size=item.size, content_type=item.content_type, sha256=item.sha256)
            for item in files
        ]


class JobRecord(BaseModel):
    """Everything the service knows of one job; persisted and archived as JSON."""

    job_id: str
    run_id: str
    owner: str = ""
    phase: Phase = Phase.PENDING
    creation_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    execution_duration: int | None = None
    destruction: datetime | None = None
    parameters: JobParameters
    environment: list[EnvironmentVariable] = []
    error_message: str = ""
    # While queued: why its pods do not start (unschedulable, image pull, missing Secret).
    waiting_reason: str = ""
    results: list[ResultFile] | None = None
    # Set when ``results`` holds only the first ``MAX_JOB_OBJECT_RESULTS``: how many the job
    # has (the upload manifest lists every one).
    result_count: int | None = None
    # What exactly ran: the commit the clone checked out, the job container's image digest.
    commit_sha: str = ""
    image_digest: str = ""

    @property
    def is_final(self) -> bool:
        """True once the job can no longer change phase by itself."""
        return self.phase in FINAL_PHASES


# --- documents of the OCPS JSON interface (field order as the seed) -------------------------


class ResultReference(BaseModel):
    """A result as the job object lists it."""

    id: str = Field(description="URL-safe base64 (no padding) of the object key.")
    uri: str = Field(description="Where the object lives, e.g. `s3://bucket/jobs/<id>/out/f`.")


class ResultListing(ResultReference):
    """A result as ``/results`` lists it: the job object's fields plus size and type."""

    size: int
    mimeType: str
    sha256: str = Field(description="SHA-256 of the file, hex, as its upload manifest lists it.")


class SeedParameters(BaseModel):
    """The job object's ``parameters``: command as the argv the job runs, full environment."""

    command: list[str]
    environment: list[EnvironmentVariable]
    url: str | None
    commit_ref: str | None


class ErrorSummary(BaseModel):
    """The job object's ``errorSummary``."""

    message: str


class JobDocument(BaseModel):
    """The job object of the OCPS JSON interface, field for field as the 2021 seed."""

    model_config = ConfigDict(title="Job")

    jobId: str
    runId: str
    ownerId: str
    phase: Phase
    creationTime: str = Field(examples=["2021-03-17 20:58:54+00:00"])
    startTime: str | None
    endTime: str | None
    executionDuration: int | None
    destruction: str | None
    parameters: SeedParameters
    results: list[ResultReference] = Field(
        description=f"The first {MAX_JOB_OBJECT_RESULTS} results; all of them are at "
        "`/api/v1/job/{jobId}/results`."
    )
    errorSummary: ErrorSummary
    jobInfo: dict[str, Any] = Field(
        description="What ran (`commitSha`, `imageDigest`) once known; for a job with more "
        f"than {MAX_JOB_OBJECT_RESULTS} results, `resultCount` (all of them) and "
        "`resultsLink` (the first page of the paginated listing)."
    )


# A log answer carries this header when each line starts with its replica's index: ``[1] ``.
LOG_REPLICAS_HEADER = "X-OCPS-Log-Replicas"
# How many lines of each replica the answer starts after (``skip``, or where ``tail`` began).
LOG_SKIPPED_HEADER = "X-OCPS-Log-Skipped"


@dataclass(frozen=True)
class LogQuery:
    """What part of a job's log to send (``GET /api/v1/job/{jobId}/log``).

    ``skip`` holds, per replica index, how many lines the caller already has (a follow that
    reconnects); ``tail`` keeps the last N lines of each replica; ``follow`` keeps sending
    new lines until the job ends or ``wait_max_seconds`` pass (then the answer ends cleanly
    and the caller reconnects with ``skip``).
    """

    tail: int | None = None
    follow: bool = False
    skip: tuple[int, ...] = ()

    def query_parameters(self) -> dict[str, str]:
        """The query string that asks for this part (the server parses it back)."""
        parameters = {}
        if self.tail is not None:
            parameters["tail"] = str(self.tail)
        if self.follow:
            parameters["follow"] = "true"
        if any(self.skip):
            parameters["skip"] = ",".join(str(count) for count in self.skip)
        return parameters


class DeleteResponse(BaseModel):
    """The body of a successful ``DELETE /api/v1/job/{jobId}``, as the seed answered."""

    status: str = "ok"
    message: str = ""
    code: int = 200


class ErrorBody(BaseModel):
    """Every error answer of the JSON interface."""

    error: str = Field(description="A stable machine-readable code.")
    message: str = Field(description="What went wrong, for a person.")


class Caller(BaseModel):
    """Who is asking: the owner name jobs are created under, and whether they may see all."""

    model_config = ConfigDict(frozen=True)

    name: str = ""
    admin: bool = False

    def may_see(self, record: JobRecord) -> bool:
        """Owners see their own jobs; an admin sees every job."""
        return self.admin or record.owner == self.name
