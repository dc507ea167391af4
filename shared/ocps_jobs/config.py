"""One settings object, read once from ``OCPS_*`` environment variables and passed down."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from .conventions import RESERVED_ENV_NAMES
from .errors import SettingsError
from .podconfig import (
    DNS_SUBDOMAIN,
    QUANTITY,
    DataVolume,
    JobSecretFiles,
    JobSecurityContext,
    JobVariable,
    ResourceProfile,
    Toleration,
    check_label_key,
    check_label_value,
)
from .uploader.contract import DEFAULT_OUTPUT_LIMITS, DEFAULT_UPLOAD_INTERVAL_SECONDS, OutputLimits

__all__ = ["Settings", "default_data_dir"]

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Settings of the Kubernetes job pod only (the embedded backend says once it ignores them).
_POD_ONLY = frozenset(
    {
        "data_volume_claims",
        "pod_annotations",
        "job_secret_files",
        "job_security_context",
        "job_node_selector",
        "job_tolerations",
        "job_affinity",
        "job_priority_class",
        "job_image_pull_secrets",
        "job_image_pull_policy",
        "job_work_dir_size_limit",
        "job_resource_profile_variable",
        "job_resource_profiles",
        "job_max_cpu",
        "job_max_memory",
        "job_image_tag_pattern",
        "job_labels",
        "job_annotations",
        "job_cpu_request",
        "job_memory_request",
        "job_cpu_limit",
        "job_memory_limit",
    }
)


_LOG_LEVEL_NAMES = frozenset({"debug", "info", "warning", "error", "critical"})


def default_data_dir() -> Path:
    """Where the embedded default keeps its state: ``$XDG_DATA_HOME/ocps-jobs``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ocps-jobs"


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)


def _is_host_entry(text: str) -> bool:
    """A DNS name (no port) or an IP address, IPv6 with or without brackets."""
    try:
        ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
        return True
    except ValueError:
        pass
    labels = text.removesuffix(".").split(".")
    return len(text) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _default_concurrency() -> int:
    return max(2, os.cpu_count() or 2)


def _is_complex(annotation: Any) -> bool:
    """Whether a field's environment value is JSON (dicts and sets), as pydantic-settings."""
    if annotation in (dict, list, set, frozenset, tuple):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_is_complex(argument) for argument in get_args(annotation))
    return origin in (dict, list, set, frozenset, tuple)


def _from_environment(fields: dict[str, FieldInfo]) -> dict[str, Any]:
    """``OCPS_<FIELD>`` variables (any case); a field's alias choices name its own variables.

    What pydantic-settings read, without its import (a quarter of a function's cold start).
    """
    environment = {name.lower(): value for name, value in os.environ.items()}
    values: dict[str, Any] = {}
    for name, field in fields.items():
        alias = field.validation_alias
        names = [f"ocps_{name}"]
        if isinstance(alias, AliasChoices):
            names = [choice.lower() for choice in alias.choices if isinstance(choice, str)]
        for variable in names:
            if variable in environment:
                text = environment[variable]
                try:
                    values[name] = json.loads(text) if _is_complex(field.annotation) else text
                except ValueError:
                    raise ValueError(f"{variable.upper()} is not valid JSON") from None
                break
    return values


def _problem(item: Any) -> str:
    """One validation error as a line naming the setting (and where inside it)."""
    location = [str(part) for part in item["loc"]]
    if not location:
        return f"settings: {item['msg']}"
    inside = f" at {'.'.join(location[1:])}" if len(location) > 1 else ""
    return f"OCPS_{location[0].upper()}{inside}: {item['msg']}"


class Settings(BaseModel):
    """Configuration of every function, the embedded server and the CLI's server side.

    Constructed, it reads ``OCPS_*`` environment variables; explicit values win.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_from_environment(type(self).model_fields), **values})

    backend: Literal["local", "kubernetes"] = "local"

    # Embedded default: state and (without an S3 endpoint) the object store live here.
    data_dir: Path = Field(default_factory=default_data_dir)
    max_concurrent_jobs: int = Field(default_factory=_default_concurrency, ge=1, le=1024)
    abort_grace_seconds: float = Field(default=5.0, ge=0, le=300)
    # Jobs of the embedded backend run in a bubblewrap sandbox: "auto" when bwrap works
    # here, "bubblewrap" always (refusing to start without it), "none" never.
    local_sandbox: Literal["auto", "bubblewrap", "none"] = "auto"

    # Object store: the filesystem under data_dir unless an S3 endpoint is configured.
    s3_endpoint: str | None = None
    bucket: str = "ocps-jobs"
    s3_region: str = "us-east-1"

    # Environment every job sees besides its own: DATA_DIR_<NAME> and PROJECT_PATH.
    data_dirs: dict[str, str] = Field(default_factory=dict)
    project_path: str | None = None

    # Kubernetes backend.
    namespace: str = "default"
    kubeconfig: Path | None = None
    job_image: str = "lsstsqre/centos"
    # The seed's UWS_JOB_IMAGE_TAG still overrides the tag, beside OCPS_JOB_IMAGE_TAG.
    job_image_tag: str = Field(
        default="d_latest",
        validation_alias=AliasChoices("job_image_tag", "OCPS_JOB_IMAGE_TAG", "UWS_JOB_IMAGE_TAG"),
    )
    sidecar_image: str = "ghcr.io/lsst-dm/ocps-jobs-sidecar:latest"
    job_cpu_request: str = "500m"
    job_memory_request: str = "1Gi"
    job_cpu_limit: str | None = None
    job_memory_limit: str | None = None
    job_ttl_seconds: int = Field(default=3600, ge=0)
    job_output_root: str = "/uws/jobs"
    job_service_account: str | None = None
    # NAME -> PersistentVolumeClaim mounted read-only at data_dirs[NAME] (DATA_DIR_<NAME>).
    data_volume_claims: dict[str, str] = Field(default_factory=dict)
    # Operator-chosen annotations on every job pod (mesh opt-outs, test-cluster behaviour).
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    upload_interval_seconds: int = Field(default=DEFAULT_UPLOAD_INTERVAL_SECONDS, ge=1)
    # Native sidecars stop when the job's command ends: the final upload must fit in here.
    job_termination_grace_seconds: int = Field(default=300, ge=30)
    s3_credentials_secret: str = "ocps-jobs-s3"  # noqa: S105 - a Secret's name

    # Limits on one job's outputs, on both backends (README "Limits"): the files past them
    # are listed as skipped in the manifest, and the job's other results are kept.
    max_output_bytes: int = Field(default=DEFAULT_OUTPUT_LIMITS.max_bytes, ge=1)
    max_output_files: int = Field(default=DEFAULT_OUTPUT_LIMITS.max_files, ge=1)
    max_output_depth: int = Field(default=DEFAULT_OUTPUT_LIMITS.max_depth, ge=0, le=10_000)

    # Job pods as the summit's pipelines need them (docs/migrating-from-2021.md).
    # NAME -> an NFS export or a PVC, read-only or read-write, at DATA_DIR_<NAME>.
    data_volumes: dict[str, DataVolume] = Field(default_factory=dict)
    # Secrets mounted as files (Butler credentials), readable by the job's user and fsGroup.
    job_secret_files: list[JobSecretFiles] = Field(default_factory=list)
    # Variables of every job, after the system's and before the caller's: a literal, or
    # {"secret": name, "key": key}.
    job_variables: dict[str, JobVariable] = Field(default_factory=dict)
    job_security_context: JobSecurityContext = Field(default_factory=JobSecurityContext)
    job_node_selector: dict[str, str] = Field(default_factory=dict)
    job_tolerations: list[Toleration] = Field(default_factory=list)
    # A Kubernetes affinity (camelCase keys, as in a pod spec).
    job_affinity: dict[str, Any] = Field(default_factory=dict)
    job_priority_class: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)] | None = None
    job_image_pull_secrets: list[Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)]] = (
        Field(default_factory=list)
    )
    job_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    # Size limit of the work folder (an emptyDir holding $JOB_OUTPUT_DIR and the clone).
    job_work_dir_size_limit: Annotated[str, Field(pattern=QUANTITY)] | None = None
    # Resources by the value of one of the job's variables (e.g. BUTLER_REPO): value ->
    # profile; a job without that variable, or another value, gets the job_* defaults.
    job_resource_profile_variable: Annotated[str, Field(pattern=_ENV_NAME)] | None = None
    job_resource_profiles: dict[str, ResourceProfile] = Field(default_factory=dict)
    # Largest per-job cpu / memory a request may ask for; unset: per-job requests refused.
    job_max_cpu: Annotated[str, Field(pattern=QUANTITY)] | None = None
    job_max_memory: Annotated[str, Field(pattern=QUANTITY)] | None = None
    # With a pattern, a job's IMAGE_TAG variable picks the job image's tag among the tags
    # that match it in full (any other: 400); unset, IMAGE_TAG is only a variable.
    job_image_tag_pattern: str | None = None
    # Labels and annotations of every Job and its pods (e.g. Argo CD's).
    job_labels: dict[str, str] = Field(default_factory=dict)
    job_annotations: dict[str, str] = Field(default_factory=dict)

    # Authentication. Off by default on the embedded backend (which binds to loopback),
    # on by default on Kubernetes. Tokens map a bearer token to the identity it stands for;
    # the trusted header is only safe behind an ingress that sets it and strips clients' own.
    auth_required: bool | None = None
    auth_tokens: dict[str, str] = Field(default_factory=dict, repr=False)
    auth_tokens_file: Path | None = None
    auth_header: str | None = None
    # Networks (CIDR) the trusted header is believed from: the ingress's. Empty: from any
    # peer. A request from these networks without credentials is refused (401) even when
    # an anonymous identity is set.
    auth_header_sources: frozenset[str] = frozenset()
    # The identity of requests without credentials from elsewhere (the CSC in the
    # cluster, which sends none; the NetworkPolicy admits only it besides the ingress).
    anonymous_identity: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    admin_users: frozenset[str] = frozenset()
    # Browser origins allowed to call the API (CORS); none unless configured, "*" for any.
    cors_origins: frozenset[str] = frozenset()

    # Request limits (documented in the README).
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)

    # Result downloads answered with a redirect (307) to a presigned object-store URL valid
    # this long, off by default: only for deployments whose clients reach the store itself.
    # Owner isolation and the manifest check still come first.
    presigned_downloads: bool = False
    presigned_url_seconds: int = Field(default=300, ge=1, le=3600)

    # UWS: blocking WAIT is capped well under pyvo's 600 s read timeout and proxy timeouts.
    wait_max_seconds: int = Field(default=55, ge=1, le=300)
    # At most this many WAITs block at once; past it a WAIT answers at once, as WAIT=0
    # does. The embedded server requires it below its thread count and by default keeps
    # an eighth of its threads (at least one) for other requests; unset elsewhere = no cap.
    max_concurrent_waits: int | None = Field(default=None, ge=0, le=100_000)

    # The embedded server (``ocps-jobs serve``) against clients that hold it (README limits):
    # request headers must arrive within the header timeout of the connection or of the
    # request's first byte; a response that makes no progress for the send timeout, and a
    # connection idle between requests for the idle timeout, are closed; one client address
    # may hold at most ``http_connections_per_client`` connections (default: the connection
    # limit less an eighth; behind a proxy every client has the proxy's address) and at most
    # the threads less an eighth at once (its other requests wait for one of those).
    http_header_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    http_send_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    http_idle_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    http_connections_per_client: int | None = Field(default=None, ge=1, le=100_000)

    # Kubernetes: a queued job whose pods cannot start for this long ends error (0 = waits).
    start_timeout_seconds: int = Field(default=0, ge=0, le=30 * 86400)

    # Execution duration (seconds a job may run before it is aborted; 0 = unlimited).
    # New jobs get the default; with a maximum set, any request above it, and a request
    # for 0 (unlimited), is clamped to the maximum. Both 0 = no limit (the default).
    default_execution_duration: int = Field(default=0, ge=0, le=10 * 365 * 86400)
    max_execution_duration: int = Field(default=0, ge=0, le=10 * 365 * 86400)
    # Destruction: when a job and its results are removed (like a DELETE), in seconds after
    # creation. New jobs get the default (0 = kept until deleted); with a maximum set, a
    # requested time later than creation + maximum (or never) is clamped to it; a time in
    # the past is refused (400). A job past its destruction time is gone at once (404).
    default_destruction_seconds: int = Field(default=0, ge=0, le=10 * 365 * 86400)
    max_destruction_seconds: int = Field(default=0, ge=0, le=10 * 365 * 86400)

    # Absolute base URL clients reach the service at (e.g. https://ocps.example.org/), used
    # for the links in UWS documents (and their Location headers) whatever the Host.
    public_url: str | None = None
    # Without a public URL, links are built from a request's Host only when it is trusted:
    # a loopback name, or one of these (``ocps.example.org``, ``.example.org`` for the
    # domain and names under it, ``*`` for any); a request needing a link with another
    # Host is refused (400).
    trusted_hosts: frozenset[str] = frozenset()

    # Logs: level, and JSON lines or readable text ("auto": text in a terminal, else JSON).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _case_insensitive(cls, value: object) -> object:
        """``info`` is ``INFO``, ``JSON`` is ``json``."""
        if not isinstance(value, str):
            return value
        return value.upper() if value.lower() in _LOG_LEVEL_NAMES else value.lower()

    @field_validator("auth_header_sources")
    @classmethod
    def _networks(cls, value: frozenset[str]) -> frozenset[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        return value

    @field_validator("trusted_hosts")
    @classmethod
    def _host_names(cls, value: frozenset[str]) -> frozenset[str]:
        for entry in value:
            if entry != "*" and not _is_host_entry(entry.removeprefix(".")):
                raise ValueError(f"{entry[:100]!r} is not a host name, address or .domain")
        return value

    @field_validator("job_image_tag_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a regular expression: {error}") from None
        return value

    @field_validator("data_volumes", "data_dirs")
    @classmethod
    def _volume_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ValueError(f"{name!r} does not make a variable name DATA_DIR_<NAME>")
        return value

    @field_validator("job_variables")
    @classmethod
    def _variable_names(cls, value: dict[str, JobVariable]) -> dict[str, JobVariable]:
        for name in value:
            if not re.fullmatch(_ENV_NAME, name):
                raise ValueError(f"{name!r} is not a variable name")
            if name in RESERVED_ENV_NAMES:
                raise ValueError(f"{name} is set by the service itself")
        return value

    @field_validator("job_labels", "job_node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            check_label_key(key)
            check_label_value(text)
        return value

    @field_validator("job_annotations", "pod_annotations")
    @classmethod
    def _annotation_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            check_label_key(key)
        return value

    @field_validator("job_affinity")
    @classmethod
    def _affinity(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - {"nodeAffinity", "podAffinity", "podAntiAffinity"})
        if unknown:
            raise ValueError(f"unknown affinity field(s): {', '.join(unknown)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        both = sorted(set(self.data_dirs) & set(self.data_volumes))
        if both:
            raise ValueError(f"data_volumes and data_dirs both name {', '.join(both)}")
        if self.job_resource_profiles and not self.job_resource_profile_variable:
            raise ValueError("job_resource_profiles need job_resource_profile_variable")
        return self

    def ignored_by_local_backend(self) -> list[str]:
        """The job pod settings given that a local process has no use for, as OCPS_* names.

        The embedded backend applies the variables (literal ones) and data folders.
        """
        ignored = [f"OCPS_{name.upper()}" for name in sorted(self.model_fields_set & _POD_ONLY)]
        if any(variable.secret is not None for variable in self.job_variables.values()):
            ignored.append("OCPS_JOB_VARIABLES (those from Secrets)")
        return ignored

    @property
    def output_limits(self) -> OutputLimits:
        """The limits on one job's outputs, as the uploader is given them."""
        return OutputLimits(
            max_bytes=self.max_output_bytes,
            max_files=self.max_output_files,
            max_depth=self.max_output_depth,
        )

    @property
    def authentication_required(self) -> bool:
        """Whether anonymous requests are refused (explicit setting, else by backend)."""
        if self.auth_required is not None:
            return self.auth_required
        return self.backend == "kubernetes"

    def bearer_tokens(self) -> dict[str, str]:
        """Configured tokens, from the setting and (mounted Secret) file, read when called."""
        tokens = dict(self.auth_tokens)
        if self.auth_tokens_file is not None and self.auth_tokens_file.is_file():
            for line in self.auth_tokens_file.read_text().splitlines():
                token, separator, identity = line.strip().partition(" ")
                if token and not token.startswith("#") and separator:
                    tokens[token] = identity.strip()
        return tokens

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read the environment once; explicit overrides (from the CLI) win."""
        values = {key: value for key, value in overrides.items() if value is not None}
        try:
            return cls(**values)
        except ValidationError as error:
            problems = [_problem(item) for item in error.errors(include_url=False)]
            raise SettingsError("Invalid settings: " + "; ".join(problems)) from None
        except ValueError as error:  # an OCPS_* value that is not JSON where JSON is due
            raise SettingsError(f"Invalid settings: {error}") from None
