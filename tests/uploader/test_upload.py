"""The Uploader with the real filesystem store: unique names, changes, retries, skips."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from ocps_jobs.conventions import (
    LOG_RESULT_NAME,
    manifest_key,
    output_key,
)
from ocps_jobs.errors import BackendUnavailableError
from ocps_jobs.objectstore.filesystem import FilesystemStore
from ocps_jobs.uploader.upload import Uploader
from tests.uploader.helpers import (
    FlakyStore,
    JobFolder,
    RefusingStore,
    kept,
    sha256,
    write_raw,
)


def test_a_store_that_refuses_a_file_is_not_taken_for_an_unreadable_file(
    job: JobFolder, tmp_path: Path
) -> None:
    job.write("a.txt", b"a")
    store = RefusingStore(tmp_path / "store")
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None)
    with pytest.raises(PermissionError):
        uploader.finish()
    assert store.get_bytes(manifest_key(job.job_id)) is None


def test_files_claiming_one_result_name_are_all_kept_under_names_of_their_own(
    job: JobFolder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job.write("ocps-job.log", b"the job's own log")
    job.write("caf%E9.txt", b"really named so")
    write_raw(job.out, b"caf\xe9.txt", b"latin-1 name")
    job.write("caf%E9~2.txt", b"taken too")
    job.log_file.write_text("captured stdout\n")
    store = FilesystemStore(tmp_path / "store")
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None)
    with caplog.at_level(logging.WARNING, logger="ocps_jobs.uploader"):
        manifest = uploader.finish({LOG_RESULT_NAME: job.log_file})
    assert kept(store, job.job_id, manifest) == {
        "ocps-job.log": b"the job's own log",  # the job's file first, the captured log after
        "ocps-job~2.log": b"captured stdout\n",
        "caf%E9.txt": b"really named so",  # a real name before an escaped one
        "caf%E9~2.txt": b"taken too",  # never another file's own name
        "caf%E9~3.txt": b"latin-1 name",
    }
    assert "skipped" not in manifest
    assert "ocps-job.log is kept as ocps-job~2.log" in caplog.text
    assert "caf%E9.txt is kept as caf%E9~3.txt" in caplog.text


def test_a_result_name_stays_with_its_file_across_passes(job: JobFolder, tmp_path: Path) -> None:
    write_raw(job.out, b"caf\xe9.txt", b"latin-1 name")
    store = FilesystemStore(tmp_path / "store")
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None)
    assert uploader.upload_changed() == 1  # kept as caf%E9.txt while the job runs
    job.write("caf%E9.txt", b"really named so")  # then the job writes a file of that name
    assert uploader.upload_changed() == 1  # only the new file, under a name of its own
    assert uploader.upload_changed() == 0
    manifest = uploader.finish()
    assert kept(store, job.job_id, manifest) == {
        "caf%E9.txt": b"latin-1 name",
        "caf%E9~2.txt": b"really named so",
    }
    # Each keeps its name after the other is gone.
    os.unlink(os.path.join(os.fsencode(job.out), b"caf\xe9.txt"))
    manifest = uploader.finish()
    assert kept(store, job.job_id, manifest) == {"caf%E9~2.txt": b"really named so"}


def test_a_name_freed_by_a_deleted_file_is_uploaded_anew_by_its_next_holder(
    job: JobFolder, tmp_path: Path
) -> None:
    job.write("ocps-job.log", b"own log")
    store = FilesystemStore(tmp_path / "store")
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None)
    assert uploader.upload_changed() == 1
    stat = (job.out / "ocps-job.log").stat()
    (job.out / "ocps-job.log").unlink()  # the job removes it before it ends
    job.log_file.write_bytes(b"stdout!")  # the captured log: same size, same mtime
    os.utime(job.log_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    manifest = uploader.finish({LOG_RESULT_NAME: job.log_file})
    assert kept(store, job.job_id, manifest) == {"ocps-job.log": b"stdout!"}


def test_uploader_uploads_only_what_changed(job: JobFolder, store: FlakyStore) -> None:
    job.write("a.txt", b"a")
    job.write("sub/b.txt", b"b")
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None)
    assert uploader.upload_changed() == 2
    assert uploader.upload_changed() == 0
    job.write("sub/b.txt", b"bb")
    job.write("c.txt", b"c")
    assert uploader.upload_changed() == 2
    assert store.get_bytes(output_key(job.job_id, "sub/b.txt")) == b"bb"
    log = job.work / "log"
    log.write_text("log\n")
    manifest = uploader.finish({LOG_RESULT_NAME: log}, exitCode=0)
    assert [f["path"] for f in manifest["files"]] == [
        "a.txt",
        "c.txt",
        LOG_RESULT_NAME,
        "sub/b.txt",
    ]
    assert manifest["exitCode"] == 0
    assert json.loads(store.get_bytes(manifest_key(job.job_id)) or b"") == manifest
    assert store.calls[-1] == manifest_key(job.job_id)


def test_uploader_retries_with_doubling_backoff(job: JobFolder, store: FlakyStore) -> None:
    job.write("x.bin", b"x" * 10)
    key = output_key(job.job_id, "x.bin")
    store.failures[key] = 4
    sleeps: list[float] = []
    uploader = Uploader(store, job.job_id, job.out, sleep=sleeps.append)
    manifest = uploader.finish()
    assert sleeps == [0.5, 1.0, 2.0, 4.0]
    assert store.calls.count(key) == 5
    assert [f["sha256"] for f in manifest["files"]] == [sha256(b"x" * 10)]


def test_uploader_gives_up_after_its_attempts_and_writes_no_manifest(
    job: JobFolder, store: FlakyStore
) -> None:
    for n in range(5):
        job.write(f"f{n}.txt", str(n).encode())
    broken = output_key(job.job_id, "f3.txt")
    store.failures[broken] = -1
    sleeps: list[float] = []
    uploader = Uploader(store, job.job_id, job.out, workers=2, sleep=sleeps.append)
    with pytest.raises(BackendUnavailableError):
        uploader.finish()
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]  # six attempts, 15.5 s of backoff in all
    assert store.calls.count(broken) == 6
    assert store.get_bytes(manifest_key(job.job_id)) is None
    # The others were uploaded and are not sent again; the next pass retries only the failure.
    assert all(store.get_bytes(output_key(job.job_id, f"f{n}.txt")) for n in (0, 1, 2, 4))
    store.failures.clear()
    store.calls.clear()
    manifest = uploader.finish()
    assert store.calls == [broken, manifest_key(job.job_id)]
    assert len(manifest["files"]) == 5


def test_files_deleted_after_an_earlier_pass_are_not_results(tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "temporary.tmp").write_text("scratch")
    (output / "kept.txt").write_text("kept")
    uploader = Uploader(FilesystemStore(tmp_path / "store"), "a" * 32, output)
    assert uploader.upload_changed() == 2
    (output / "temporary.tmp").unlink()
    manifest = uploader.finish()
    assert [item["path"] for item in manifest["files"]] == ["kept.txt"]


def test_a_skipped_file_is_reported_once_and_tried_again_each_pass(
    job: JobFolder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job.write("short.txt", b"s")
    job.write("much-longer-name.txt", b"l")
    store = FilesystemStore(tmp_path / "store")
    store.max_key_bytes = len(output_key(job.job_id, "short.txt").encode())
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None)
    with caplog.at_level(logging.WARNING, logger="ocps_jobs.uploader"):
        assert uploader.upload_changed() == 2
        assert uploader.upload_changed() == 1  # the skipped one only
    assert caplog.text.count("much-longer-name.txt is not uploaded") == 1
    limit = store.max_key_bytes
    assert uploader.finish()["skipped"] == [
        {
            "path": "much-longer-name.txt",
            "reason": f"its object key would be longer than the store's {limit} bytes",
        }
    ]
    store.max_key_bytes = None  # once it can be kept, the next pass keeps it
    manifest = uploader.finish()
    assert [item["path"] for item in manifest["files"]] == ["much-longer-name.txt", "short.txt"]
    assert "skipped" not in manifest
