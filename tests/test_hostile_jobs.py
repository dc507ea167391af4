"""Jobs written as an attacker would: deep trees, failures at every step, huge stderr lines."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from ocps_jobs.backends import local
from ocps_jobs.backends.local import LocalBackend
from ocps_jobs.backends.stderr_tail import ERROR_MESSAGE_MAX_BYTES
from ocps_jobs.composition import build_service, close_services
from ocps_jobs.config import Settings
from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import Caller, JobRecord, JobRequest, Phase
from ocps_jobs.objectstore.filesystem import FilesystemStore
from ocps_jobs.objectstore.trees import make_dirs, remove_tree, walk_files
from ocps_jobs.service import JobService
from ocps_jobs.uploader.upload import Uploader
from tests.test_local_backend import finish, submit

DEPTH = 1500
# The loop (``mkdir a; cd a`` 1500 times) makes the same tree with 1500 processes.
DEEP_TREE = (
    f'deep="$JOB_OUTPUT_DIR/$(printf "a/%.0s" $(seq 1 {DEPTH}))"; mkdir -p "$deep"; '
    'echo x > "$deep/f.txt"'
)


def deep_path(root: Path, depth: int = DEPTH) -> Path:
    return root.joinpath(*["a"] * depth)


def test_trees_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    leaf = deep_path(tmp_path / "tree")
    make_dirs(leaf)
    (leaf / "f.txt").write_text("x")
    (leaf.parent / "g.txt").write_text("y")
    assert sorted(path.name for path in walk_files(tmp_path / "tree")) == ["f.txt", "g.txt"]
    remove_tree(tmp_path / "tree")
    assert not (tmp_path / "tree").exists()
    remove_tree(tmp_path / "tree")  # gone already: nothing to do


def test_remove_tree_removes_a_link_not_its_target(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "kept.txt").write_text("kept")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "link").symlink_to(tmp_path / "target")
    remove_tree(tmp_path / "tree")
    assert (tmp_path / "target" / "kept.txt").read_text() == "kept"


def test_deep_output_trees_neither_kill_workers_nor_block_delete(tmp_path: Path) -> None:
    # An operator may allow trees this deep (OCPS_MAX_OUTPUT_DEPTH); they are uploaded whole.
    settings = Settings.from_env(
        data_dir=tmp_path / "data", max_concurrent_jobs=2, max_output_depth=DEPTH
    )
    client = create_embedded_app(build_service(settings)).test_client()
    # Two workers: two deep jobs used to kill both, and every later job stayed queued.
    deep_jobs = [submit(client, command=DEEP_TREE) for _ in range(2)]
    for job_id in deep_jobs:
        job = finish(client, job_id, timeout=120)
        assert job["phase"] == "completed", job["errorSummary"]
        assert any(item["uri"].endswith("/a/f.txt") for item in job["results"])
    normal = submit(client, command="echo ok > $JOB_OUTPUT_DIR/ok.txt")
    assert finish(client, normal)["phase"] == "completed"
    for job_id in deep_jobs:
        assert client.delete(f"/api/v1/job/{job_id}").status_code in (200, 204)
        assert client.get(f"/api/v1/job/{job_id}").status_code == 404
    objects = settings.data_dir / "objects"
    assert not [path for path in walk_files(objects) if any(j in str(path) for j in deep_jobs)]
    assert not any((settings.data_dir / "work" / job_id).exists() for job_id in deep_jobs)


def test_recovery_survives_a_deep_tree_left_by_a_crash(
    settings: Settings, service: JobService
) -> None:
    record = service.create_job(JobRequest(command="true"), Caller(), start=False)
    close_services()
    state = settings.data_dir / "state" / "jobs" / f"{record.job_id}.json"
    stored = JobRecord.model_validate_json(state.read_text())
    stored.phase = Phase.EXECUTING
    state.write_text(stored.model_dump_json())
    work = settings.data_dir / "work" / record.job_id
    make_dirs(deep_path(work / "out"))

    restarted = build_service(settings)
    recovered = restarted.get_job(record.job_id, Caller())
    assert recovered.phase is Phase.ERROR
    assert "restarted" in (recovered.error_message or "")
    assert not work.exists()


def _raise(error: BaseException) -> Callable[..., Any]:
    def fail(*_args: object, **_kwargs: object) -> Any:
        raise error

    return fail


# Each step of a job, at the project's own boundaries, and how it may fail.
STEPS: dict[str, tuple[Any, str, BaseException]] = {
    "record save": (LocalBackend, "_save", OSError(errno.ENOSPC, "No space left on device")),
    "process start": (LocalBackend, "_spawn", OSError(errno.EAGAIN, "fork failed")),
    "upload": (Uploader, "finish", RecursionError("maximum recursion depth exceeded")),
    "store write": (FilesystemStore, "put_file", OSError(errno.EIO, "I/O error")),
    "archive": (FilesystemStore, "put_bytes", OSError(errno.ENOSPC, "No space left")),
    "cleanup": (local, "remove_tree", RecursionError("maximum recursion depth exceeded")),
    "stderr": (local, "collect_stderr", MemoryError()),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_worker_survives_any_step_raising(
    step: str, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    owner, name, error = STEPS[step]
    service = build_service(settings)
    client = create_embedded_app(service).test_client()
    armed = threading.Event()
    armed.set()
    original = getattr(owner, name)

    def maybe_fail(*args: object, **kwargs: object) -> Any:
        if armed.is_set() and threading.current_thread().name.startswith("ocps-job-worker"):
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, maybe_fail)
    # As many failing jobs as there are workers: each worker meets the error once.
    failing = [
        service.create_job(JobRequest(command="echo hi >&2"), Caller()).job_id
        for _ in range(settings.max_concurrent_jobs)
    ]
    for job_id in failing:
        job = finish(client, job_id)
        assert job["phase"] in ("error", "completed"), job
    armed.clear()
    normal = submit(client, command="echo ok > $JOB_OUTPUT_DIR/ok.txt")
    job = finish(client, normal)
    assert job["phase"] == "completed", job["errorSummary"]
    assert any(item["uri"].endswith("/ok.txt") for item in job["results"])


def _rss_bytes() -> int:
    """This process's resident set size now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


STDERR_LINE_MB = 200


def test_one_huge_stderr_line_leaves_a_small_record_and_bounded_memory(
    settings: Settings, client: FlaskClient
) -> None:
    before = _rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        job_id = submit(
            client,
            command=(
                f'head -c {STDERR_LINE_MB}M /dev/zero | tr "\\0" x >&2; echo "the end" >&2; exit 1'
            ),
        )
        job = finish(client, job_id, timeout=120)
    finally:
        done.set()
        sampler.join()
    assert job["phase"] == "error"
    message = job["errorSummary"]["message"]
    assert len(message.encode()) <= ERROR_MESSAGE_MAX_BYTES
    assert message.startswith("Command exited with code 1: xxx")
    assert message.endswith("the end")
    record_file = settings.data_dir / "state" / "jobs" / f"{job_id}.json"
    assert record_file.stat().st_size < 64 * 1024
    assert len(client.get(f"/api/v1/job/{job_id}").data) < 64 * 1024
    # The whole line is in the log result, and was never in memory at once.
    listing = client.get(f"/api/v1/job/{job_id}/results").get_json()
    log_result = next(item for item in listing if item["uri"].endswith("ocps-job.log"))
    assert log_result["size"] > STDERR_LINE_MB * 1024 * 1024
    assert peak[0] - before < 64 * 1024 * 1024, (before, peak[0])


def test_a_deletion_cut_short_is_finished_at_the_next_start(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = build_service(settings)
    client = create_embedded_app(service).test_client()
    job_id = submit(client, command="for i in 1 2 3; do echo $i > $JOB_OUTPUT_DIR/$i; done")
    assert finish(client, job_id)["phase"] == "completed"
    objects = settings.data_dir / "objects"
    original = FilesystemStore.delete_prefix

    def crash_half_way(store: FilesystemStore, prefix: str) -> None:
        # Some objects (the manifest first) go, then the process dies.
        next(path for path in walk_files(objects) if path.name == "manifest.json").unlink()
        raise SystemExit("killed during DELETE")

    monkeypatch.setattr(FilesystemStore, "delete_prefix", crash_half_way)
    with pytest.raises(SystemExit):
        service.delete_job(job_id, Caller())
    monkeypatch.setattr(FilesystemStore, "delete_prefix", original)
    close_services()

    restarted = create_embedded_app(build_service(settings)).test_client()
    assert restarted.get(f"/api/v1/job/{job_id}").status_code == 404
    assert restarted.get("/api/v1/job").get_json() == []
    assert not [path for path in walk_files(objects) if job_id in str(path)]
    assert not list((settings.data_dir / "state" / "jobs").glob(f"{job_id}*"))


def test_the_cli_prints_rich_markup_in_job_values_as_text() -> None:
    from rich.console import Console

    from ocps_jobs.cli import _jobs_table

    hostile = "[/oops] [link=https://evil.example]click[/link] [conceal]hidden[/conceal]\x1b[2J"
    job = {
        "jobId": "a" * 32,
        "runId": hostile,
        "phase": "error",
        "creationTime": None,
        "endTime": None,
        "errorSummary": {"message": hostile},
    }
    console = Console(record=True, width=400)
    console.print(_jobs_table([job]))  # a MarkupError before
    text = console.export_text()
    assert "[/oops]" in text and "[link=https://evil.example]" in text
    assert "\x1b" not in text


@pytest.mark.parametrize("command_succeeded", [True, False], ids=["uploading", "running"])
def test_a_job_interrupted_by_a_crash_keeps_its_outputs(
    settings: Settings, service: JobService, command_succeeded: bool
) -> None:
    record = service.create_job(JobRequest(command="true"), Caller(), start=False)
    close_services()
    state = settings.data_dir / "state" / "jobs"
    stored = JobRecord.model_validate_json((state / f"{record.job_id}.json").read_text())
    stored.phase = Phase.EXECUTING
    (state / f"{record.job_id}.json").write_text(stored.model_dump_json())
    output = settings.data_dir / "work" / record.job_id / "out"
    make_dirs(output / "sub")
    (output / "sub" / "partial.txt").write_text("written before the crash\n")
    if command_succeeded:  # as the worker marks it once the command ended 0
        (state / f"{record.job_id}{local.UPLOADING_SUFFIX}").touch()

    restarted = build_service(settings)
    recovered = restarted.get_job(record.job_id, Caller())
    assert recovered.phase is (Phase.COMPLETED if command_succeeded else Phase.ERROR)
    names = [result.key.rsplit("/out/", 1)[-1] for result in restarted.results_of(recovered)]
    assert "sub/partial.txt" in names, names
    assert not (settings.data_dir / "work" / record.job_id).exists()
    assert not list(state.glob(f"{record.job_id}{local.UPLOADING_SUFFIX}"))
