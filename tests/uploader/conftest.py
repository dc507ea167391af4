"""Fixtures of the uploader's tests: a job's folder, a bucket, the process, a proxy, a store."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from minio import Minio

from ocps_jobs.uploader.contract import UploaderConfig
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.faults import TcpProxy
from tests.uploader.helpers import (
    FlakyStore,
    JobFolder,
    Sidecar,
)


@pytest.fixture
def job(tmp_path: Path) -> JobFolder:
    job_id = uuid.uuid4().hex
    work = tmp_path / "jobs" / job_id
    (work / "out").mkdir(parents=True)
    return JobFolder(job_id, work, work / "out")


# --- S3, read back with an independent tool -----------------------------------------------------


@pytest.fixture
def minio(s3_endpoint: str) -> Minio:
    return Minio(urlparse(s3_endpoint).netloc, S3_ACCESS_KEY, S3_SECRET_KEY, secure=False)


@pytest.fixture
def ready_bucket(bucket: str, minio: Minio) -> str:
    """The bucket exists before the job runs: the service creates it, not the sidecar."""
    minio.make_bucket(bucket)
    return bucket


@pytest.fixture
def start_sidecar(
    tmp_path: Path, s3_endpoint: str, s3_credentials: None
) -> Iterator[Callable[..., Sidecar]]:
    """Start ``python -m ocps_jobs.uploader``; every process is killed and reaped afterwards."""
    started: list[Sidecar] = []

    def start(
        job: JobFolder,
        bucket: str,
        *,
        endpoint: str | None = None,
        wrapper: tuple[str, ...] = (),
        **settings: str,
    ) -> Sidecar:
        config = UploaderConfig(
            job_id=job.job_id,
            output_dir=str(job.out),
            exit_code_file=str(job.exit_code_file),
            log_file=str(job.log_file),
            s3_endpoint=endpoint or s3_endpoint,
            bucket=bucket,
            s3_region="us-east-1",
            upload_interval_seconds=10,
            job_record=job.seed(),
        )
        # ``settings``: variables as the pod would have them, over the configuration's.
        env = {**os.environ, **config.to_environment(), "PYTHONUNBUFFERED": "1", **settings}
        log_path = tmp_path / f"sidecar-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "ocps_jobs.uploader"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        sidecar = Sidecar(process, log_path)
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        if sidecar.running():
            sidecar.process.kill()
        sidecar.process.wait(10)


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[TcpProxy]:
    """A cuttable TCP proxy in front of moto."""
    address = urlparse(s3_endpoint)
    with TcpProxy((address.hostname or "127.0.0.1", address.port or 80)) as running:
        yield running


@pytest.fixture
def store(tmp_path: Path) -> FlakyStore:
    return FlakyStore(tmp_path / "store")
