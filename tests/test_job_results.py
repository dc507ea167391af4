"""A job's results from its record and its manifest: previews, pages and lookups."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

from ocps_jobs.backends.records import keep_results
from ocps_jobs.backends.results import JobResults
from ocps_jobs.conventions import manifest_key, output_key
from ocps_jobs.models import MAX_JOB_OBJECT_RESULTS, JobParameters, JobRecord, Phase, ResultFile
from ocps_jobs.objectstore.filesystem import FilesystemStore
from ocps_jobs.uploader.manifest import ManifestFile, build_manifest

MANY = MAX_JOB_OBJECT_RESULTS + 500


def entries(job_id: str, count: int) -> list[ManifestFile]:
    return [
        ManifestFile(f"r-{n:05d}.txt", output_key(job_id, f"r-{n:05d}.txt"), n, "", "text/plain")
        for n in range(count)
    ]


def record(job_id: str, files: list[ManifestFile]) -> JobRecord:
    kept = JobRecord(
        job_id=job_id,
        run_id="run",
        phase=Phase.COMPLETED,
        creation_time=datetime(2026, 1, 1, tzinfo=UTC),
        parameters=JobParameters(command="true"),
    )
    keep_results(kept, ResultFile.listed(files))
    return kept


def stored(tmp_path: Path, job_id: str, manifest: dict) -> JobResults:
    store = FilesystemStore(tmp_path / "store")
    store.put_bytes(manifest_key(job_id), json.dumps(manifest).encode(), "application/json")
    return JobResults(store)


def test_a_record_of_few_results_answers_alone(tmp_path: Path) -> None:
    job_id = uuid.uuid4().hex
    files = entries(job_id, 3)
    job = record(job_id, files)
    assert job.result_count is None
    results = JobResults(FilesystemStore(tmp_path / "store"))  # no manifest: not read
    expected = ResultFile.listed(files)
    assert results.every(job) == expected
    assert results.preview(job) == (expected, 3)
    assert results.page(job, 1, 5) == (expected[1:], 3)
    assert results.by_key(job, files[2].key) == expected[2]
    assert results.by_index(job, 2) == expected[2] and results.by_index(job, 3) is None


def test_a_record_of_many_holds_the_first_and_the_manifest_the_rest(tmp_path: Path) -> None:
    job_id = uuid.uuid4().hex
    files = entries(job_id, MANY)
    job = record(job_id, files)
    assert job.results is not None and len(job.results) == MAX_JOB_OBJECT_RESULTS
    assert job.result_count == MANY
    results = stored(tmp_path, job_id, build_manifest(job_id, files))
    expected = ResultFile.listed(files)
    assert results.preview(job) == (expected[:MAX_JOB_OBJECT_RESULTS], MANY)
    assert results.every(job) == expected
    assert results.page(job, MANY - 100, 1000) == (expected[-100:], MANY)
    assert results.by_key(job, files[-1].key) == expected[-1]
    assert results.by_key(job, output_key(job_id, "none.txt")) is None
    assert results.by_index(job, MANY - 1) == expected[-1]
    assert results.by_index(job, MANY) is None


def test_a_page_or_a_lookup_reads_only_the_entries_it_answers_with(tmp_path: Path) -> None:
    job_id = uuid.uuid4().hex
    files = entries(job_id, MANY)
    job = record(job_id, files)
    manifest = build_manifest(job_id, files)
    manifest["files"][MANY - 1] = {"path": "broken"}  # malformed, and outside what is asked
    results = stored(tmp_path, job_id, manifest)
    expected = ResultFile.listed(files)
    assert results.page(job, 1100, 100) == (expected[1100:1200], MANY)
    assert results.by_index(job, 1300) == expected[1300]
    assert results.by_key(job, files[1400].key) == expected[1400]
    # The whole list cannot be read: the record's first results, not a failure.
    assert results.every(job) == expected[:MAX_JOB_OBJECT_RESULTS]
    assert results.by_index(job, MANY - 1) is None
