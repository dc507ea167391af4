"""The operator's limits on a job's outputs: files past them skipped, the rest kept (both ends)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from minio import Minio

from ocps_jobs.conventions import LOG_RESULT_NAME, output_key
from ocps_jobs.uploader.contract import OutputLimits
from ocps_jobs.uploader.manifest import encode_manifest, manifest_skipped
from ocps_jobs.uploader.scan import scan_outputs
from ocps_jobs.uploader.skips import MAX_SKIPPED_LISTED
from ocps_jobs.uploader.upload import Uploader
from tests.uploader.helpers import (
    FlakyStore,
    JobFolder,
    Sidecar,
    archived_record,
    kept,
    run_job_to_the_archive,
)

GIB = 1024**3


def sparse_file(path: Path, size: int) -> None:
    """A file of ``size`` apparent bytes that takes (almost) no disk: a hole."""
    with path.open("wb") as out:
        out.truncate(size)


def skipped(manifest: dict) -> dict[str, str]:
    return {item["path"]: item["reason"] for item in manifest.get("skipped", [])}


def test_files_past_the_count_limit_are_skipped_and_the_first_kept(
    job: JobFolder, store: FlakyStore
) -> None:
    for n in range(12):
        job.write(f"f-{n:02d}.txt", f"{n}\n".encode())
    job.log_file.write_text("captured\n")
    limits = OutputLimits(max_files=5)
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None, limits=limits)
    manifest = uploader.finish({LOG_RESULT_NAME: job.log_file}, exitCode=0)
    first = {f"f-{n:02d}.txt": f"{n}\n".encode() for n in range(5)}
    # The captured log is the service's own: never counted, always kept.
    assert kept(store, job.job_id, manifest) == {**first, LOG_RESULT_NAME: b"captured\n"}
    assert skipped(manifest) == {
        f"f-{n:02d}.txt": "over the job's output-files limit (5 files)" for n in range(5, 12)
    }
    for n in range(5, 12):
        assert output_key(job.job_id, f"f-{n:02d}.txt") not in store.calls
    assert manifest["exitCode"] == 0


def test_a_sparse_file_over_the_byte_limit_is_skipped_without_being_read(
    job: JobFolder, store: FlakyStore
) -> None:
    job.write("a-first.txt", b"x" * 600)
    sparse_file(job.out / "b-huge.fits", 5 * GIB)  # 5 GB apparent, no disk
    job.write("c-later.txt", b"y" * 300)  # a later file that still fits is kept
    job.write("d-over.txt", b"z" * 200)
    uploader = Uploader(
        store, job.job_id, job.out, sleep=lambda _s: None, limits=OutputLimits(max_bytes=1000)
    )
    manifest = uploader.finish()
    assert kept(store, job.job_id, manifest) == {
        "a-first.txt": b"x" * 600,
        "c-later.txt": b"y" * 300,
    }
    reason = "over the job's output-bytes limit (1000 bytes)"
    assert skipped(manifest) == {"b-huge.fits": reason, "d-over.txt": reason}
    # The store was never handed it: not a byte read, not a byte of disk spent.
    assert output_key(job.job_id, "b-huge.fits") not in store.calls
    assert store.head(output_key(job.job_id, "b-huge.fits")) is None
    stored = sum(
        os.stat(os.path.join(folder, name)).st_blocks * 512
        for folder, _dirs, names in os.walk(store.root)
        for name in names
    )
    assert stored < 1024 * 1024


def test_files_deeper_than_the_depth_limit_are_skipped_by_folder(
    job: JobFolder, store: FlakyStore
) -> None:
    job.write("top.txt", b"top")
    job.write("a/b/two-deep.txt", b"two")
    job.write("a/b/c/three-deep.txt", b"three")
    job.write("a/b/c/d/e/deeper.txt", b"deeper")
    uploader = Uploader(
        store, job.job_id, job.out, sleep=lambda _s: None, limits=OutputLimits(max_depth=2)
    )
    manifest = uploader.finish()
    assert kept(store, job.job_id, manifest) == {"top.txt": b"top", "a/b/two-deep.txt": b"two"}
    # One entry for the folder that was not read, not one per file below it.
    assert skipped(manifest) == {"a/b/c/": "deeper than the job's output-depth limit (2 folders)"}
    assert not [key for key in store.calls if "/a/b/c/" in key]


def test_a_file_the_limit_reaches_in_a_later_pass_is_no_longer_listed(
    job: JobFolder, store: FlakyStore
) -> None:
    for name in ("b.txt", "c.txt", "d.txt"):
        job.write(name, name.encode())
    limits = OutputLimits(max_files=3)
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None, limits=limits)
    assert uploader.upload_changed() == 3
    job.write("a.txt", b"a.txt")  # comes first in the scan's order: d.txt is now the fourth
    manifest = uploader.finish()
    assert sorted(kept(store, job.job_id, manifest)) == ["a.txt", "b.txt", "c.txt"]
    assert skipped(manifest) == {"d.txt": "over the job's output-files limit (3 files)"}
    (job.out / "a.txt").unlink()  # room again: d.txt is a result once more
    manifest = uploader.finish()
    assert sorted(kept(store, job.job_id, manifest)) == ["b.txt", "c.txt", "d.txt"]
    assert "skipped" not in manifest


def test_the_sidecar_enforces_the_limits_it_is_given(
    job: JobFolder,
    ready_bucket: str,
    minio: Minio,
    start_sidecar: Callable[..., Sidecar],
) -> None:
    sparse_file(job.out / "big.bin", 5 * GIB)
    expected = {f"f-{n}.txt": job.write(f"f-{n}.txt", b"%d" % n) for n in (1, 2, 3)}
    job.write("f-4.txt", b"4")
    job.write("x/y/deep.txt", b"deep")
    manifest, _sidecar = run_job_to_the_archive(
        job,
        ready_bucket,
        minio,
        start_sidecar,
        expected,  # exactly these (and the log) reach S3: the big file never does
        OCPS_MAX_OUTPUT_BYTES=str(1024 * 1024),
        OCPS_MAX_OUTPUT_FILES="3",
        OCPS_MAX_OUTPUT_DEPTH="1",
    )
    assert skipped(manifest) == {
        "big.bin": f"over the job's output-bytes limit ({1024 * 1024} bytes)",
        "f-4.txt": "over the job's output-files limit (3 files)",
        "x/y/": "deeper than the job's output-depth limit (1 folder)",
    }
    record = archived_record(minio, ready_bucket, job.job_id)
    assert len(record.results or []) == len(expected) + 1  # and the log


# --- a tree of very many files: a bounded scan and a bounded ``skipped`` list ---------------


def many_files(folder: Path, count: int, prefix: str = "f") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (folder / f"{prefix}-{n:05d}.txt").touch()


def test_past_the_file_count_the_skipped_list_names_a_few_hundred_then_counts(
    job: JobFolder, store: FlakyStore
) -> None:
    many_files(job.out, 2000)
    job.log_file.write_text("captured\n")
    uploader = Uploader(
        store, job.job_id, job.out, sleep=lambda _s: None, limits=OutputLimits(max_files=5)
    )
    manifest = uploader.finish({LOG_RESULT_NAME: job.log_file}, exitCode=0)
    # The job's other results are kept: its first five files and the log.
    assert sorted(kept(store, job.job_id, manifest)) == [
        *(f"f-{n:05d}.txt" for n in range(5)),
        LOG_RESULT_NAME,
    ]
    reason = "over the job's output-files limit (5 files)"
    entries = manifest["skipped"]
    assert len(entries) == MAX_SKIPPED_LISTED + 1
    assert entries[:MAX_SKIPPED_LISTED] == [
        {"path": f"f-{n:05d}.txt", "reason": reason} for n in range(5, 5 + MAX_SKIPPED_LISTED)
    ]
    assert entries[-1] == {"more": 2000 - 5 - MAX_SKIPPED_LISTED, "reason": reason}
    assert len(encode_manifest(manifest)) < 64 * 1024


def test_the_scan_stops_at_its_bound_and_names_the_folders_it_did_not_read(
    job: JobFolder, store: FlakyStore
) -> None:
    for folder in ("a", "b", "c"):
        many_files(job.out / folder, 50)
    # 3 folders, then a/'s 50 files, then 7 of b/'s: 60 entries, and the walk ends there.
    uploader = Uploader(
        store,
        job.job_id,
        job.out,
        sleep=lambda _s: None,
        limits=OutputLimits(max_files=5),
        scan_entries=60,
    )
    manifest = uploader.finish()
    assert sorted(kept(store, job.job_id, manifest)) == [f"a/f-{n:05d}.txt" for n in range(5)]
    over = "over the job's output-files limit (5 files)"
    unread = "not read whole: the scan stops after 60 files and folders"
    assert manifest_skipped(manifest) == {
        **{f"a/f-{n:05d}.txt": over for n in range(5, 50)},
        **{name: over for name in manifest_skipped(manifest) if name.startswith("b/f-")},
        "b/": unread,
        "c/": unread,
    }
    assert sum(name.startswith("b/f-") for name in manifest_skipped(manifest)) == 7


def test_a_scan_with_a_bound_reads_no_more_entries_than_it(job: JobFolder) -> None:
    many_files(job.out, 1000)
    unread: list[str] = []
    found = list(scan_outputs(job.out, max_entries=100, unread=unread))
    assert len(found) == 100 and unread == ["./"]
    # Within the bound, in name order among themselves.
    assert [item.relative_path for item in found] == sorted(item.relative_path for item in found)
    assert len(list(scan_outputs(job.out, max_entries=1000, unread=unread))) == 1000
    assert unread == ["./"]  # the whole folder fitted: nothing more was left unread
