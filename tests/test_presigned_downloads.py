"""Optional presigned downloads: a redirect to the object store (moto's real S3 endpoint),
behind the same owner isolation and manifest check; the client and CLI follow it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask.testing import FlaskClient

from ocps_jobs.composition import build_service
from ocps_jobs.config import Settings
from ocps_jobs.http import create_embedded_app
from ocps_jobs.resultids import encode_result_id
from ocps_jobs.service import JobService
from tests.chaos import CLI, ServeProcess
from tests.helpers import wait_for_phase

ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}
CONTENT = b"presigned bytes\n" * 4096


@pytest.fixture
def presigning(tmp_path: Path, s3_endpoint: str, bucket: str) -> JobService:
    return build_service(
        Settings.from_env(
            data_dir=tmp_path / "data",
            s3_endpoint=s3_endpoint,
            bucket=bucket,
            presigned_downloads=True,
            presigned_url_seconds=60,
            auth_required=True,
            auth_tokens={"tok-alice": "alice", "tok-bob": "bob"},
        )
    )


def finished_job(client: FlaskClient, source: Path) -> str:
    body = {"command": f'cp {source} "$JOB_OUTPUT_DIR/data.bin"'}
    job_id: str = client.put("/api/v1/job", json=body, headers=ALICE).get_json()["jobId"]
    wait_for_phase(
        lambda: client.get(f"/api/v1/job/{job_id}/phase", headers=ALICE).get_json(),
        {"completed", "error"},
    )
    return job_id


def test_a_download_is_a_short_lived_redirect_to_the_store(
    presigning: JobService, s3_endpoint: str, tmp_path: Path
) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(CONTENT)
    client = create_embedded_app(presigning).test_client()
    job_id = finished_job(client, source)
    result_id = encode_result_id(f"jobs/{job_id}/out/data.bin")

    answer = client.get(f"/api/v1/job/result/{result_id}", headers=ALICE)
    assert answer.status_code == 307 and answer.data == b""
    location = answer.headers["Location"]
    assert location.startswith(s3_endpoint + "/")
    query = parse_qs(urlsplit(location).query)
    if "X-Amz-Expires" in query:  # signature version 4: the lifetime itself
        assert query["X-Amz-Expires"] == ["60"]
    else:  # version 2: the time it ends
        assert 0 < int(query["Expires"][0]) - time.time() <= 60
    fetched = requests.get(location, timeout=10)  # no credentials: the URL carries them
    assert fetched.status_code == 200 and fetched.content == CONTENT
    assert fetched.headers["Content-Type"] == "application/octet-stream"
    assert fetched.headers["Content-Disposition"].startswith('inline; filename="data.bin"')
    ranged = requests.get(location, headers={"Range": "bytes=16-31"}, timeout=10)
    assert (ranged.status_code, ranged.content) == (206, CONTENT[16:32])
    by_index = client.get(f"/api/v1/job/result/{job_id}/0", headers=ALICE)
    assert by_index.status_code == 307

    # Owner isolation and the manifest check come before any redirect.
    assert client.get(f"/api/v1/job/result/{result_id}", headers=BOB).status_code == 404
    not_listed = encode_result_id(f"jobs/{job_id}/out/not-a-result.bin")
    assert client.get(f"/api/v1/job/result/{not_listed}", headers=ALICE).status_code == 404
    assert "Location" not in client.get(f"/api/v1/job/result/{result_id}", headers=BOB).headers


def test_off_by_default_the_service_streams_the_file(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    settings = Settings.from_env(data_dir=tmp_path / "data", s3_endpoint=s3_endpoint, bucket=bucket)
    assert settings.presigned_downloads is False
    source = tmp_path / "data.bin"
    source.write_bytes(CONTENT)
    client = create_embedded_app(build_service(settings)).test_client()
    body = {"command": f'cp {source} "$JOB_OUTPUT_DIR/data.bin"'}
    job_id = client.put("/api/v1/job", json=body).get_json()["jobId"]
    wait_for_phase(
        lambda: client.get(f"/api/v1/job/{job_id}/phase").get_json(), {"completed", "error"}
    )
    answer = client.get(f"/api/v1/job/result/{job_id}/0")
    assert answer.status_code == 200 and answer.data == CONTENT


@pytest.mark.slow
def test_the_cli_follows_the_redirect_and_checks_the_file(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(CONTENT)
    environment = {"OCPS_PRESIGNED_DOWNLOADS": "true"}
    arguments = ("--s3-endpoint", s3_endpoint, "--bucket", bucket)
    with ServeProcess(tmp_path / "data", *arguments, env=environment) as server:

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(CLI), *args, "--url", server.url], capture_output=True, text=True, timeout=60
            )

        job = json.loads(
            cli("submit", f'cp {source} "$JOB_OUTPUT_DIR/data.bin"', "--wait", "--json").stdout
        )
        result_id = encode_result_id(f"jobs/{job['jobId']}/out/data.bin")
        redirect = requests.get(
            f"{server.url}/api/v1/job/result/{result_id}", allow_redirects=False, timeout=10
        )
        assert redirect.status_code == 307
        assert urlsplit(redirect.headers["Location"]).netloc == urlsplit(s3_endpoint).netloc
        # A partial file from an earlier try: resumed from the store, then checked.
        target = tmp_path / "dl"
        (target / "data.bin.part").parent.mkdir(parents=True)
        (target / "data.bin.part").write_bytes(CONTENT[:1000])
        done = cli("download", result_id, "--output", str(target))
        assert done.returncode == 0, done.stderr
        written = (target / "data.bin").read_bytes()
        assert hashlib.sha256(written).digest() == hashlib.sha256(CONTENT).digest()
