"""``ocps-jobs serve`` as a subprocess, driven over HTTP exactly as the OCPS CSC drives it."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.chaos import CLI, ServeProcess
from tests.helpers import host_pid, make_pipeline_repo, process_alive, wait_until

pytestmark = pytest.mark.slow

FINISHED = {"completed", "error", "aborted", "unknown"}


def Server(data_dir: Path) -> ServeProcess:
    """``ocps-jobs serve`` on the embedded default with two job slots."""
    return ServeProcess(data_dir, "--max-concurrent-jobs", "2")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    running = Server(tmp_path / "data").start()
    yield running
    running.stop()


def csc_wait(base: str, job_id: str) -> dict:
    """The CSC's loop: GET the job every 0.5 s until it is finished."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = requests.get(f"{base}/api/v1/job/{job_id}", timeout=10)
        assert response.status_code == 200
        job = response.json()
        assert job["phase"] != "unknown"
        if job["phase"] in FINISHED:
            return job
        time.sleep(0.5)
    raise AssertionError("job did not finish")


def test_the_csc_request_sequence(server: ServeProcess, tmp_path: Path) -> None:
    repo = make_pipeline_repo(tmp_path)
    base = server.url
    response = requests.put(
        f"{base}/api/v1/job",
        json={
            "command": "cd $JOB_SOURCE_DIR && bash bin/pipetask.sh",
            "run_id": "csc-run-1",
            "url": str(repo),
            "commit_ref": "release",
            "environment": [{"name": "PIPE_ARGS", "value": "-j 2 --config 'a: b'"}],
        },
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    job = response.json()
    assert list(job) == [
        "jobId",
        "runId",
        "ownerId",
        "phase",
        "creationTime",
        "startTime",
        "endTime",
        "executionDuration",
        "destruction",
        "parameters",
        "results",
        "errorSummary",
        "jobInfo",
    ]
    assert re.fullmatch(r"[0-9a-f]{32}", job["jobId"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00", job["creationTime"])
    assert job["phase"] in {"queued", "executing"}
    job_id = job["jobId"]

    listed = requests.get(f"{base}/api/v1/job", timeout=10).json()
    assert [item["jobId"] for item in listed] == [job_id]

    final = csc_wait(base, job_id)
    assert final["phase"] == "completed", final["errorSummary"]
    assert requests.get(f"{base}/api/v1/job/{job_id}/phase", timeout=10).json() == "completed"
    assert (
        requests.get(f"{base}/api/v1/job?phase=completed", timeout=10).json()[0]["jobId"] == job_id
    )

    results = requests.get(f"{base}/api/v1/job/{job_id}/results", timeout=10).json()
    names = {item["uri"].split("/out/", 1)[1] for item in results}
    assert names == {
        "summary.txt",
        "version.txt",
        "data/deep/image.fits",
        "logs/git.txt",
        "ocps-job.log",
    }
    manifest = json.loads(
        (server.data_dir / "objects" / "ocps-jobs" / "jobs" / job_id / "manifest.json").read_text()
    )
    checksums = {item["path"]: item["sha256"] for item in manifest["files"]}
    for item in results:
        name = item["uri"].split("/out/", 1)[1]
        with requests.get(f"{base}/api/v1/job/result/{item['id']}", stream=True, timeout=10) as got:
            assert got.status_code == 200
            body = b"".join(got.iter_content(65536))
        assert len(body) == item["size"]
        assert hashlib.sha256(body).hexdigest() == checksums[name]
    version = next(i for i in results if i["uri"].endswith("version.txt"))
    assert requests.get(f"{base}/api/v1/job/result/{version['id']}", timeout=10).text == "2\n"

    deleted = requests.delete(f"{base}/api/v1/job/{job_id}", timeout=10)
    assert deleted.status_code == 200
    assert deleted.json() == {"status": "ok", "message": "", "code": 200}
    assert requests.get(f"{base}/api/v1/job/{job_id}", timeout=10).status_code == 404


def test_raw_hostile_requests_never_get_a_500(server: ServeProcess) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    raw_requests = [
        ("DELETE", "/api/v1/job/%2E%2E", None, {}),
        ("DELETE", "/api/v1/job/..%2F..%2F", None, {}),
        ("GET", "/api/v1/job/result/..%2F..%2Fetc%2Fpasswd", None, {}),
        ("GET", "/api/v1/job/result/L2V0Yy9wYXNzd2Q=", None, {}),
        ("GET", "/api/v1/job/%00", None, {}),
        ("GET", "/api/v1/job?phase=%FF", None, {}),
        ("PUT", "/api/v1/job", b"{", {"Content-Type": "application/json"}),
        ("PUT", "/api/v1/job", b"x" * 400_000, {"Content-Type": "application/json"}),
        (
            "PUT",
            "/api/v1/job",
            b"{}",
            {"Content-Type": "application/json", "Content-Length": "999999999"},
        ),
        ("POST", "/api/v1/job", b"{}", {"Content-Type": "application/json"}),
        ("PATCH", "/api/v1/job/x", b"{}", {}),
        ("GET", "/" + "a/" * 2000, None, {}),
        ("OPTIONS", "/api/v1/job", None, {}),
    ]
    for method, path, body, headers in raw_requests:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (ConnectionError, http.client.HTTPException):
            continue  # the server may close a connection whose declared body never arrives
        finally:
            connection.close()
        assert 400 <= response.status < 500, (method, path, response.status)
        assert b"root:" not in data
    assert requests.get(f"{server.url}/api/v1/job", timeout=10).json() == []


def test_jobs_survive_a_crash_of_the_server(server: ServeProcess) -> None:
    done = requests.put(
        f"{server.url}/api/v1/job", json={"command": "echo a > $JOB_OUTPUT_DIR/a"}, timeout=10
    ).json()["jobId"]
    assert csc_wait(server.url, done)["phase"] == "completed"
    running = requests.put(
        f"{server.url}/api/v1/job",
        json={"command": 'sleep 120 & echo $! > "$JOB_OUTPUT_DIR/pid"; wait'},
        timeout=10,
    ).json()["jobId"]
    pid_file = server.data_dir / "work" / running / "out" / "pid"
    sleeper = int(wait_until(lambda: pid_file.is_file() and pid_file.read_text().strip()))
    sleeper = host_pid(running, sleeper)
    assert process_alive(sleeper)
    # A sandboxed job dies with the server (its namespace goes); an unsandboxed one stays
    # until the restarted server stops it.
    server.stop(signal.SIGKILL)

    restarted = Server(server.data_dir).start()
    try:
        after = requests.get(f"{restarted.url}/api/v1/job/{running}", timeout=10).json()
        assert after["phase"] == "error"
        assert "restarted" in after["errorSummary"]["message"]
        # ... which the restarted server stops before it removes their folder.
        wait_until(lambda: not process_alive(sleeper), timeout=10)
        kept = requests.get(f"{restarted.url}/api/v1/job/{done}/results", timeout=10).json()
        assert [
            requests.get(f"{restarted.url}/api/v1/job/result/{r['id']}", timeout=10).text
            for r in kept
            if r["uri"].endswith("/a")
        ] == ["a\n"]
    finally:
        restarted.stop()
    subprocess.run(["pkill", "-f", "sleep 120"], check=False)


def test_cli_drives_the_server(server: ServeProcess, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLI), *args, "--url", server.url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    submitted = cli(
        "submit",
        "mkdir -p $JOB_OUTPUT_DIR/d && echo $GREETING > $JOB_OUTPUT_DIR/d/hi.txt",
        "--env",
        "GREETING=hello: world",
        "--run-id",
        "cli-1",
        "--wait",
        "--json",
    )
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["phase"] == "completed" and job["runId"] == "cli-1"
    job_id = job["jobId"]

    table = cli("list")
    assert table.returncode == 0 and job_id in table.stdout and "completed" in table.stdout
    listed = json.loads(cli("list", "--json", "--phase", "completed").stdout)
    assert [item["jobId"] for item in listed] == [job_id]
    assert json.loads(cli("status", job_id, "--json").stdout)["phase"] == "completed"
    results = json.loads(cli("results", job_id, "--json").stdout)
    assert {r["uri"].split("/out/")[1] for r in results} == {"d/hi.txt", "ocps-job.log"}

    downloaded = cli("download", job_id, "--output", str(tmp_path / "dl"), "--json")
    assert downloaded.returncode == 0, downloaded.stderr
    assert (tmp_path / "dl" / job_id / "d" / "hi.txt").read_text() == "hello: world\n"

    failing = cli("submit", "exit 4", "--wait", "--json")
    assert failing.returncode == 1
    assert "exited with code 4" in json.loads(failing.stdout)["errorSummary"]["message"]

    missing = cli("status", "0" * 32)
    assert missing.returncode == 3 and "404" in missing.stderr
    assert cli("abort", job_id, "--json").returncode == 0
    assert cli("status", job_id).returncode == 3
    unreachable = subprocess.run(
        [str(CLI), "list", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert unreachable.returncode == 3 and "Cannot reach" in unreachable.stderr


def test_a_second_process_on_the_same_data_dir_is_refused_and_harms_no_job(
    server: ServeProcess, tmp_path: Path
) -> None:
    created = requests.put(
        f"{server.url}/api/v1/job",
        json={"command": 'sleep 2; echo done > "$JOB_OUTPUT_DIR/done.txt"'},
        timeout=10,
    ).json()
    job_id = created["jobId"]
    environment = {"PATH": "/usr/bin:/bin", "OCPS_DATA_DIR": str(server.data_dir)}
    argv = [str(CLI), "serve", "--port", "0", "--data-dir", str(server.data_dir)]
    second = subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=60)
    assert second.returncode == 3, second.stderr
    assert "is in use by another ocps-jobs process" in second.stderr
    assert "Traceback" not in second.stderr
    # sweep is the Kubernetes backend's: on a local data dir it would start and stop jobs.
    sweep = subprocess.run(
        [str(CLI), "sweep"], env=environment, capture_output=True, text=True, timeout=60
    )
    assert sweep.returncode == 2 and "sweep is for the Kubernetes backend" in sweep.stderr
    job = wait_until(
        lambda: (
            (found := requests.get(f"{server.url}/api/v1/job/{job_id}", timeout=10).json())["phase"]
            in ("completed", "error")
            and found
        ),
        timeout=30,
    )
    assert job["phase"] == "completed", job["errorSummary"]
    assert [item["uri"].rsplit("/", 1)[1] for item in job["results"]] == [
        "done.txt",
        "ocps-job.log",
    ]


def test_the_cli_answers_bad_input_with_one_line_and_its_exit_status(
    server: ServeProcess, tmp_path: Path
) -> None:
    def cli(*args: str, url: str = server.url) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(CLI), *args, "--url", url], capture_output=True, text=True, timeout=60
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done

    # An ID with URL syntax in it is one path segment, not a query: a 404.
    for command in ("status", "results", "wait"):
        odd = cli(command, "?phase=error")
        assert (odd.returncode, odd.stderr.count("\n")) == (3, 1), odd.stderr
        assert "404" in odd.stderr
    # Arguments no request can be made with: one line, exit 2.
    for args, url in (
        (("status", "."), server.url),
        (("status", ""), server.url),
        (("list",), "http://[::1"),
        (("list", "--token", "caf\u00e9"), server.url),
    ):
        unusable = cli(*args, url=url)
        assert (unusable.returncode, unusable.stderr.count("\n")) == (2, 1), unusable.stderr
    # A wait that runs out of time: the job did not complete (1), the service is fine.
    running = cli("submit", "sleep 30", "--json")
    job_id = json.loads(running.stdout)["jobId"]
    timed_out = cli("wait", job_id, "--timeout", "0.5")
    assert timed_out.returncode == 1 and "still" in timed_out.stderr
    assert cli("wait", job_id, "--poll", "-1").returncode == 2  # argparse's usage error
    assert cli("abort", job_id).returncode == 0
    # A download whose file would land where a folder is: one line, no partial file left.
    done = json.loads(cli("submit", 'echo x > "$JOB_OUTPUT_DIR/a.txt"', "--wait", "--json").stdout)
    target = tmp_path / "dl"
    (target / done["jobId"] / "a.txt").mkdir(parents=True)
    refused = cli("download", done["jobId"], "--output", str(target))
    assert refused.returncode == 3 and "Cannot write" in refused.stderr
    assert not list(target.rglob("*.part"))
    # Something that is not a job manager answers the URL: a page, and an HTML 404.
    site = tmp_path / "site"
    (site / "api" / "v1").mkdir(parents=True)
    (site / "api" / "v1" / "job").write_text("<html><body>a web page</body></html>\n")
    with subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"],
        cwd=site,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as other:
        try:
            assert other.stdout is not None
            port = re.search(r"port (\d+)", other.stdout.readline())
            assert port is not None
            wrong = cli("list", url=f"http://127.0.0.1:{port[1]}")
            html_404 = cli("status", "0" * 32, url=f"http://127.0.0.1:{port[1]}")
        finally:
            other.terminate()
    assert wrong.returncode == 3 and "not JSON" in wrong.stderr
    assert html_404.returncode == 3 and html_404.stderr.count("\n") == 1


def test_serve_on_a_taken_port_starts_no_job(tmp_path: Path) -> None:
    """A queued job in the data dir, and the port taken: one line, exit 3, the job untouched."""
    first = ServeProcess(tmp_path / "data", "--max-concurrent-jobs", "1").start()
    try:
        running = requests.put(
            f"{first.url}/api/v1/job", json={"command": "sleep 20"}, timeout=10
        ).json()
        queued = requests.put(
            f"{first.url}/api/v1/job", json={"command": "touch $JOB_OUTPUT_DIR/ran"}, timeout=10
        ).json()
    finally:
        first.stop()  # SIGTERM: the running job is stopped, the queued one stays queued
    port = int(first.url.rsplit(":", 1)[1])
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [str(CLI), "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 3 and "cannot listen on" in done.stderr
    assert "Traceback" not in done.stderr
    state = tmp_path / "data" / "state" / "jobs"
    assert json.loads((state / f"{queued['jobId']}.json").read_text())["phase"] == "queued"
    assert running["jobId"] != queued["jobId"]


def test_bad_settings_are_one_line_and_exit_2_for_serve(tmp_path: Path) -> None:
    environment = {"PATH": "/usr/bin:/bin", "OCPS_MAX_CONCURRENT_JOBS": "many"}
    done = subprocess.run(
        [str(CLI), "serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "ocps-jobs: Invalid settings: OCPS_MAX_CONCURRENT_JOBS: Input should be a valid "
        "integer, unable to parse string as an integer\n"
    )
