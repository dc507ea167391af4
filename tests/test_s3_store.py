"""The S3 path against a real HTTP endpoint (moto's server); minio-py checks what was written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pytest
from botocore.config import Config
from flask.testing import FlaskClient
from minio import Minio

from ocps_jobs.composition import build_service
from ocps_jobs.config import Settings
from ocps_jobs.errors import BackendUnavailableError
from ocps_jobs.http import create_embedded_app
from ocps_jobs.objectstore.s3 import S3Store
from ocps_jobs.uploader.upload import Uploader
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.faults import SlowDownS3
from tests.test_local_backend import finish, submit

WRITE_TREE = """
mkdir -p $JOB_OUTPUT_DIR/a/b/c
echo top > $JOB_OUTPUT_DIR/top.txt
echo '{"k": 1}' > $JOB_OUTPUT_DIR/a/data.json
head -c 2500000 /dev/urandom > $JOB_OUTPUT_DIR/a/b/c/image.fits
printf 'ünï' > "$JOB_OUTPUT_DIR/a/b/name with spaces.txt"
"""


@pytest.fixture
def s3_client(tmp_path: Path, s3_endpoint: str, bucket: str) -> FlaskClient:
    settings = Settings.from_env(data_dir=tmp_path / "data", s3_endpoint=s3_endpoint, bucket=bucket)
    return create_embedded_app(build_service(settings)).test_client()


@pytest.fixture
def minio(s3_endpoint: str) -> Minio:
    return Minio(urlparse(s3_endpoint).netloc, S3_ACCESS_KEY, S3_SECRET_KEY, secure=False)


def test_outputs_land_in_s3_in_the_documented_layout(
    s3_client: FlaskClient, minio: Minio, bucket: str, tmp_path: Path
) -> None:
    job_id = submit(s3_client, command=WRITE_TREE)
    job = finish(s3_client, job_id)
    assert job["phase"] == "completed", job["errorSummary"]
    assert s3_client.application.extensions["ocps_service"].events.flush(10)

    objects = {o.object_name: o for o in minio.list_objects(bucket, prefix="jobs/", recursive=True)}
    out = f"jobs/{job_id}/out/"
    assert set(objects) == {
        out + "top.txt",
        out + "a/data.json",
        out + "a/b/c/image.fits",
        out + "a/b/name with spaces.txt",
        out + "ocps-job.log",
        f"jobs/{job_id}/manifest.json",
        f"jobs/{job_id}/job.json",
        f"jobs/{job_id}/ended.json",  # written by the first reader of the final job (metrics)
    }
    assert minio.stat_object(bucket, out + "a/b/c/image.fits").content_type == "application/fits"
    assert minio.stat_object(bucket, out + "a/data.json").content_type == "application/json"
    assert minio.stat_object(bucket, out + "top.txt").content_type == "text/plain"

    manifest = json.loads(minio.get_object(bucket, f"jobs/{job_id}/manifest.json").read())
    archived = json.loads(minio.get_object(bucket, f"jobs/{job_id}/job.json").read())
    assert archived["job_id"] == job_id and archived["phase"] == "completed"
    assert {item["key"] for item in manifest["files"]} == {k for k in objects if k.startswith(out)}

    # Every file downloads intact through the API, by its result ID, and matches S3 and manifest.
    results = s3_client.get(f"/api/v1/job/{job_id}/results").get_json()
    assert {item["uri"] for item in results} == {
        f"s3://{bucket}/{key}" for key in objects if key.startswith(out)
    }
    checksums = {item["key"]: item["sha256"] for item in manifest["files"]}
    for item in results:
        key = item["uri"].removeprefix(f"s3://{bucket}/")
        downloaded = s3_client.get(f"/api/v1/job/result/{item['id']}")
        assert downloaded.status_code == 200
        assert downloaded.data == minio.get_object(bucket, key).read()
        assert hashlib.sha256(downloaded.data).hexdigest() == checksums[key]
        assert int(downloaded.headers["Content-Length"]) == item["size"]

    image = next(item for item in results if item["uri"].endswith("image.fits"))
    part = s3_client.get(f"/api/v1/job/result/{image['id']}", headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert (
        part.data
        == minio.get_object(bucket, out + "a/b/c/image.fits", offset=1000, length=1000).read()
    )
    assert part.headers["Content-Range"] == "bytes 1000-1999/2500000"


def test_delete_removes_the_jobs_objects(s3_client: FlaskClient, minio: Minio, bucket: str) -> None:
    kept = submit(s3_client, command="echo keep > $JOB_OUTPUT_DIR/k")
    gone = submit(s3_client, command="echo gone > $JOB_OUTPUT_DIR/g")
    finish(s3_client, kept)
    finish(s3_client, gone)
    assert s3_client.delete(f"/api/v1/job/{gone}").status_code == 200
    names = [o.object_name for o in minio.list_objects(bucket, prefix="jobs/", recursive=True)]
    assert names and all(name.startswith(f"jobs/{kept}/") for name in names)


def test_s3_outage_is_503_json_not_500(tmp_path: Path, s3_credentials: None) -> None:
    settings = Settings.from_env(
        data_dir=tmp_path / "data", s3_endpoint="http://127.0.0.1:9", bucket="nowhere"
    )
    from ocps_jobs.backends.local import LocalBackend
    from ocps_jobs.objectstore.s3 import S3Store
    from ocps_jobs.service import JobService

    store = S3Store(settings.bucket, settings.s3_endpoint)
    store.client.meta.config.retries = {"max_attempts": 1}
    service = JobService(settings, LocalBackend(settings, store), store)
    try:
        client = create_embedded_app(service).test_client()
        job_id = submit(client, command="echo x > $JOB_OUTPUT_DIR/x")
        job = finish(client, job_id, timeout=120)
        assert job["phase"] == "error"
        assert "Upload of the job's results failed" in job["errorSummary"]["message"]
        response = client.get(f"/api/v1/job/{job_id}/results")
        assert response.status_code == 200 and response.get_json() == []
    finally:
        service.close()


def test_large_file_goes_multipart_in_one_read_with_its_checksum(
    tmp_path: Path, s3_endpoint: str, bucket: str, minio: Minio, s3_credentials: None
) -> None:
    from ocps_jobs.objectstore.s3 import MULTIPART_THRESHOLD, PART_SIZE, S3Store

    size = MULTIPART_THRESHOLD + PART_SIZE // 2 + 12345  # parts, the last a short one
    data = hashlib.sha256(b"seed").digest() * (size // 32) + b"tail"
    source = tmp_path / "coadd.fits"
    source.write_bytes(data)
    store = S3Store(bucket, s3_endpoint, max_concurrency=2)
    store.ensure_ready()
    sent_parts: list[dict[str, str]] = []
    store.client.meta.events.register(
        "before-send.s3.UploadPart",
        lambda request, **_: sent_parts.append(dict(request.headers.items())),
    )

    checksum = store.put_file("jobs/j/out/coadd.fits", str(source), "application/fits")

    assert checksum == hashlib.sha256(data).hexdigest()
    stat = minio.stat_object(bucket, "jobs/j/out/coadd.fits")
    parts = -(-len(data) // PART_SIZE)
    # Each part's body goes with its headers, without waiting for a 100 Continue first.
    assert len(sent_parts) == parts
    assert not [headers for headers in sent_parts if "Expect" in headers]
    assert stat.etag is not None and stat.etag.endswith(f"-{parts}")  # a multipart upload
    assert stat.content_type == "application/fits"
    assert minio.get_object(bucket, "jobs/j/out/coadd.fits").read() == data


def test_an_s3_server_error_is_the_store_unavailable_and_the_uploader_backs_off(
    tmp_path: Path, s3_credentials: None
) -> None:
    """503 SlowDown on every request (a saturated MinIO), after botocore's own retries."""
    output = tmp_path / "out"
    output.mkdir()
    (output / "a.txt").write_text("a")
    with SlowDownS3() as throttled:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=throttled.url,
            region_name="us-east-1",
            config=Config(retries={"total_max_attempts": 1}),
        )
        store = S3Store("ocps-jobs", client=client)
        with pytest.raises(BackendUnavailableError):
            store.put_bytes("jobs/x/manifest.json", b"{}", "application/json")
        with pytest.raises(BackendUnavailableError):
            store.put_file("jobs/x/out/a.txt", str(output / "a.txt"), "text/plain")
        with pytest.raises(BackendUnavailableError):
            store.get_bytes("jobs/x/manifest.json")
        sleeps: list[float] = []
        uploader = Uploader(store, "x", output, attempts=3, sleep=sleeps.append)
        with pytest.raises(BackendUnavailableError):
            uploader.finish()
        assert sleeps == [0.5, 1.0]  # the outage backoff, not a failure at the first answer
        assert throttled.requests == 3 + 3  # one request per call: botocore's retries are off
