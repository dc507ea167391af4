"""The archived record (job.json), and the clone script's message it takes up."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ocps_jobs.backends.kubernetes.spec import GIT_CLONE_SCRIPT
from ocps_jobs.uploader.contract import COMMIT_FILE_NAME
from ocps_jobs.uploader.manifest import ManifestFile, build_manifest
from ocps_jobs.uploader.record import final_record
from tests.helpers import git, make_pipeline_repo


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
    files = [ManifestFile("a", "jobs/x/out/a", 1, "-", "text/plain")]
    manifest = build_manifest("x", files, exitCode=exit_code)
    record = final_record({"job_id": "x", "phase": "executing"}, manifest, exit_code, tail)
    assert (record["phase"], record["error_message"]) == (phase, message)
    assert record["results"] == [
        {"key": "jobs/x/out/a", "size": 1, "content_type": "text/plain", "sha256": "-"}
    ]


def test_final_record_of_a_failed_clone_is_error_with_gits_message_and_a_start() -> None:
    manifest = build_manifest("x", [])
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


def test_the_clone_script_tells_the_commit_it_checked_out(tmp_path: Path) -> None:
    repo = make_pipeline_repo(tmp_path)
    code, work, termination_log = run_clone_script(tmp_path, str(repo), "release")
    assert code == 0
    sha = git(repo, "rev-parse", "release")
    # For the uploader's record, and as the termination message for the live one.
    assert (work / COMMIT_FILE_NAME).read_text().strip() == sha
    assert termination_log.read_text().strip() == sha
    assert git(repo, "rev-parse", "main") != sha


def test_the_archived_record_keeps_the_commit_and_the_checksums() -> None:
    manifest = {
        "version": 1,
        "files": [
            {
                "path": "a.txt",
                "key": "jobs/x/out/a.txt",
                "size": 2,
                "sha256": "ab" * 32,
                "contentType": "text/plain",
            }
        ],
    }
    record = final_record({"job_id": "x"}, manifest, 0, "", commit_sha="c" * 40 + "\n")
    assert record["commit_sha"] == "c" * 40
    assert record["results"][0]["sha256"] == "ab" * 32
