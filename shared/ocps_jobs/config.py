"""One settings object, read once from ``OCPS_*`` environment variables and passed down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "default_data_dir"]


def default_data_dir() -> Path:
    """Where the embedded default keeps its state: ``$XDG_DATA_HOME/ocps-jobs``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ocps-jobs"


def _default_concurrency() -> int:
    return max(2, os.cpu_count() or 2)


class Settings(BaseSettings):
    """Configuration of every function, the embedded server and the CLI's server side."""

    model_config = SettingsConfigDict(
        env_prefix="OCPS_", extra="ignore", frozen=True, populate_by_name=True
    )

    backend: Literal["local", "kubernetes"] = "local"

    # Embedded default: state and (without an S3 endpoint) the object store live here.
    data_dir: Path = Field(default_factory=default_data_dir)
    max_concurrent_jobs: int = Field(default_factory=_default_concurrency, ge=1, le=1024)
    abort_grace_seconds: float = Field(default=5.0, ge=0, le=300)

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
    s3_credentials_secret: str = "ocps-jobs-s3"  # noqa: S105 - a Secret's name

    # Request limits (documented in the README).
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)

    # UWS: blocking WAIT is capped well under pyvo's 600 s read timeout and proxy timeouts.
    wait_max_seconds: int = Field(default=55, ge=1, le=300)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read the environment once; explicit overrides (from the CLI) win."""
        values = {key: value for key, value in overrides.items() if value is not None}
        return cls(**values)  # type: ignore[arg-type]
