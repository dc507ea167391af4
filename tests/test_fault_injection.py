"""Faults: the S3 endpoint going away and coming back, jobs killed by signals, internal errors.

S3 faults are injected with ``tests.faults.TcpProxy`` between the product and moto's
server on loopback: cut (connections reset, new ones refused) and restored on the same
port, with no restart of the job manager. The Kubernetes API outage is in
``tests/cluster/test_cluster_faults.py``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from flask.testing import FlaskClient

from ocps_jobs.backends import local
from ocps_jobs.composition import build_service
from ocps_jobs.config import Settings
from ocps_jobs.http import create_embedded_app
from ocps_jobs.service import JobService
from ocps_jobs.uploader.upload import Uploader
from tests.chaos import ServeProcess
from tests.faults import TcpProxy
from tests.helpers import host_pid, process_alive, wait_for_phase, wait_until

FINAL = {"completed", "error", "aborted"}


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[TcpProxy]:
    """A cuttable loopback proxy in front of moto's S3 server."""
    parts = urlsplit(s3_endpoint)
    assert parts.hostname == "127.0.0.1" and parts.port
    with TcpProxy((parts.hostname, parts.port)) as proxy:
        yield proxy


def in_process(tmp_path: Path, proxy: TcpProxy, bucket: str) -> tuple[JobService, FlaskClient]:
    settings = Settings.from_env(
        data_dir=tmp_path / "data", s3_endpoint=proxy.url, bucket=bucket, max_concurrent_jobs=2
    )
    service = build_service(settings)
    return service, create_embedded_app(service).test_client()


def submit(client: FlaskClient, command: str) -> str:
    response = client.put("/api/v1/job", json={"command": command})
    assert response.status_code == 200, response.data
    return str(response.get_json()["jobId"])


def finish(client: FlaskClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    wait_for_phase(lambda: client.get(f"/api/v1/job/{job_id}/phase").get_json(), FINAL, timeout)
    return dict(client.get(f"/api/v1/job/{job_id}").get_json())


def results_by_name(client: FlaskClient, job_id: str) -> dict[str, dict[str, Any]]:
    listing = client.get(f"/api/v1/job/{job_id}/results").get_json()
    return {item["uri"].rsplit("/out/", 1)[1]: item for item in listing}


def assert_unavailable(response: Any) -> None:
    """503 with the JSON error body: retry later."""
    assert response.status_code == 503, (response.status_code, response.content[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "service_unavailable"
    assert "Traceback" not in body["message"]


# --- S3 outage during a download -------------------------------------------------------------

BIG = 128 * 1024 * 1024  # well past what waitress, the sockets and the proxy buffer ahead


@pytest.mark.slow
def test_a_download_cut_by_an_s3_outage_fails_cleanly_and_recovers(
    s3_proxy: TcpProxy, bucket: str, tmp_path: Path
) -> None:
    server = ServeProcess(
        tmp_path / "data", "--s3-endpoint", s3_proxy.url, "--bucket", bucket, "--threads", "8"
    )
    with server:
        base = server.url
        created = requests.put(
            f"{base}/api/v1/job",
            json={"command": f"head -c {BIG} /dev/zero > $JOB_OUTPUT_DIR/big.bin"},
            timeout=10,
        )
        job_id = created.json()["jobId"]

        def phase() -> str:
            return str(requests.get(f"{base}/api/v1/job/{job_id}/phase", timeout=10).json())

        assert wait_for_phase(phase, FINAL, timeout=90) == "completed"
        listing = requests.get(f"{base}/api/v1/job/{job_id}/results", timeout=10).json()
        item = next(entry for entry in listing if entry["uri"].endswith("/big.bin"))
        assert item["size"] == BIG
        download = f"{base}/api/v1/job/result/{item['id']}"

        # A download in flight when S3 goes away: cut short, never a complete-looking 200.
        received = 0
        failure: Exception | None = None
        with requests.get(download, stream=True, timeout=(5, 60)) as response:
            assert response.status_code == 200
            assert int(response.headers["Content-Length"]) == BIG
            chunks = response.iter_content(256 * 1024)
            while received < 1024 * 1024:
                received += len(next(chunks))
            s3_proxy.cut()
            try:
                for chunk in chunks:
                    received += len(chunk)
            except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError) as error:
                failure = error
        assert failure is not None, "the client must see the download fail"
        assert received < BIG
        print(
            f"\ndownload cut after {received / 2**20:.1f} MiB of {BIG / 2**20:.0f} MiB: {failure!r}"
        )

        # During the outage: downloads are 503 JSON; what needs no S3 still answers.
        assert_unavailable(requests.get(download, timeout=60))
        assert_unavailable(requests.get(f"{base}/api/v1/job/result/{job_id}/0", timeout=60))
        assert requests.get(f"{base}/api/v1/job/{job_id}", timeout=10).status_code == 200
        assert requests.get(f"{base}/api/v1/job", timeout=10).status_code == 200

        # S3 is back: the same server (no restart) serves the whole file, and ranges.
        s3_proxy.restore()
        digest = hashlib.sha256()
        with requests.get(download, stream=True, timeout=(5, 60)) as response:
            assert response.status_code == 200
            for chunk in response.iter_content(1024 * 1024):
                digest.update(chunk)
        zeros = hashlib.sha256()
        for _ in range(BIG // 2**20):
            zeros.update(bytes(2**20))
        assert digest.hexdigest() == zeros.hexdigest()
        ranged = requests.get(download, headers={"Range": "bytes=100-199"}, timeout=30)
        assert ranged.status_code == 206 and ranged.content == bytes(100)
        assert server.process is not None and server.process.poll() is None


# --- S3 outage during uploads from the local backend -----------------------------------------

PARTS = 6
PART_SIZE = 4 * 1024 * 1024
WRITE_PARTS = (
    'cd "$JOB_OUTPUT_DIR" && for i in $(seq 1 '
    f"{PARTS}); do head -c {PART_SIZE} /dev/urandom > part$i.bin; done && "
    "sha256sum part*.bin > sums.txt"
)


def test_uploads_survive_an_s3_outage_within_the_retries(
    s3_proxy: TcpProxy, bucket: str, tmp_path: Path
) -> None:
    _, client = in_process(tmp_path, s3_proxy, bucket)
    # Cut once a third of the outputs has gone up, and come back two seconds later.
    went_down = s3_proxy.cut_after(PARTS * PART_SIZE // 3)
    outage: dict[str, float] = {}

    def come_back() -> None:
        if went_down.wait(60):
            outage["down"] = time.monotonic()
            time.sleep(2)
            s3_proxy.restore()
            outage["up"] = time.monotonic()

    restorer = threading.Thread(target=come_back, daemon=True)
    restorer.start()
    job_id = submit(client, WRITE_PARTS)
    job = finish(client, job_id)
    restorer.join(timeout=70)
    assert s3_proxy.cuts == 1 and "up" in outage, "the outage must hit the upload"
    assert job["phase"] == "completed", job["errorSummary"]
    # Nothing lost: every part is there, byte for byte as the job wrote it.
    results = results_by_name(client, job_id)
    sums = client.get(f"/api/v1/job/result/{results['sums.txt']['id']}").get_data(as_text=True)
    expected = dict(reversed(line.split()) for line in sums.splitlines())
    assert sorted(expected) == [f"part{i}.bin" for i in range(1, PARTS + 1)]
    for name, checksum in expected.items():
        data = client.get(f"/api/v1/job/result/{results[name]['id']}").data
        assert len(data) == PART_SIZE
        assert hashlib.sha256(data).hexdigest() == checksum, name


def test_uploads_end_in_a_clear_error_when_s3_stays_down(
    s3_proxy: TcpProxy, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two attempts instead of six: the same code path, in seconds rather than a minute.
    monkeypatch.setattr(
        local, "Uploader", functools.partial(Uploader, attempts=2, backoff_seconds=0.1)
    )
    _, client = in_process(tmp_path, s3_proxy, bucket)
    s3_proxy.cut()
    job_id = submit(client, "echo output > $JOB_OUTPUT_DIR/out.txt")
    job = finish(client, job_id, timeout=90)
    assert job["phase"] == "error"
    message = job["errorSummary"]["message"]
    assert message.startswith("Upload of the job's results failed:"), message
    assert "Traceback" not in message
    assert job["results"] == []
    # Downloads and deletes answer 503 meanwhile; the job is still there to retry on.
    response = client.get(f"/api/v1/job/result/{job_id}/0")
    assert response.status_code == 404  # the failed job has no results to download
    deleted = client.delete(f"/api/v1/job/{job_id}")
    assert deleted.status_code == 503
    assert deleted.get_json()["error"] == "service_unavailable"
    assert client.get(f"/api/v1/job/{job_id}").status_code == 200
    # Back again: new jobs complete and the failed one can be deleted, without a restart.
    s3_proxy.restore()
    again = submit(client, "echo output > $JOB_OUTPUT_DIR/out.txt")
    assert finish(client, again)["phase"] == "completed"
    assert client.delete(f"/api/v1/job/{job_id}").status_code == 200
    assert client.get(f"/api/v1/job/{job_id}").status_code == 404


def test_during_an_s3_outage_store_requests_are_503_json_and_recover(
    s3_proxy: TcpProxy, bucket: str, tmp_path: Path
) -> None:
    _, client = in_process(tmp_path, s3_proxy, bucket)
    job_id = submit(client, "echo kept > $JOB_OUTPUT_DIR/kept.txt")
    assert finish(client, job_id)["phase"] == "completed"
    result_id = results_by_name(client, job_id)["kept.txt"]["id"]
    s3_proxy.cut()
    for path in (f"/api/v1/job/result/{result_id}", f"/api/v1/job/result/{job_id}/0"):
        response = client.get(path)
        assert response.status_code == 503
        assert response.get_json()["error"] == "service_unavailable"
    deleted = client.delete(f"/api/v1/job/{job_id}")
    assert deleted.status_code == 503
    # Nothing was lost by the failed delete: the job and its results are all still there.
    s3_proxy.restore()
    assert client.get(f"/api/v1/job/{job_id}").status_code == 200
    assert client.get(f"/api/v1/job/result/{result_id}").data == b"kept\n"
    assert client.delete(f"/api/v1/job/{job_id}").status_code == 200


# --- a job process killed from outside --------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_job_killed_by_a_signal_ends_in_error(
    client: FlaskClient, service: JobService, sig: signal.Signals
) -> None:
    command = (
        'echo $$ > "$JOB_OUTPUT_DIR/bash.pid"; sleep 60 & echo $! > "$JOB_OUTPUT_DIR/child.pid"; '
        "wait; echo never"
    )
    job_id = submit(client, command)
    output = service.settings.data_dir / "work" / job_id / "out"

    def pids() -> tuple[int, int] | None:
        try:
            bash = int((output / "bash.pid").read_text())
            child = int((output / "child.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return host_pid(job_id, bash), host_pid(job_id, child)

    bash, child = wait_until(pids, timeout=20)
    assert process_alive(bash) and process_alive(child)
    os.kill(bash, sig)
    # Well before the 60 s sleep would end: the job's process group dies with its bash.
    job = finish(client, job_id, timeout=20)
    assert job["phase"] == "error"
    assert f"killed by signal {int(sig)}" in job["errorSummary"]["message"]
    assert not process_alive(child), "a child the command left behind must not outlive the job"
    names = set(results_by_name(client, job_id))
    assert {"bash.pid", "child.pid", "ocps-job.log"} <= names


# --- no debug mode: an internal error is a generic 500 --------------------------------------


def test_an_internal_error_is_a_generic_500_without_a_traceback(
    client: FlaskClient, service: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = submit(client, "true")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret-detail in /srv/ocps/state")

    monkeypatch.setattr(service, "get_job", broken)
    monkeypatch.setattr(service, "list_jobs", broken)
    monkeypatch.setattr(service, "list_page", broken)
    monkeypatch.setattr(service, "render_page", broken)
    for path in (f"/api/v1/job/{job_id}", "/api/v1/job", f"/api/v1/job/{job_id}/phase"):
        response = client.get(path)
        assert response.status_code == 500
        assert response.mimetype == "application/json"
        assert response.get_json() == {
            "error": "internal_error",
            "message": "Internal error; it has been logged",
        }
    for path in (f"/uws/async/{job_id}", "/uws/async"):
        response = client.get(path)
        assert response.status_code == 500
        assert response.mimetype == "text/plain"
        assert response.get_data(as_text=True) == "Internal error; it has been logged\n"
    for response in (client.get("/api/v1/job"), client.get("/uws/async")):
        assert b"Traceback" not in response.data and b"secret-detail" not in response.data
    app = client.application
    assert app.debug is False
    assert not app.config.get("PROPAGATE_EXCEPTIONS")
    assert not app.testing


def test_the_knative_functions_run_without_debug(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from functions_framework import create_app

    from tests.conftest import FUNCTIONS

    monkeypatch.setenv("OCPS_DATA_DIR", str(tmp_path / "data"))
    for name in ("create_job", "query_job", "results"):
        app = create_app(name, str(FUNCTIONS / name / "main.py"))
        assert app.debug is False
        assert not app.config.get("PROPAGATE_EXCEPTIONS")
        # A path Flask's own router refuses is still the interface's JSON error.
        response = app.test_client().get("/api/v1/job/a%0Ab/phase")
        assert response.status_code in (404, 405)
        assert response.mimetype == "application/json"


@pytest.mark.slow
def test_the_server_answers_errors_without_debug_pages(tmp_path: Path) -> None:
    with ServeProcess(tmp_path / "data") as server:
        for method, path in [
            ("GET", "/api/v1/job/a%0Ab/phase"),
            ("GET", "/nowhere"),
            ("PROPFIND", "/api/v1/job"),
            ("GET", "/api/v1/job/result/%ZZ"),
            ("GET", "/uws/async/a%0Ab"),
        ]:
            response = requests.request(method, server.url + path, timeout=10)
            assert 400 <= response.status_code < 500, (method, path, response.status_code)
            assert "<html" not in response.text.lower()
            assert "Traceback" not in response.text


@pytest.mark.slow
def test_the_server_stops_promptly_with_connections_open(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data").start()
    try:
        session = requests.Session()  # an idle keep-alive connection, as a CSC keeps one
        job = session.put(f"{server.url}/api/v1/job", json={"command": "sleep 30"}, timeout=10)
        job_id = job.json()["jobId"]
        waiting = threading.Thread(  # and a request in flight: a UWS WAIT
            target=lambda: requests.get(f"{server.url}/uws/async/{job_id}?WAIT=50", timeout=60),
            daemon=True,
        )
        waiting.start()
        time.sleep(0.5)
        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
        print(f"\nstopped in {time.monotonic() - started:.2f} s")
        session.close()
    finally:
        server.stop()
