"""The upload sidecar, run as the real process against moto's S3 server (no mocks of boto3).

minio-py reads back what the sidecar wrote; ``tests.faults.TcpProxy`` stands between the
sidecar and moto where a test needs an S3 outage. The test plays the job's wrapper: it
writes the output tree, ``<work>/stderr``, the log and, when the command "ends", the
exit-code file (atomically, as the wrapper does).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from minio import Minio

from ocps_jobs import sidecar as sidecar_module
from ocps_jobs.backends.kubernetes.spec import GIT_CLONE_SCRIPT
from ocps_jobs.conventions import (
    LOG_RESULT_NAME,
    archive_key,
    job_prefix,
    manifest_key,
    output_key,
    replica_manifest_key,
)
from ocps_jobs.errors import BackendUnavailableError
from ocps_jobs.models import JobParameters, JobRecord, Phase
from ocps_jobs.objectstore.base import guess_content_type
from ocps_jobs.objectstore.filesystem import FilesystemStore
from ocps_jobs.sidecar import (
    Uploader,
    alternate_name,
    final_record,
    merged_manifest,
    open_beneath,
    read_job_file,
    result_name,
    scan_outputs,
)
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.faults import TcpProxy
from tests.helpers import make_pipeline_repo, wait_until

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
        return self.work / "exit-code"

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
        temporary = self.work / "exit-code.tmp"
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


@pytest.fixture
def start_sidecar(
    tmp_path: Path, s3_endpoint: str, s3_credentials: None
) -> Iterator[Callable[..., Sidecar]]:
    """Start ``python -m ocps_jobs.sidecar``; every process is killed and reaped afterwards."""
    started: list[Sidecar] = []

    def start(
        job: JobFolder,
        bucket: str,
        *,
        endpoint: str | None = None,
        wrapper: tuple[str, ...] = (),
        **settings: str,
    ) -> Sidecar:
        env = {
            **os.environ,
            "JOB_ID": job.job_id,
            "JOB_OUTPUT_DIR": str(job.out),
            "OCPS_EXIT_CODE_FILE": str(job.exit_code_file),
            "OCPS_LOG_FILE": str(job.log_file),
            "OCPS_S3_ENDPOINT": endpoint or s3_endpoint,
            "OCPS_BUCKET": bucket,
            "OCPS_S3_REGION": "us-east-1",
            "OCPS_UPLOAD_INTERVAL": "10",
            "OCPS_JOB_RECORD": job.seed(),
            "PYTHONUNBUFFERED": "1",
            **settings,
        }
        log_path = tmp_path / f"sidecar-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "ocps_jobs.sidecar"],
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


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[TcpProxy]:
    """A cuttable TCP proxy in front of moto."""
    address = urlparse(s3_endpoint)
    with TcpProxy((address.hostname or "127.0.0.1", address.port or 80)) as running:
        yield running


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


# --- 1. a nested tree uploads intact --------------------------------------------------------------


def test_a_nested_tree_uploads_intact_manifest_and_record_last(
    job: JobFolder,
    tmp_path: Path,
    ready_bucket: str,
    minio: Minio,
    start_sidecar: Callable[..., Sidecar],
) -> None:
    expected = nested_tree(job, tmp_path)
    job.log_file.write_text("pipetask: started\npipetask: done\n")
    job.exit(0)
    expected[LOG_RESULT_NAME] = job.log_file.read_bytes()

    sidecar = start_sidecar(job, ready_bucket)
    wait_for_archive(minio, ready_bucket, sidecar, job, 60, expected)
    assert sidecar.running(), "a native sidecar stays up until the pod ends"
    code, _seconds = sidecar.terminate()
    assert code == 0, sidecar.log

    manifest = assert_uploaded_intact(minio, ready_bucket, job, expected)
    assert manifest["exitCode"] == 0
    listed = output_objects(minio, ready_bucket, job.job_id)
    assert not any("secret" in name or "link" in name or "dangling" in name for name in listed)
    stats = {
        relative: minio.stat_object(ready_bucket, output_key(job.job_id, relative)).content_type
        for relative in ("images/raw 1.fits", "big/coadd.fits.fz", "a/b/c/d/deep.bin", "empty.txt")
    }
    assert stats == {
        "images/raw 1.fits": "application/fits",
        "big/coadd.fits.fz": "application/fits",
        "a/b/c/d/deep.bin": "application/octet-stream",
        "empty.txt": "text/plain",
    }

    record = archived_record(minio, ready_bucket, job.job_id)
    assert (record.job_id, record.run_id, record.owner) == (job.job_id, "run-42", "ocps")
    assert record.phase is Phase.COMPLETED and record.error_message == ""
    assert record.end_time is not None and record.execution_duration == 3600
    assert record.results is not None
    assert [(r.key, r.size, r.content_type) for r in record.results] == [
        (item["key"], item["size"], item["contentType"]) for item in manifest["files"]
    ]

    assert_written_last(minio, ready_bucket, job)


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


def test_a_file_name_that_is_not_utf8_is_kept_escaped_and_stops_nothing(
    job: JobFolder, ready_bucket: str, minio: Minio, start_sidecar: Callable[..., Sidecar]
) -> None:
    # A name of raw bytes, as a pipeline writing Latin-1 names would make on Linux.
    (job.out / "raw").mkdir()
    with open(os.path.join(os.fsencode(job.out / "raw"), b"caf\xe9 \xff.txt"), "wb") as out:
        out.write(b"not utf-8 named")
    expected = {
        "raw/caf%E9 %FF.txt": b"not utf-8 named",
        "ok.txt": job.write("ok.txt", b"fine"),
        "caf\u00e9.txt": job.write("caf\u00e9.txt", b"utf-8 named"),
    }
    manifest, _ = run_job_to_the_archive(job, ready_bucket, minio, start_sidecar, expected)
    assert "skipped" not in manifest


@pytest.mark.parametrize("failing", [None, 1])
def test_replicas_each_upload_and_the_last_to_finish_merges_them(
    tmp_path: Path,
    ready_bucket: str,
    minio: Minio,
    start_sidecar: Callable[..., Sidecar],
    failing: int | None,
) -> None:
    """Three pods of an Indexed Job, each with its own folder and uploader, one job's outputs."""
    job_id = uuid.uuid4().hex
    replicas = []
    for index in range(3):
        work = tmp_path / f"pod-{index}" / job_id
        (work / "out").mkdir(parents=True)
        replica = JobFolder(job_id, work, work / "out")
        replica.write(f"part-{index}.txt", f"part {index}".encode())
        replica.write("common/config.yaml", b"same: everywhere\n")
        replica.log_file.write_text(f"log of replica {index}\n")
        replicas.append(replica)

    def started(index: int) -> Sidecar:
        replicas[index].exit(3 if index == failing else 0)
        return start_sidecar(
            replicas[index], ready_bucket, OCPS_REPLICAS="3", JOB_REPLICA_INDEX=str(index)
        )

    sidecars = [started(0), started(1)]
    for key in (replica_manifest_key(job_id, 0), replica_manifest_key(job_id, 1)):
        wait_until(lambda key=key: exists(minio, ready_bucket, key))
    time.sleep(0.5)
    assert not exists(minio, ready_bucket, manifest_key(job_id))  # one replica still runs
    assert not exists(minio, ready_bucket, archive_key(job_id))
    sidecars.append(started(2))
    wait_until(lambda: exists(minio, ready_bucket, archive_key(job_id)), timeout=60)
    for sidecar in sidecars:
        assert sidecar.terminate()[0] == 0, sidecar.log

    manifest = json.loads(read_object(minio, ready_bucket, manifest_key(job_id)))
    assert [item["path"] for item in manifest["files"]] == [
        "common/config.yaml",
        "ocps-job-0.log",
        "ocps-job-1.log",
        "ocps-job-2.log",
        "part-0.txt",
        "part-1.txt",
        "part-2.txt",
    ]
    for item in manifest["files"]:
        assert sha256(read_object(minio, ready_bucket, item["key"])) == item["sha256"]
    assert [entry["exitCode"] for entry in manifest["replicas"]] == [
        3 if index == failing else 0 for index in range(3)
    ]
    record = archived_record(minio, ready_bucket, job_id)
    assert record.results is not None
    assert [result.key for result in record.results] == [item["key"] for item in manifest["files"]]
    if failing is None:
        assert record.phase is Phase.COMPLETED
    else:
        assert record.phase is Phase.ERROR
        assert record.error_message == "Command exited with code 3"


def replica_manifest(job_id: str, index: int, code: int | None, **sizes: int) -> bytes:
    files = [
        {"path": name, "key": output_key(job_id, name), "size": size, "sha256": "-"}
        for name, size in sizes.items()
    ]
    return json.dumps({"jobId": job_id, "files": files, "exitCode": code}).encode()


def test_a_merge_takes_the_failure_over_the_replicas_it_stopped(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    job_id = uuid.uuid4().hex
    for index, code in enumerate([0, 3, None]):  # the failure stopped replica 2
        store.put_bytes(
            replica_manifest_key(job_id, index), replica_manifest(job_id, index, code), "x"
        )
    manifest = merged_manifest(store, job_id, 3)
    assert manifest is not None and manifest["exitCode"] == 3
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


def test_the_record_to_archive_is_read_from_the_file_the_kubelet_writes(
    job: JobFolder, ready_bucket: str, minio: Minio, start_sidecar: Callable[..., Sidecar]
) -> None:
    record = json.loads(job.seed())
    record["run_id"] = "read from the record file"
    record_file = job.work.parent / "record.json"  # /etc/ocps-job/record.json in the pod
    record_file.write_text(json.dumps(record))
    expected = {"a.txt": job.write("a.txt", b"a")}
    run_job_to_the_archive(
        job, ready_bucket, minio, start_sidecar, expected, OCPS_JOB_RECORD_FILE=str(record_file)
    )
    assert archived_record(minio, ready_bucket, job.job_id).run_id == "read from the record file"


def without_root_file_access() -> tuple[str, ...]:
    """A command prefix under which the file modes bind this process, even as root."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")  # util-linux
    assert setpriv, "root runs these tests: setpriv (util-linux) is needed to drop DAC override"
    dropped = "-dac_override,-dac_read_search"
    return (setpriv, f"--bounding-set={dropped}", f"--inh-caps={dropped}")


def test_a_file_the_uploader_may_not_read_is_named_and_the_rest_kept(
    job: JobFolder, ready_bucket: str, minio: Minio, start_sidecar: Callable[..., Sidecar]
) -> None:
    expected = {
        "kept/a.txt": job.write("kept/a.txt", b"readable"),
        "b.fits": job.write("b.fits", b"also readable"),
    }
    job.write("locked/secret.dat", b"mode 000")
    (job.out / "locked" / "secret.dat").chmod(0)
    manifest, sidecar = run_job_to_the_archive(
        job, ready_bucket, minio, start_sidecar, expected, wrapper=without_root_file_access()
    )
    assert manifest["skipped"] == [
        {"path": "locked/secret.dat", "reason": "the job left it unreadable to the uploader's user"}
    ]
    assert "locked/secret.dat is not uploaded" in sidecar.log


def test_a_path_longer_than_an_s3_key_is_named_and_the_rest_kept(
    job: JobFolder, ready_bucket: str, minio: Minio, start_sidecar: Callable[..., Sidecar]
) -> None:
    deep = "/".join(f"level{n}-" + "x" * 200 for n in range(5)) + "/table.parquet"
    job.write(deep, b"too deep for S3")
    expected = {"short.txt": job.write("short.txt", b"kept")}
    manifest, _ = run_job_to_the_archive(job, ready_bucket, minio, start_sidecar, expected)
    assert len(output_key(job.job_id, deep).encode()) > 1024
    assert manifest["skipped"] == [
        {"path": deep, "reason": "its object key would be longer than the store's 1024 bytes"}
    ]


def test_an_output_folder_the_uploader_may_not_list_is_named(
    job: JobFolder, ready_bucket: str, minio: Minio, start_sidecar: Callable[..., Sidecar]
) -> None:
    job.write("hidden.txt", b"in a folder the job made unlistable")
    job.out.chmod(0o300)
    manifest, _ = run_job_to_the_archive(
        job, ready_bucket, minio, start_sidecar, {}, wrapper=without_root_file_access()
    )
    assert manifest["skipped"] == [
        {"path": "./", "reason": "the job left this folder unreadable to the uploader's user"}
    ]


def test_a_folder_the_uploader_may_not_list_is_named_and_the_rest_kept(
    job: JobFolder, ready_bucket: str, minio: Minio, start_sidecar: Callable[..., Sidecar]
) -> None:
    expected = {"kept.txt": job.write("kept.txt", b"kept")}
    job.write("private/inner/data.txt", b"in a folder made with umask 077 by another user")
    (job.out / "private").chmod(0o300)  # write and search, but not list
    manifest, _ = run_job_to_the_archive(
        job, ready_bucket, minio, start_sidecar, expected, wrapper=without_root_file_access()
    )
    assert manifest["skipped"] == [
        {"path": "private/", "reason": "the job left this folder unreadable to the uploader's user"}
    ]


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


def test_a_path_longer_than_the_file_system_takes_whole_is_named_and_the_rest_kept(
    job: JobFolder, tmp_path: Path
) -> None:
    job.write("keep.txt", b"keep")
    deep = deep_file(job.out, 18, b"deep")  # 4,518 bytes below the output folder
    assert [item.relative_path for item in scan_outputs(job.out)] == ["keep.txt", deep]
    store = FilesystemStore(tmp_path / "store")  # no key limit of its own: the copy fails
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None)
    manifest = uploader.finish()
    assert kept(store, job.job_id, manifest) == {"keep.txt": b"keep"}
    assert manifest["skipped"] == [{"path": deep, "reason": "its path is too long for the store"}]


def test_a_link_swapped_in_after_the_scan_is_not_followed(
    job: JobFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The uploader's own secrets, as /proc/self/environ would show them to it.
    secrets = tmp_path / "proc-self"
    secrets.mkdir()
    (secrets / "environ").write_bytes(b"AWS_SECRET_ACCESS_KEY=s3cr3t")
    job.write("d/environ", b"the job's file")
    job.write("plain.txt", b"plain")
    scan = sidecar_module.scan_outputs

    def scan_then_swap(*args: Any) -> Iterator[Any]:
        yield from scan(*args)
        # Between the scan and the upload: the folder, then a file, become links.
        (job.out / "d").rename(job.out / "d-old")
        (job.out / "d").symlink_to(secrets, target_is_directory=True)
        (job.out / "plain.txt").unlink()
        (job.out / "plain.txt").symlink_to(secrets / "environ")

    monkeypatch.setattr(sidecar_module, "scan_outputs", scan_then_swap)
    store = FilesystemStore(tmp_path / "store")
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None)
    uploader.upload_changed()
    stored = b"".join(store.get_bytes(info.key) or b"" for info in store.list_objects("jobs/"))
    assert b"s3cr3t" not in stored
    monkeypatch.setattr(sidecar_module, "scan_outputs", scan)
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
    opened = sidecar_module.open_beneath

    def forbidden(root: str, source: str) -> int:
        if source == "a.txt":  # what chmod 0 does to a reader without root's override
            raise PermissionError(errno.EACCES, "Permission denied", source)
        return opened(root, source)

    monkeypatch.setattr(sidecar_module, "open_beneath", forbidden)
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


class RefusingStore(FilesystemStore):
    """A store whose own side answers PermissionError (say, its folder turned read-only)."""

    def put_file(self, key: str, path: str, content_type: str) -> str:
        raise PermissionError(13, "Permission denied", key)


def test_a_store_that_refuses_a_file_is_not_taken_for_an_unreadable_file(
    job: JobFolder, tmp_path: Path
) -> None:
    job.write("a.txt", b"a")
    store = RefusingStore(tmp_path / "store")
    uploader = Uploader(store, job.job_id, job.out, sleep=lambda _s: None)
    with pytest.raises(PermissionError):
        uploader.finish()
    assert store.get_bytes(manifest_key(job.job_id)) is None


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


def write_raw(folder: Path, name: bytes, data: bytes) -> None:
    """A file whose name is raw bytes (not UTF-8), as a pipeline writing Latin-1 names makes."""
    with open(os.path.join(os.fsencode(folder), name), "wb") as out:
        out.write(data)


def kept(store: FilesystemStore, job_id: str, manifest: dict[str, Any]) -> dict[str, bytes]:
    """Each result name in the manifest with the bytes the store holds under its key."""
    return {item["path"]: store.get_bytes(item["key"]) or b"" for item in manifest["files"]}


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
    with caplog.at_level(logging.WARNING, logger="ocps_jobs.sidecar"):
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


def test_a_failed_command_is_archived_as_error_with_the_stderr_tail(
    job: JobFolder, ready_bucket: str, minio: Minio, start_sidecar: Callable[..., Sidecar]
) -> None:
    expected = {"partial.txt": job.write("partial.txt", b"half done\n")}
    (job.work / "stderr").write_text("".join(f"stderr line {n:02d}\n" for n in range(1, 31)))
    job.exit(3)

    sidecar = start_sidecar(job, ready_bucket)
    wait_for_archive(minio, ready_bucket, sidecar, job, 30, expected)
    assert sidecar.terminate()[0] == 0

    manifest = assert_uploaded_intact(minio, ready_bucket, job, expected)
    assert manifest["exitCode"] == 3
    record = archived_record(minio, ready_bucket, job.job_id)
    assert record.phase is Phase.ERROR
    assert record.error_message.startswith("Command exited with code 3: stderr line 11\n")
    assert record.error_message.endswith("stderr line 30")
    assert "stderr line 10" not in record.error_message


# --- 2. an S3 outage in the middle ---------------------------------------------------------------


def test_an_s3_outage_mid_upload_is_retried_and_nothing_is_lost(
    job: JobFolder,
    ready_bucket: str,
    minio: Minio,
    proxy: TcpProxy,
    start_sidecar: Callable[..., Sidecar],
) -> None:
    expected = many_files(job, 240, 40_000)
    expected.update(
        {f"large/{n}.fits": job.write(f"large/{n}.fits", os.urandom(MB)) for n in range(4)}
    )
    total = sum(len(data) for data in expected.values())
    job.exit(0)
    down = proxy.cut_after(total // 3)

    sidecar = start_sidecar(job, ready_bucket, endpoint=proxy.url)
    assert down.wait(30), f"the upload never got a third of the way:\n{sidecar.log}"
    # During the outage (S3 read directly, not through the proxy): partial, no manifest.
    during = output_objects(minio, ready_bucket, job.job_id)
    assert 0 < len(during) < len(expected)
    time.sleep(3)
    assert sidecar.running(), sidecar.log
    assert not exists(minio, ready_bucket, manifest_key(job.job_id))
    assert len(output_objects(minio, ready_bucket, job.job_id)) < len(expected)

    proxy.restore()
    wait_for_archive(minio, ready_bucket, sidecar, job, 60, expected)
    assert sidecar.terminate()[0] == 0

    assert_uploaded_intact(minio, ready_bucket, job, expected)
    assert_written_last(minio, ready_bucket, job)
    assert archived_record(minio, ready_bucket, job.job_id).phase is Phase.COMPLETED
    assert "failed (attempt 1 of 6)" in sidecar.log
    assert proxy.cuts == 1


def test_an_outage_longer_than_the_retry_budget_while_the_job_runs_is_survived(
    job: JobFolder,
    ready_bucket: str,
    minio: Minio,
    proxy: TcpProxy,
    start_sidecar: Callable[..., Sidecar],
) -> None:
    """Periodic passes that exhaust their retries are just tried again at the next interval."""
    expected = many_files(job, 30, 10_000)
    proxy.cut()
    sidecar = start_sidecar(
        job,
        ready_bucket,
        endpoint=proxy.url,
        OCPS_UPLOAD_INTERVAL="0.2",
        OCPS_UPLOAD_ATTEMPTS="2",
        OCPS_UPLOAD_BACKOFF="0.05",
    )
    wait_until(lambda: sidecar.log.count("periodic upload failed, will retry") >= 2, timeout=30)
    assert sidecar.running(), sidecar.log
    assert output_objects(minio, ready_bucket, job.job_id) == {}

    proxy.restore()
    wait_until(lambda: len(output_objects(minio, ready_bucket, job.job_id)) == 30, timeout=30)
    expected["late.txt"] = job.write("late.txt", b"written after the outage\n")
    job.exit(0)
    wait_for_archive(minio, ready_bucket, sidecar, job, 30, expected)
    assert sidecar.terminate()[0] == 0
    assert_uploaded_intact(minio, ready_bucket, job, expected)


def test_an_outage_through_the_final_pass_fails_without_a_manifest(
    job: JobFolder,
    ready_bucket: str,
    minio: Minio,
    proxy: TcpProxy,
    start_sidecar: Callable[..., Sidecar],
) -> None:
    """Nothing is reported complete that is not uploaded: no manifest, no record, exit != 0."""
    many_files(job, 5, 1000)
    job.exit(0)
    proxy.cut()
    sidecar = start_sidecar(
        job, ready_bucket, endpoint=proxy.url, OCPS_UPLOAD_ATTEMPTS="2", OCPS_UPLOAD_BACKOFF="0.05"
    )
    try:
        code = sidecar.process.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the sidecar kept going with S3 down:\n{sidecar.log}")
    assert code != 0
    assert "failed (attempt 1 of 2)" in sidecar.log
    assert not exists(minio, ready_bucket, manifest_key(job.job_id))
    assert not exists(minio, ready_bucket, archive_key(job.job_id))


# --- 3. SIGTERM, and uploads while the job runs --------------------------------------------------


def test_sigterm_mid_upload_finishes_the_upload_within_the_grace_period(
    job: JobFolder,
    ready_bucket: str,
    minio: Minio,
    s3_endpoint: str,
    start_sidecar: Callable[..., Sidecar],
) -> None:
    expected = many_files(job, 300, 20_000)
    expected.update(
        {f"big/{n}.fits": job.write(f"big/{n}.fits", os.urandom(4 * MB)) for n in range(8)}
    )
    address = urlparse(s3_endpoint)
    # Throttled (2 MB/s per connection) so that the first periodic pass takes a few seconds.
    with TcpProxy((address.hostname or "", address.port or 80), upstream_rate=2 * MB) as slow:
        # No exit-code file: the job is still running when the pod is told to stop.
        sidecar = start_sidecar(job, ready_bucket, endpoint=slow.url)
        wait_until(lambda: len(output_objects(minio, ready_bucket, job.job_id)) >= 20, timeout=30)
        at_sigterm = len(output_objects(minio, ready_bucket, job.job_id))
        code, seconds = sidecar.terminate(within=GRACE_SECONDS)
    assert code == 0, sidecar.log
    assert at_sigterm < len(expected), "SIGTERM came after the upload had finished"
    assert seconds < GRACE_SECONDS

    manifest = assert_uploaded_intact(minio, ready_bucket, job, expected)
    assert manifest["exitCode"] is None
    record = archived_record(minio, ready_bucket, job.job_id)
    assert record.phase is Phase.ABORTED
    assert record.error_message == "The job was stopped before its command finished."
    assert record.results is not None and len(record.results) == len(expected)


def test_periodic_uploads_while_the_job_runs_then_the_final_pass_picks_up_changes(
    job: JobFolder, ready_bucket: str, minio: Minio, start_sidecar: Callable[..., Sidecar]
) -> None:
    expected = {
        "progress.log": job.write("progress.log", b"step 1\n"),
        "data/table.bin": job.write("data/table.bin", b"A" * 5000),
        "data/unchanged.json": job.write("data/unchanged.json", b'{"v": 1}'),
    }
    job.log_file.write_text("started\n")
    sidecar = start_sidecar(job, ready_bucket, OCPS_UPLOAD_INTERVAL="0.2")

    def uploaded_as_written() -> bool:
        listed = output_objects(minio, ready_bucket, job.job_id)
        return sorted(listed) == sorted(expected) and all(
            read_object(minio, ready_bucket, output_key(job.job_id, r)) == d
            for r, d in expected.items()
        )

    wait_until(uploaded_as_written, timeout=30, interval=0.1)
    assert not exists(minio, ready_bucket, manifest_key(job.job_id)), "no manifest while running"
    assert LOG_RESULT_NAME not in output_objects(minio, ready_bucket, job.job_id)

    # The job goes on: a file grows, one is rewritten in place at the same size, one is new.
    with (job.out / "progress.log").open("ab") as progress:
        progress.write(b"step 2\n")
    expected["progress.log"] = (job.out / "progress.log").read_bytes()
    table = job.out / "data" / "table.bin"
    expected["data/table.bin"] = job.write("data/table.bin", b"B" * 5000)
    stat = table.stat()
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    expected["data/late.txt"] = job.write("data/late.txt", b"written just before the end\n")
    with job.log_file.open("a") as log:
        log.write("finished\n")
    expected[LOG_RESULT_NAME] = job.log_file.read_bytes()
    job.exit(0)

    wait_for_archive(minio, ready_bucket, sidecar, job, 30, expected)
    code, seconds = sidecar.terminate(within=10)
    assert code == 0 and seconds < 5, sidecar.log
    manifest = assert_uploaded_intact(minio, ready_bucket, job, expected)
    assert manifest["exitCode"] == 0
    assert archived_record(minio, ready_bucket, job.job_id).phase is Phase.COMPLETED


def catches_sigterm(pid: int) -> bool:
    """True once the process has a SIGTERM handler (Linux: the SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_sigterm_at_any_moment_ends_the_sidecar(tmp_path: Path) -> None:
    """SIGTERM lands wherever the main loop is (here: spinning on a zero interval).

    Regression: the handler used to set the stop event in the main thread, which deadlocks
    when the signal arrives while the main thread holds the event's lock in ``stop.wait``
    (about one SIGTERM in fifteen in this loop). Probabilistic: can miss, never false-fail.
    """
    processes = []
    try:
        for n in range(12):
            work = tmp_path / f"job-{n}"
            work.mkdir()
            env = {
                **os.environ,
                "JOB_ID": uuid.uuid4().hex,
                "JOB_OUTPUT_DIR": str(work / "out"),  # never created: the loop stays cheap
                "OCPS_STORE_DIR": str(work / "store"),
                "OCPS_UPLOAD_INTERVAL": "0",
            }
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ocps_jobs.sidecar"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        stores = [tmp_path / f"job-{n}" / "store" for n in range(12)]
        # Past start-up (until the handler is installed, SIGTERM's default action applies).
        wait_until(lambda: all(catches_sigterm(p.pid) for p in processes), timeout=60)
        time.sleep(0.3)
        rng = random.Random()  # noqa: S311 - signal timing jitter
        for process in processes:
            time.sleep(rng.uniform(0, 0.05))
            process.send_signal(signal.SIGTERM)
        hung, deadline = 0, time.monotonic() + 10
        for process in processes:
            try:
                assert process.wait(max(0.1, deadline - time.monotonic())) == 0
            except subprocess.TimeoutExpired:
                hung += 1
        assert hung == 0, f"{hung} of {len(processes)} sidecars ignored SIGTERM"
        assert all(any(store.rglob("manifest.json")) for store in stores)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)


# --- 4. the Uploader with the real filesystem store ----------------------------------------------


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


@pytest.fixture
def store(tmp_path: Path) -> FlakyStore:
    return FlakyStore(tmp_path / "store")


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


@pytest.mark.parametrize(
    ("exit_code", "tail", "phase", "message"),
    [
        (0, "ignored", "completed", ""),
        (2, "", "error", "Command exited with code 2"),
        (1, "  boom\n", "error", "Command exited with code 1: boom"),
        (None, "", "aborted", "The job was stopped before its command finished."),
    ],
)
def test_final_record(exit_code: int | None, tail: str, phase: str, message: str) -> None:
    manifest = {"files": [{"key": "jobs/x/out/a", "size": 1, "contentType": "text/plain"}]}
    record = final_record({"job_id": "x", "phase": "executing"}, manifest, exit_code, tail)
    assert (record["phase"], record["error_message"]) == (phase, message)
    assert record["results"] == [{"key": "jobs/x/out/a", "size": 1, "content_type": "text/plain"}]


def test_final_record_of_a_failed_clone_is_error_with_gits_message_and_a_start() -> None:
    manifest: dict[str, Any] = {"files": []}
    started = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    record = final_record(
        {"job_id": "x", "phase": "queued", "start_time": None},
        manifest,
        None,  # the command never ran: no exit code
        "",
        failure="git clone failed: fatal: repository 'x' not found\n",
        started=started,
    )
    assert (record["phase"], record["error_message"]) == (
        "error",
        "git clone failed: fatal: repository 'x' not found",
    )
    assert record["start_time"] == "2026-11-28T10:00:00+00:00"


def run_clone_script(tmp_path: Path, url: str, ref: str) -> tuple[int, Path, Path]:
    """GIT_CLONE_SCRIPT as the init container runs it (its termination log in tmp_path)."""
    work = tmp_path / "job"
    work.mkdir()
    termination_log = tmp_path / "termination-log"  # /dev/termination-log in the pod
    script = GIT_CLONE_SCRIPT.replace("/dev/termination-log", str(termination_log))
    environment = {
        **os.environ,
        "SRC_GIT_URL": url,
        "JOB_SOURCE_DIR": str(work / "src"),
        "GIT_COMMIT_REF": ref,
        "GIT_TERMINAL_PROMPT": "0",
    }
    done = subprocess.run(
        ["/bin/bash", "-c", script], env=environment, capture_output=True, timeout=60, check=False
    )
    return done.returncode, work, termination_log


@pytest.mark.parametrize(
    ("exists", "ref", "said"),
    [(False, "", "does not exist"), (True, "nope", "invalid reference: nope")],
)
def test_the_clone_script_leaves_gits_message_for_the_uploader(
    tmp_path: Path, exists: bool, ref: str, said: str
) -> None:
    url = str(make_pipeline_repo(tmp_path) if exists else tmp_path / "missing")
    code, work, termination_log = run_clone_script(tmp_path, url, ref)
    assert code == 1
    failure = (work / "failure").read_text()
    assert failure == "git clone failed: " + termination_log.read_text()
    assert said in failure


def test_the_clone_script_leaves_no_failure_when_it_succeeds(tmp_path: Path) -> None:
    code, work, _ = run_clone_script(tmp_path, str(make_pipeline_repo(tmp_path)), "release")
    assert code == 0
    assert (work / "src" / "VERSION").read_text() == "2\n"
    assert not (work / "failure").exists()


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
    with caplog.at_level(logging.WARNING, logger="ocps_jobs.sidecar"):
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
