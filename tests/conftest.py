"""Fixtures: settings on a temporary data dir, the embedded app, moto's S3 server."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from flask.testing import FlaskClient
from functions_framework import create_app

from ocps_jobs.composition import build_service, close_services
from ocps_jobs.config import Settings
from ocps_jobs.http import create_embedded_app
from ocps_jobs.observability.logs import reset_logging
from ocps_jobs.service import JobService

REPO_ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = REPO_ROOT / "functions"

S3_ACCESS_KEY = "ocps-test-access"
S3_SECRET_KEY = "ocps-test-secret"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No OCPS_* settings leak in from the developer's shell; services and logging undone after."""
    for name in list(os.environ):
        if name.startswith(("OCPS_", "UWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    root_level = logging.getLogger().level
    yield
    close_services()
    # An in-process serve or function start configured logging: undo it, so that its lines
    # do not land in a later test's captured stdout.
    reset_logging()
    logging.getLogger().setLevel(root_level)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-default settings on a fresh data dir."""
    return Settings.from_env(data_dir=tmp_path / "data", max_concurrent_jobs=2)


@pytest.fixture
def service(settings: Settings) -> JobService:
    """The local-backend service."""
    return build_service(settings)


@pytest.fixture
def client(service: JobService) -> FlaskClient:
    """A test client of the embedded app (all three functions' routes)."""
    return create_embedded_app(service).test_client()


@pytest.fixture
def functions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, FlaskClient]:
    """Each function loaded from its own main.py, configured from the environment."""
    monkeypatch.setenv("OCPS_DATA_DIR", str(tmp_path / "data"))
    return {
        name: create_app(name, str(FUNCTIONS / name / "main.py")).test_client()
        for name in ("create_job", "query_job", "results")
    }


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's threaded S3 server on a free loopback port: a real HTTP endpoint."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual AWS variables, as an operator would set them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def bucket(s3_endpoint: str, s3_credentials: None, request: pytest.FixtureRequest) -> str:
    """A fresh bucket name per test (the product creates it)."""
    name = "ocps-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    yield name
    close_services()  # first: a service's last writes (job end markers) land before the cleanup
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    try:
        listing = s3.list_objects_v2(Bucket=name)
    except s3.exceptions.NoSuchBucket:
        return
    for item in listing.get("Contents", []):
        s3.delete_object(Bucket=name, Key=item["Key"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium (tests/browser.py) whose downloads land in ``browser.downloads``."""
    from tests.browser import headless_chromium

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    chromium = headless_chromium(downloads)
    chromium.downloads = downloads
    yield chromium
    chromium.quit()
