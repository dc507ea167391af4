"""The ``ocps-jobs`` CLI for triage, run as a user runs it against ``ocps-jobs serve``."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ocps_jobs.resultids import decode_result_id
from tests.chaos import CLI, ServeProcess
from tests.helpers import git, make_pipeline_repo, wait_until

pytestmark = pytest.mark.slow

# Follows end after this long (the service's WAIT cap): the CLI has to reconnect.
FOLLOW_CAP_SECONDS = "1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    running = ServeProcess(
        tmp_path / "data", "--max-concurrent-jobs", "2", env={"OCPS_WAIT_MAX_SECONDS": "1"}
    ).start()
    yield running
    running.stop()


def run_cli(server: ServeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(CLI), *args, "--url", server.url], capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def phase_of(server: ServeProcess, job_id: str) -> str:
    answer = requests.get(f"{server.url}/api/v1/job/{job_id}/phase", timeout=10)
    phase: str = answer.json()
    return phase


def test_version() -> None:
    done = subprocess.run([str(CLI), "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.startswith("ocps-jobs ") and done.stdout.split()[1][0].isdigit()


def test_submit_wait_tells_the_job_id_at_once_and_each_phase_change(
    server: ServeProcess,
) -> None:
    with subprocess.Popen(
        [str(CLI), "submit", "sleep 3", "--wait", "--json", "--url", server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None and process.stdout is not None
        first = process.stderr.readline()
        assert first.startswith("submitted job ")
        job_id = first.split()[-1]
        # The id came while the job still runs, not at its end.
        assert phase_of(server, job_id) in {"queued", "executing"}
        rest = process.stderr.read()
        final = json.loads(process.stdout.read())
        assert process.wait(timeout=30) == 0
    phases = [line.split()[-1] for line in rest.splitlines()]
    assert phases[-1] == "completed" and "executing" in phases
    assert final["jobId"] == job_id and final["phase"] == "completed"


def test_status_shows_the_whole_error_times_duration_and_results(server: ServeProcess) -> None:
    reason = "the calibration frames for detector 42 were not found in the butler " * 3
    submitted = run_cli(
        server,
        "submit",
        f'echo partial > "$JOB_OUTPUT_DIR/part.txt"; echo "{reason}" >&2; exit 3',
        "--replicas",
        "1",
        "--wait",
        "--json",
    )
    assert submitted.returncode == 1
    job_id = json.loads(submitted.stdout)["jobId"]
    status = run_cli(server, "status", job_id)
    assert status.returncode == 0, status.stderr
    text = status.stdout
    assert reason.strip() in " ".join(text.split())  # the whole message, not 60 characters
    for label in ("created", "started", "ended", "duration", "results (2):"):
        assert label in text
    assert "part.txt" in text and "ocps-job.log" in text
    assert " s)" in text.split("duration", 1)[1].splitlines()[0]


def test_logs_follow_shows_lines_as_they_come_across_reconnections(server: ServeProcess) -> None:
    # Longer than the follow cap several times over: the CLI reconnects where it left off.
    command = "for i in $(seq 1 8); do echo line $i; sleep 0.5; done; printf 'no newline'"
    job_id = json.loads(run_cli(server, "submit", command, "--json").stdout)["jobId"]
    with subprocess.Popen(
        [str(CLI), "logs", "-f", job_id, "--url", server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as follower:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "line 1\n"
        assert phase_of(server, job_id) == "executing"  # shown while the job runs
        rest = follower.stdout.read()
        assert follower.wait(timeout=30) == 0  # ended by itself when the job did
    assert ["line 1", *rest.splitlines()] == [f"line {i}" for i in range(1, 9)] + ["no newline"]
    assert phase_of(server, job_id) == "completed"
    # After the job: the uploaded log, whole or its tail.
    assert run_cli(server, "logs", job_id).stdout.splitlines()[0] == "line 1"
    assert run_cli(server, "logs", job_id, "--tail", "2").stdout == "line 8\nno newline\n"
    assert run_cli(server, "logs", "0" * 32).returncode == 3


def test_log_endpoint_tail_and_skip(server: ServeProcess) -> None:
    job_id = json.loads(run_cli(server, "submit", "seq 1 5", "--wait", "--json").stdout)["jobId"]
    base = f"{server.url}/api/v1/job/{job_id}/log"
    whole = requests.get(base, timeout=10)
    assert whole.status_code == 200 and whole.headers["Content-Type"].startswith("text/plain")
    assert whole.text == "1\n2\n3\n4\n5\n"
    tail = requests.get(base, params={"tail": "2"}, timeout=10)
    assert tail.text == "4\n5\n" and tail.headers["X-OCPS-Log-Skipped"] == "3"
    assert requests.get(base, params={"skip": "4"}, timeout=10).text == "5\n"
    for bad in ({"tail": "-1"}, {"follow": "maybe"}, {"skip": "a"}):
        assert requests.get(base, params=bad, timeout=10).status_code == 400


def test_download_resumes_a_partial_file_and_verifies_its_sha256(
    server: ServeProcess, tmp_path: Path
) -> None:
    content = bytes(range(256)) * 4096  # 1 MiB
    source = tmp_path / "payload.bin"
    source.write_bytes(content)
    job = json.loads(
        run_cli(
            server, "submit", f'cp {source} "$JOB_OUTPUT_DIR/payload.bin"', "--wait", "--json"
        ).stdout
    )
    job_id = job["jobId"]
    listing = json.loads(run_cli(server, "results", job_id, "--json").stdout)
    payload = next(item for item in listing if item["uri"].endswith("/payload.bin"))
    assert payload["sha256"] == hashlib.sha256(content).hexdigest()
    relative = decode_result_id(payload["id"]).relative_path

    # A part file with the right first half: the download asks for the rest only.
    target = tmp_path / "resumed"
    part = target / f"{relative}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(content[: len(content) // 2])
    done = run_cli(server, "download", payload["id"], "--output", str(target))
    assert done.returncode == 0, done.stderr
    assert (target / relative).read_bytes() == content and not part.exists()

    # A part file with wrong bytes: resumed too, and then the checksum says no.
    spoiled = tmp_path / "spoiled"
    bad_part = spoiled / job_id / f"{relative}.part"
    bad_part.parent.mkdir(parents=True)
    bad_part.write_bytes(b"\0" * 1000)
    refused = run_cli(server, "download", job_id, "--output", str(spoiled))
    assert refused.returncode == 3 and "SHA-256" in refused.stderr
    assert refused.stderr.count("\n") == 1
    kept = spoiled / job_id / f"{relative}.mismatch"
    assert kept.read_bytes() == b"\0" * 1000 + content[1000:]
    assert not (spoiled / job_id / relative).exists()


def test_a_follow_of_a_queued_job_waits_for_its_first_lines(server: ServeProcess) -> None:
    blockers = [
        json.loads(run_cli(server, "submit", "sleep 5", "--json").stdout)["jobId"] for _ in range(2)
    ]
    queued = json.loads(run_cli(server, "submit", "echo finally", "--json").stdout)["jobId"]
    assert phase_of(server, queued) == "queued"
    started = time.monotonic()
    follow = run_cli(server, "logs", "--follow", queued)
    assert follow.returncode == 0 and follow.stdout == "finally\n"
    assert time.monotonic() - started > float(FOLLOW_CAP_SECONDS)  # it reconnected meanwhile
    wait_until(lambda: all(phase_of(server, job) == "completed" for job in blockers))


def test_what_exactly_ran_is_in_both_interfaces_and_the_archived_record(
    server: ServeProcess, tmp_path: Path
) -> None:
    repo = make_pipeline_repo(tmp_path)
    sha = git(repo, "rev-parse", "release")
    submitted = run_cli(
        server,
        "submit",
        "cat $JOB_SOURCE_DIR/VERSION",
        "--git-url",
        str(repo),
        "--commit-ref",
        "release",
        "--wait",
        "--json",
    )
    job = json.loads(submitted.stdout)
    assert job["phase"] == "completed", job["errorSummary"]
    assert job["jobInfo"] == {"commitSha": sha}  # the resolved commit, not "release"
    assert job["parameters"]["commit_ref"] == "release"
    status = run_cli(server, "status", job["jobId"]).stdout
    assert f"commit       {sha}" in status
    uws = requests.get(f"{server.url}/uws/async/{job['jobId']}", timeout=10).text
    assert f"<uws:jobInfo><uws:commitSha>{sha}</uws:commitSha></uws:jobInfo>" in uws
    archived = server.data_dir / "objects" / "ocps-jobs" / "jobs" / job["jobId"] / "job.json"
    assert json.loads(archived.read_text())["commit_sha"] == sha
    # A job without a clone has nothing to tell: the seed's empty jobInfo.
    plain = json.loads(run_cli(server, "submit", "true", "--wait", "--json").stdout)
    assert plain["jobInfo"] == {}
