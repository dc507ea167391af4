"""The manifest format: building, reading, and merging the replicas' manifests."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from ocps_jobs.conventions import manifest_key, output_key, replica_manifest_key
from ocps_jobs.models import ResultFile
from ocps_jobs.objectstore.filesystem import FilesystemStore
from ocps_jobs.uploader.manifest import (
    ManifestError,
    ManifestFile,
    build_manifest,
    encode_manifest,
    manifest_exit_code,
    manifest_files,
    manifest_skipped,
    manifest_skipped_more,
    merged_manifest,
    parse_manifest,
    read_manifest_files,
    store_merged_manifest,
)
from ocps_jobs.uploader.skips import MAX_SKIPPED_LISTED


def entry(job_id: str, name: str, size: int) -> ManifestFile:
    return ManifestFile(name, output_key(job_id, name), size, "ab" * 32, "text/plain")


def replica_manifest(
    job_id: str, index: int, code: int | None, skipped: dict[str, str] | None = None, **sizes: int
) -> bytes:
    files = [entry(job_id, name, size) for name, size in sizes.items()]
    return encode_manifest(build_manifest(job_id, files, skipped, exitCode=code))


# --- the document ------------------------------------------------------------------------------


def test_a_manifest_reads_back_as_built_in_the_stored_field_names() -> None:
    job_id = uuid.uuid4().hex
    files = [entry(job_id, "a.txt", 1), entry(job_id, "dir/b.fits", 2048)]
    manifest = build_manifest(job_id, files, {"z.dat": "unreadable", "y/": "locked"}, exitCode=3)
    stored = json.loads(encode_manifest(manifest))
    # The stored format, as the service of any version reads it.
    assert stored["version"] == 1 and stored["jobId"] == job_id and stored["exitCode"] == 3
    assert stored["files"][1] == {
        "path": "dir/b.fits",
        "key": output_key(job_id, "dir/b.fits"),
        "size": 2048,
        "sha256": "ab" * 32,
        "contentType": "text/plain",
    }
    assert stored["skipped"] == [
        {"path": "y/", "reason": "locked"},
        {"path": "z.dat", "reason": "unreadable"},
    ]
    parsed = parse_manifest(encode_manifest(manifest))
    assert manifest_files(parsed) == files
    assert manifest_skipped(parsed) == {"z.dat": "unreadable", "y/": "locked"}
    assert manifest_exit_code(parsed) == 3


def test_a_manifest_without_skipped_files_has_no_skipped_list() -> None:
    manifest = build_manifest("j", [], {}, exitCode=None)
    assert "skipped" not in manifest
    assert manifest_exit_code(manifest) is None and manifest_skipped(manifest) == {}


def test_past_a_few_hundred_skipped_files_the_rest_are_counted_by_reason() -> None:
    names = {f"s-{n:04d}": "unreadable" for n in range(MAX_SKIPPED_LISTED + 40)}
    names["zz/"] = "locked"
    manifest = build_manifest("j", [], names, more_skipped={"locked": 5, "late": 2})
    entries = json.loads(encode_manifest(manifest))["skipped"]
    assert entries[:MAX_SKIPPED_LISTED] == [
        {"path": f"s-{n:04d}", "reason": "unreadable"} for n in range(MAX_SKIPPED_LISTED)
    ]
    # What is past the bound (40 more, and "zz/"), then what was counted already.
    assert entries[MAX_SKIPPED_LISTED:] == [
        {"more": 2, "reason": "late"},
        {"more": 6, "reason": "locked"},
        {"more": 40, "reason": "unreadable"},
    ]
    assert len(manifest_skipped(manifest)) == MAX_SKIPPED_LISTED
    assert manifest_skipped_more(manifest) == {"late": 2, "locked": 6, "unreadable": 40}


def test_a_merge_adds_up_the_replicas_counted_skips(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    job_id = uuid.uuid4().hex
    for index in (0, 1):
        part = build_manifest(job_id, [], {f"r{index}.txt": "big"}, more_skipped={"big": 10})
        store.put_bytes(replica_manifest_key(job_id, index), encode_manifest(part), "x")
    merged = merged_manifest(store, job_id, 2)
    assert merged is not None
    assert manifest_skipped(merged) == {"r0.txt": "big", "r1.txt": "big"}
    assert manifest_skipped_more(merged) == {"big": 20}


def test_results_are_read_through_the_manifest_module() -> None:
    job_id = uuid.uuid4().hex
    data = encode_manifest(build_manifest(job_id, [entry(job_id, "a.txt", 5)]))
    assert ResultFile.listed(read_manifest_files(data)) == [
        ResultFile(
            key=output_key(job_id, "a.txt"), size=5, content_type="text/plain", sha256="ab" * 32
        )
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"files": {}}',
        b'{"jobId": "j"}',
        b'{"files": [{"path": "a", "key": "k", "size": 1}]}',  # no contentType
        b'{"files": [{"path": "a", "key": "k", "size": "1", "contentType": "t"}]}',
        b'{"files": [{"path": "a", "key": "k", "size": -1, "contentType": "t"}]}',
        b'{"files": [{"path": "a", "key": "k", "size": true, "contentType": "t"}]}',
        b'{"files": [{"path": 1, "key": "k", "size": 1, "contentType": "t"}]}',
        b'{"files": ["a"]}',
    ],
)
def test_a_malformed_manifest_is_a_manifest_error(data: bytes) -> None:
    with pytest.raises(ManifestError):
        read_manifest_files(data)
    assert issubclass(ManifestError, ValueError)  # what the readers catch


# --- merging the replicas' manifests -------------------------------------------------------------


def test_a_merge_takes_the_failure_over_the_replicas_it_stopped(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    job_id = uuid.uuid4().hex
    for index, code in enumerate([0, 3, None]):  # the failure stopped replica 2
        store.put_bytes(
            replica_manifest_key(job_id, index), replica_manifest(job_id, index, code), "x"
        )
    manifest = merged_manifest(store, job_id, 3)
    assert manifest is not None and manifest["exitCode"] == 3
    assert [item["exitCode"] for item in manifest["replicas"]] == [0, 3, None]
    store.put_bytes(replica_manifest_key(job_id, 1), replica_manifest(job_id, 1, None), "x")
    assert (merged_manifest(store, job_id, 3) or {})["exitCode"] is None  # stopped: aborted
    assert merged_manifest(store, job_id, 4) is None  # replica 3 has not finished


def test_a_merge_lists_a_name_two_replicas_wrote_as_the_store_holds_it(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    job_id = uuid.uuid4().hex
    store.put_bytes(output_key(job_id, "same.txt"), b"x" * 22, "text/plain")  # the last PUT
    store.put_bytes(
        replica_manifest_key(job_id, 0), replica_manifest(job_id, 0, 0, **{"same.txt": 22}), "x"
    )
    store.put_bytes(
        replica_manifest_key(job_id, 1), replica_manifest(job_id, 1, 0, **{"same.txt": 32}), "x"
    )
    manifest = merged_manifest(store, job_id, 2)
    assert manifest is not None
    assert [(item["path"], item["size"]) for item in manifest["files"]] == [("same.txt", 22)]


def test_a_stored_merge_lists_every_replicas_files_and_skips(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    job_id = uuid.uuid4().hex
    store.put_bytes(
        replica_manifest_key(job_id, 0),
        replica_manifest(job_id, 0, 0, {"locked/": "unreadable"}, **{"a.txt": 1}),
        "x",
    )
    # Replica 1 never started: only counted as stopped when told so.
    assert store_merged_manifest(store, job_id, 2) is None
    assert store.get_bytes(manifest_key(job_id)) is None
    merged = store_merged_manifest(store, job_id, 2, missing_stopped=True)
    assert merged is not None and merged["exitCode"] is None
    stored = parse_manifest(store.get_bytes(manifest_key(job_id)) or b"")
    assert [item.path for item in manifest_files(stored)] == ["a.txt"]
    assert manifest_skipped(stored) == {"locked/": "unreadable"}
    assert stored["replicas"] == [
        {"index": 0, "exitCode": 0, "files": 1},
        {"index": 1, "exitCode": None, "files": 0},
    ]
