"""What the uploader's tests share: the job's folder, S3 read back with minio, the process."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from ocps_jobs.conventions import (
    LOG_RESULT_NAME,
    archive_key,
    job_prefix,
    manifest_key,
    output_key,
)
from ocps_jobs.errors import BackendUnavailableError
from ocps_jobs.models import JobParameters, JobRecord, Phase
from ocps_jobs.objectstore.base import guess_content_type
from ocps_jobs.objectstore.filesystem import FilesystemStore
from ocps_jobs.uploader.contract import EXIT_CODE_FILE_NAME
from tests.helpers import wait_until

GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds
MB = 1024 * 1024


# --- the job's folder, as the pod's shared volume holds it ------------------------------------


@dataclass
class JobFolder:
    job_id: str
    work: Path
    out: Path

    @property
    def exit_code_file(self) -> Path:
        return self.work / EXIT_CODE_FILE_NAME

    @property
    def log_file(self) -> Path:
        return self.work / LOG_RESULT_NAME

    def write(self, relative: str, data: bytes) -> bytes:
        path = self.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def exit(self, code: int) -> None:
        """What the wrapper does when the command ends."""
        temporary = self.work / f"{EXIT_CODE_FILE_NAME}.tmp"
        temporary.write_text(f"{code}\n")
        temporary.replace(self.exit_code_file)

    def seed(self) -> str:
        """The creation-time record the Kubernetes backend hands the sidecar."""
        now = datetime.now(UTC).replace(microsecond=0)
        record = JobRecord(
            job_id=self.job_id,
            run_id="run-42",
            owner="ocps",
            phase=Phase.EXECUTING,
            creation_time=now,
            start_time=now,
            execution_duration=3600,
            parameters=JobParameters(command="cd $JOB_SOURCE_DIR && bash bin/pipetask.sh"),
        )
        return record.model_dump_json(exclude={"environment"})


def read_object(minio: Minio, bucket: str, key: str) -> bytes:
    response = minio.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def output_objects(minio: Minio, bucket: str, job_id: str) -> dict[str, Any]:
    """Relative path -> listed object, for the job's outputs."""
    prefix = output_key(job_id, "")
    return {
        item.object_name.removeprefix(prefix): item
        for item in minio.list_objects(bucket, prefix=prefix, recursive=True)
    }


def exists(minio: Minio, bucket: str, key: str) -> bool:
    return any(True for _ in minio.list_objects(bucket, prefix=key))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_uploaded_intact(
    minio: Minio, bucket: str, job: JobFolder, expected: dict[str, bytes]
) -> dict[str, Any]:
    """Every object equals its local file; the manifest lists exactly them; returns it."""
    listed = output_objects(minio, bucket, job.job_id)
    assert sorted(listed) == sorted(expected)
    manifest: dict[str, Any] = json.loads(read_object(minio, bucket, manifest_key(job.job_id)))
    assert manifest["version"] == 1 and manifest["jobId"] == job.job_id
    assert [item["path"] for item in manifest["files"]] == sorted(expected)
    for item in manifest["files"]:
        relative = item["path"]
        data = read_object(minio, bucket, item["key"])
        assert item["key"] == output_key(job.job_id, relative)
        assert sha256(data) == sha256(expected[relative]) == item["sha256"], relative
        assert len(data) == item["size"] == listed[relative].size, relative
        assert item["contentType"] == guess_content_type(relative)
        stat = minio.stat_object(bucket, item["key"])
        assert stat.content_type == item["contentType"], relative
    return manifest


def archived_record(minio: Minio, bucket: str, job_id: str) -> JobRecord:
    """job.json, read the way the Kubernetes backend reads it after the TTL."""
    return JobRecord.model_validate_json(read_object(minio, bucket, archive_key(job_id)))


# --- the sidecar process -----------------------------------------------------------------------


@dataclass
class Sidecar:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None

    def terminate(self, within: float = GRACE_SECONDS) -> tuple[int, float]:
        """SIGTERM, as the kubelet sends it; the exit code and how long the exit took."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sidecar outlived the {within} s grace period:\n{self.log}")
        return code, time.monotonic() - started


def wait_for_archive(
    minio: Minio,
    bucket: str,
    sidecar: Sidecar,
    job: JobFolder,
    timeout: float,
    expected: dict[str, bytes] | None = None,
) -> None:
    """Poll the job's objects until job.json is there, checking the write order at every look.

    Each listing is one consistent view of the bucket: whenever it holds the manifest it
    must hold every expected output, and whenever it holds job.json, the manifest.
    """
    outputs = output_key(job.job_id, "")

    def archived() -> bool:
        if not sidecar.running():
            pytest.fail(f"the sidecar exited early ({sidecar.process.returncode}):\n{sidecar.log}")
        names = {
            item.object_name
            for item in minio.list_objects(bucket, prefix=job_prefix(job.job_id), recursive=True)
        }
        has_manifest = manifest_key(job.job_id) in names
        has_record = archive_key(job.job_id) in names
        assert has_manifest or not has_record, "job.json was written before the manifest"
        if has_manifest and expected is not None:
            uploaded = {name.removeprefix(outputs) for name in names if name.startswith(outputs)}
            assert uploaded == set(expected), "the manifest was written before every output"
        return has_record

    try:
        wait_until(archived, timeout=timeout, interval=0.05)
    except AssertionError as error:
        if "written before" in str(error):
            raise
        pytest.fail(f"no job.json within {timeout} s:\n{sidecar.log}")


def assert_written_last(minio: Minio, bucket: str, job: JobFolder) -> None:
    """S3's own clock agrees (to its one-second resolution): outputs, then manifest, then record."""
    times = {
        item.object_name: item.last_modified
        for item in minio.list_objects(bucket, prefix=job_prefix(job.job_id), recursive=True)
    }
    manifest, record = times.pop(manifest_key(job.job_id)), times.pop(archive_key(job.job_id))
    assert max(times.values()) <= manifest <= record


# --- output trees ------------------------------------------------------------------------------


def nested_tree(job: JobFolder, tmp_path: Path) -> dict[str, bytes]:
    """Several levels, many small files, MB-sized binaries, odd names, an empty file, symlinks.

    Returns what must be uploaded (relative path -> bytes); the symlinks must not be.
    """
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    expected: dict[str, bytes] = {}
    folders = ["", "a", "a/b", "a/b/c", "a/b/c/d", "logs", "with space", "résumé ünïcode/日本"]
    for n in range(120):
        folder = folders[n % len(folders)]
        suffix = [".txt", ".json", ".yaml", ".log", ".ecsv", ""][n % 6]
        relative = f"{folder}/small-{n:03d}{suffix}".lstrip("/")
        expected[relative] = job.write(relative, rng.randbytes(rng.randrange(1, 4096)))
    for relative, size in [
        ("images/raw 1.fits", 2 * MB + 17),
        ("a/b/c/d/deep.bin", 3 * MB),
        ("calexp/visit=42/part.parquet", 1 * MB),
        # Over the store's 16 MiB multipart threshold: a multipart upload.
        ("big/coadd.fits.fz", 17 * MB + 5),
    ]:
        expected[relative] = job.write(relative, rng.randbytes(size))
    expected["empty.txt"] = job.write("empty.txt", b"")
    expected["résumé ünïcode/日本/データ ファイル.json"] = job.write(
        "résumé ünïcode/日本/データ ファイル.json", '{"ключ": "値"}'.encode()
    )
    expected["with space/name with spaces & (parens).txt"] = job.write(
        "with space/name with spaces & (parens).txt", b"spaces\n"
    )
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("never upload me")
    (job.out / "link-to-file.txt").symlink_to(job.out / "a" / "small-001.json")
    (job.out / "a" / "linked-outside").symlink_to(outside, target_is_directory=True)
    (job.out / "linked-secret.txt").symlink_to(outside / "secret.txt")
    (job.out / "dangling").symlink_to(job.out / "nowhere")
    return expected


def many_files(job: JobFolder, count: int, size: int, seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    return {
        relative: job.write(relative, rng.randbytes(size + n))
        for n in range(count)
        for relative in [f"batch/{n % 10}/file-{n:04d}.dat"]
    }


def run_job_to_the_archive(
    job: JobFolder,
    bucket: str,
    minio: Minio,
    start_sidecar: Callable[..., Sidecar],
    expected: dict[str, bytes],
    **start: Any,
) -> tuple[dict[str, Any], Sidecar]:
    """The job ends 0 with a log; its sidecar archives exactly ``expected``: the manifest."""
    job.log_file.write_text("done\n")
    expected = {**expected, LOG_RESULT_NAME: job.log_file.read_bytes()}
    job.exit(0)
    sidecar = start_sidecar(job, bucket, **start)
    wait_for_archive(minio, bucket, sidecar, job, 60, expected)
    code, _seconds = sidecar.terminate()
    assert code == 0, sidecar.log
    manifest = assert_uploaded_intact(minio, bucket, job, expected)
    assert archived_record(minio, bucket, job.job_id).phase is Phase.COMPLETED
    return manifest, sidecar


def without_root_file_access() -> tuple[str, ...]:
    """A command prefix under which the file modes bind this process, even as root."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")  # util-linux
    assert setpriv, "root runs these tests: setpriv (util-linux) is needed to drop DAC override"
    dropped = "-dac_override,-dac_read_search"
    return (setpriv, f"--bounding-set={dropped}", f"--inh-caps={dropped}")


def deep_file(root: Path, levels: int, data: bytes) -> str:
    """A file below ``levels`` folders of 250 characters: a path past Linux's 4,096 bytes."""
    parts = [f"{level:03d}" + "d" * 247 for level in range(levels)]
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            os.mkdir(part, dir_fd=folder)
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder)
            os.close(folder)
            folder = inner
        out = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=folder)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(folder)
    return "/".join([*parts, "deep.txt"])


class RefusingStore(FilesystemStore):
    """A store whose own side answers PermissionError (say, its folder turned read-only)."""

    def put_file(self, key: str, path: str, content_type: str) -> str:
        raise PermissionError(13, "Permission denied", key)


def write_raw(folder: Path, name: bytes, data: bytes) -> None:
    """A file whose name is raw bytes (not UTF-8), as a pipeline writing Latin-1 names makes."""
    with open(os.path.join(os.fsencode(folder), name), "wb") as out:
        out.write(data)


def kept(store: FilesystemStore, job_id: str, manifest: dict[str, Any]) -> dict[str, bytes]:
    """Each result name in the manifest with the bytes the store holds under its key."""
    return {item["path"]: store.get_bytes(item["key"]) or b"" for item in manifest["files"]}


class FlakyStore(FilesystemStore):
    """A real filesystem store whose uploads fail as an unavailable S3 would, on demand."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failures: dict[str, int] = {}  # key -> how many more calls fail (-1: forever)
        self.calls: list[str] = []

    def _maybe_fail(self, key: str) -> None:
        self.calls.append(key)
        left = self.failures.get(key, 0)
        if left:
            self.failures[key] = left - 1 if left > 0 else left
            raise BackendUnavailableError(f"Object store unavailable (put {key})")

    def put_file(self, key: str, path: str, content_type: str) -> str:
        self._maybe_fail(key)
        return super().put_file(key, path, content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._maybe_fail(key)
        super().put_bytes(key, data, content_type)
