"""The Kubernetes backend's archive on a real S3 endpoint: a crashed uploader's leftovers go."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from ocps_jobs.backends.kubernetes.archive import Archive
from ocps_jobs.conventions import archive_key, manifest_key, output_key, replica_manifest_key
from ocps_jobs.models import JobParameters, JobRecord, Phase, ResultFile
from ocps_jobs.objectstore.s3 import S3Store
from ocps_jobs.uploader.manifest import ManifestFile, build_manifest, encode_manifest

JOB = "5f0c3e1a9b8d4c7e8f6a2b1c0d9e8f7a"
OTHER = "a6b9043ef0c24170b019641da57a0dba"  # a job still running: its uploads are its own


def s3_store(s3_endpoint: str, bucket: str) -> S3Store:
    store = S3Store(bucket, s3_endpoint)
    store.ensure_ready()
    return store


def uploads(store: S3Store) -> list[str]:
    """The keys of the bucket's multipart uploads never completed."""
    listed = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return sorted(upload["Key"] for upload in listed)


def finished(job_id: str, results: list[ResultFile]) -> JobRecord:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    return JobRecord(
        job_id=job_id,
        run_id="run",
        phase=Phase.COMPLETED,
        creation_time=when,
        start_time=when,
        end_time=when,
        parameters=JobParameters(command="true"),
        results=results,
    )


def uploaded(store: S3Store, job_id: str, name: str, data: bytes) -> ManifestFile:
    key = output_key(job_id, name)
    store.put_bytes(key, data, "text/plain")
    return ManifestFile(name, key, len(data), hashlib.sha256(data).hexdigest(), "text/plain")


def test_archiving_a_finished_job_aborts_the_uploads_its_crashed_uploader_left(
    s3_endpoint: str, bucket: str, s3_credentials: None
) -> None:
    store = s3_store(s3_endpoint, bucket)
    # A first uploader crashed mid-way through a large file; the restarted one finished.
    stale = output_key(JOB, "big.fits")
    theirs = output_key(OTHER, "big.fits")
    for key in (stale, stale, theirs):
        store.client.create_multipart_upload(Bucket=bucket, Key=key)
    kept = uploaded(store, JOB, "done.txt", b"done")
    store.put_bytes(manifest_key(JOB), encode_manifest(build_manifest(JOB, [kept])), "x")
    archive = Archive(store)
    record = finished(JOB, ResultFile.listed([kept]))

    # The manifest is there but not yet job.json: the uploader may still be at work.
    archive.keep_current(record)
    assert uploads(store) == [stale, stale, theirs]

    # The uploader's last write: now nothing of the job is uploading any more.
    store.put_bytes(archive_key(JOB), record.model_dump_json().encode(), "application/json")
    archive.keep_current(record)
    assert uploads(store) == [theirs]  # another job's upload in progress is untouched
    assert store.get_bytes(kept.key) == b"done"
    assert [item.key for item in (archive.results(JOB) or [])] == [kept.key]


def test_merging_the_replicas_manifests_aborts_the_uploads_they_left(
    s3_endpoint: str, bucket: str, s3_credentials: None
) -> None:
    store = s3_store(s3_endpoint, bucket)
    stale = output_key(JOB, "replica-1/part.fits")
    store.client.create_multipart_upload(Bucket=bucket, Key=stale)
    # Replica 0 uploaded and wrote its manifest; replica 1 was killed before it could.
    kept = uploaded(store, JOB, "r0.txt", b"zero")
    part = build_manifest(JOB, [kept], exitCode=0)
    store.put_bytes(replica_manifest_key(JOB, 0), encode_manifest(part), "x")
    record = finished(JOB, [])
    record.parameters = JobParameters(command="true", replicas=2)
    job: dict[str, Any] = {
        "metadata": {"name": "job", "labels": {}},
        "status": {"conditions": [{"type": "Failed", "status": "True"}], "active": 0},
    }
    pods = [{"status": {"phase": "Succeeded"}}, {"status": {"phase": "Failed"}}]
    archive = Archive(store)

    merged = archive.merge_what_replicas_left(record, job, pods)
    assert merged == ResultFile.listed([kept])
    record.results = merged
    archive.keep_current(record, write_missing=True)  # as the backend does after a merge
    assert uploads(store) == []
    assert store.get_bytes(archive_key(JOB)) is not None
