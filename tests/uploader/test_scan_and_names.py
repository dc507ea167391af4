"""Scanning the job's files without following links, opening them beneath its folder, names."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ocps_jobs.objectstore.filesystem import FilesystemStore
from ocps_jobs.uploader import upload as upload_module
from ocps_jobs.uploader.names import alternate_name, result_name
from ocps_jobs.uploader.scan import open_beneath, read_job_file, scan_outputs
from ocps_jobs.uploader.upload import Uploader
from tests.uploader.helpers import (
    JobFolder,
    deep_file,
    kept,
)


@pytest.mark.parametrize("store_knows_its_limit", [True, False])
def test_a_path_longer_than_the_file_system_takes_whole_is_named_and_the_rest_kept(
    job: JobFolder, tmp_path: Path, store_knows_its_limit: bool
) -> None:
    job.write("keep.txt", b"keep")
    deep = deep_file(job.out, 18, b"deep")  # 4,518 bytes below the output folder
    assert [item.relative_path for item in scan_outputs(job.out)] == ["keep.txt", deep]
    store = FilesystemStore(tmp_path / "store")
    limit = store.max_key_bytes
    if not store_knows_its_limit:
        store.max_key_bytes = None  # then the copy itself fails (ENAMETOOLONG)
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None)
    manifest = uploader.finish()
    assert kept(store, job.job_id, manifest) == {"keep.txt": b"keep"}
    reason = (
        f"its object key would be longer than the store's {limit} bytes"
        if store_knows_its_limit
        else "its path is too long for the store"
    )
    assert manifest["skipped"] == [{"path": deep, "reason": reason}]


def test_a_link_swapped_in_after_the_scan_is_not_followed(
    job: JobFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The uploader's own secrets, as /proc/self/environ would show them to it.
    secrets = tmp_path / "proc-self"
    secrets.mkdir()
    (secrets / "environ").write_bytes(b"AWS_SECRET_ACCESS_KEY=s3cr3t")
    job.write("d/environ", b"the job's file")
    job.write("plain.txt", b"plain")
    scan = upload_module.scan_outputs

    def scan_then_swap(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from scan(*args, **kwargs)
        # Between the scan and the upload: the folder, then a file, become links.
        (job.out / "d").rename(job.out / "d-old")
        (job.out / "d").symlink_to(secrets, target_is_directory=True)
        (job.out / "plain.txt").unlink()
        (job.out / "plain.txt").symlink_to(secrets / "environ")

    monkeypatch.setattr(upload_module, "scan_outputs", scan_then_swap)
    store = FilesystemStore(tmp_path / "store")
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None)
    uploader.upload_changed()
    stored = b"".join(store.get_bytes(info.key) or b"" for info in store.list_objects("jobs/"))
    assert b"s3cr3t" not in stored
    monkeypatch.setattr(upload_module, "scan_outputs", scan)
    manifest = uploader.finish()  # the next pass sees the links and skips them
    assert kept(store, job.job_id, manifest) == {"d-old/environ": b"the job's file"}


def test_open_beneath_follows_no_link_on_the_way(tmp_path: Path) -> None:
    (tmp_path / "out" / "d").mkdir(parents=True)
    (tmp_path / "out" / "d" / "f").write_text("real")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f").write_text("outside")
    (tmp_path / "out" / "link-dir").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "out" / "link-file").symlink_to(tmp_path / "elsewhere" / "f")
    os.mkfifo(tmp_path / "out" / "fifo")
    with socket.socket(socket.AF_UNIX) as listening:  # its file stays once it is closed
        listening.bind(str(tmp_path / "out" / "socket"))
    with os.fdopen(open_beneath(str(tmp_path / "out"), "d/f")) as opened:
        assert opened.read() == "real"
    for source, code in [
        ("link-dir/f", errno.ENOTDIR),
        ("link-file", errno.ELOOP),
        ("fifo", errno.ENOENT),  # does not block, is not a result
        ("socket", errno.ENXIO),  # not a result either (the upload takes it as gone)
        ("d/missing", errno.ENOENT),
    ]:
        with pytest.raises(OSError, match=rf"^\[Errno {code}\] "):
            os.close(open_beneath(str(tmp_path / "out"), source))


def test_an_output_folder_swapped_for_a_link_is_not_followed(
    job: JobFolder, tmp_path: Path
) -> None:
    secrets = tmp_path / "proc-self"
    secrets.mkdir()
    (secrets / "environ").write_bytes(b"AWS_SECRET_ACCESS_KEY=s3cr3t")
    job.out.rmdir()
    job.out.symlink_to(secrets, target_is_directory=True)  # rm -r $JOB_OUTPUT_DIR; ln -s
    store = FilesystemStore(tmp_path / "store")
    manifest = Uploader(store, job.job_id, job.out, sleep=lambda _s: None).finish()
    assert manifest["files"] == [] and "skipped" not in manifest
    assert store.list_objects(f"jobs/{job.job_id}/out/") == []


def test_a_file_that_became_unreadable_is_not_listed_with_its_old_content(
    job: JobFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job.write("a.txt", b"first version")
    store = FilesystemStore(tmp_path / "store")
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None)
    assert uploader.upload_changed() == 1
    job.write("a.txt", b"second, then mode 000")
    opened = upload_module.open_beneath

    def forbidden(root: str, source: str) -> int:
        if source == "a.txt":  # what chmod 0 does to a reader without root's override
            raise PermissionError(errno.EACCES, "Permission denied", source)
        return opened(root, source)

    monkeypatch.setattr(upload_module, "open_beneath", forbidden)
    manifest = uploader.finish()
    assert manifest["files"] == []
    assert manifest["skipped"] == [
        {"path": "a.txt", "reason": "the job left it unreadable to the uploader's user"}
    ]


def test_read_job_file_reads_no_link(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("AWS_SECRET_ACCESS_KEY=s3cr3t")
    (tmp_path / "stderr").symlink_to(tmp_path / "secret")
    assert read_job_file(tmp_path / "stderr", 1024) == ""
    (tmp_path / "stderr").unlink()
    (tmp_path / "stderr").write_text("x" * 100 + "last line\n")
    assert read_job_file(tmp_path / "stderr", 10) == "last line\n"


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"plain/file.fits", "plain/file.fits"),
        ("caf\u00e9/\u65e5\u672c.txt".encode(), "caf\u00e9/\u65e5\u672c.txt"),
        (b"latin-1 caf\xe9.txt", "latin-1 caf%E9.txt"),
        (b"\xed\xa0\x80 encoded surrogate", "%ED%A0%80 encoded surrogate"),
        (b"100%25 literal.txt", "100%25 literal.txt"),
        (b"new\nline\ttab\x7f.txt", "new%0Aline%09tab%7F.txt"),
        (b"back\\slash.txt", "back%5Cslash.txt"),
    ],
)
def test_result_name_escapes_only_bytes_that_are_not_utf8(raw: bytes, name: str) -> None:
    assert result_name(os.fsdecode(raw)) == name
    assert name.encode("utf-8")  # always encodable: an S3 key, a JSON string


@pytest.mark.parametrize(
    ("name", "number", "alternate"),
    [
        ("ocps-job.log", 2, "ocps-job~2.log"),
        ("deep/coadd.fits.fz", 3, "deep/coadd~3.fits.fz"),
        ("README", 2, "README~2"),
        ("dir.d/.hidden", 2, "dir.d/.hidden~2"),
        ("caf%E9.txt", 2, "caf%E9~2.txt"),
    ],
)
def test_alternate_name_numbers_the_stem(name: str, number: int, alternate: str) -> None:
    assert alternate_name(name, number) == alternate


def test_scan_outputs_skips_links_and_special_files(job: JobFolder, tmp_path: Path) -> None:
    job.write("real.txt", b"r")
    job.write("deep/er/file", b"f")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x").write_text("x")
    (job.out / "to-file").symlink_to(job.out / "real.txt")
    (job.out / "to-dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (job.out / "dangling").symlink_to(job.out / "missing")
    os.mkfifo(job.out / "pipe")
    assert [item.relative_path for item in scan_outputs(job.out)] == ["real.txt", "deep/er/file"]
