"""The embedded server stays on the air while hostile clients hold connections and threads.

Each attack runs from its own loopback address (127.0.0.2 and up, all on ``lo``) against
``ocps-jobs serve`` with small limits; meanwhile a CSC-style GET from 127.0.0.1 must be
answered within a second. Every attack is bounded in count and time and ends by itself.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ocps_jobs.service import WAIT_SLICE_SECONDS
from tests.chaos import ServeProcess
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

THREADS = 16
WAIT_SLOTS = 8
PER_CLIENT = 8
HEADER_TIMEOUT = 2
SEND_TIMEOUT = 2
ANSWER_WITHIN = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data_dir = tmp_path_factory.mktemp("limits") / "data"
    settings = {
        "OCPS_MAX_CONCURRENT_WAITS": str(WAIT_SLOTS),
        "OCPS_HTTP_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
        "OCPS_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "OCPS_HTTP_SEND_TIMEOUT_SECONDS": str(SEND_TIMEOUT),
    }
    arguments = ("--max-concurrent-jobs", "2", "--threads", str(THREADS))
    with ServeProcess(data_dir, *arguments, env=settings) as running:
        yield running


def submit(server: ServeProcess, command: str) -> str:
    response = requests.put(f"{server.url}/api/v1/job", json={"command": command}, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["jobId"])


def phase(server: ServeProcess, job_id: str) -> str:
    return str(requests.get(f"{server.url}/api/v1/job/{job_id}/phase", timeout=10).json())


def csc_get_seconds(server: ServeProcess, job_id: str) -> float:
    """A fresh connection's ``GET /api/v1/job/{id}``, as the CSC polls; its time."""
    started = time.monotonic()
    response = requests.get(f"{server.url}/api/v1/job/{job_id}", timeout=ANSWER_WITHIN * 5)
    assert response.status_code == 200
    return time.monotonic() - started


def attacker(server: ServeProcess, source: str, receive_buffer: int | None = None) -> socket.socket:
    """A connection to the server from ``source`` (a loopback address)."""
    port = int(server.url.rsplit(":", 1)[1])
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    connection.bind((source, 0))
    connection.connect(("127.0.0.1", port))
    return connection


def closed_by_server(connection: socket.socket, within: float) -> bool:
    """Whether the server closes the connection within ``within`` s (data sent is read)."""
    connection.settimeout(0.2)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if not connection.recv(1 << 20):
                return True
        except TimeoutError:
            continue
        except OSError:  # reset
            return True
    return False


def running_job(server: ServeProcess) -> Iterator[str]:
    """A job that runs for a minute (deleted afterwards): what the attacks hold threads on."""
    running = submit(server, "sleep 60")
    wait_until(lambda: phase(server, running) == "executing")
    yield running
    requests.delete(f"{server.url}/api/v1/job/{running}", timeout=10)


@pytest.fixture
def job_id(server: ServeProcess) -> Iterator[str]:
    yield from running_job(server)


def test_silent_connections_neither_hold_the_server_nor_stay(
    server: ServeProcess, job_id: str
) -> None:
    """More silent connections than the server's connection limit, from one address."""
    silent = []
    try:
        for _ in range(120):
            with contextlib.suppress(OSError):
                silent.append(attacker(server, "127.0.0.2"))
        assert csc_get_seconds(server, job_id) < ANSWER_WITHIN
        # Those accepted owe their headers within the header timeout: then they are closed.
        assert all(closed_by_server(c, HEADER_TIMEOUT + 3) for c in silent)
    finally:
        for connection in silent:
            connection.close()


def test_headers_trickling_in_are_cut_off_at_the_deadline(
    server: ServeProcess, job_id: str
) -> None:
    """A header line every 0.5 s: the idle timeout never fires, the header deadline does."""
    tricklers = [attacker(server, "127.0.0.3") for _ in range(PER_CLIENT)]
    try:
        for connection in tricklers:
            connection.sendall(b"GET /api/v1/job HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        open_ones = list(tricklers)
        while open_ones and time.monotonic() - started < HEADER_TIMEOUT + 4:
            assert csc_get_seconds(server, job_id) < ANSWER_WITHIN
            for connection in list(open_ones):
                try:
                    connection.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    open_ones.remove(connection)
            time.sleep(0.5)
        assert not open_ones, "header deadline not enforced"
        assert time.monotonic() - started >= HEADER_TIMEOUT - 0.5
    finally:
        for connection in tricklers:
            connection.close()


def _send_wait(connection: socket.socket, job_id: str, seconds: int) -> None:
    request = f"GET /uws/async/{job_id}?WAIT={seconds} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    connection.sendall(request.encode())


def test_waits_are_capped_below_the_threads_and_end_when_their_client_leaves(
    server: ServeProcess, job_id: str
) -> None:
    waiters = [attacker(server, f"127.0.0.{4 + n // PER_CLIENT}") for n in range(THREADS)]
    try:
        for connection in waiters:
            _send_wait(connection, job_id, 55)
        time.sleep(1.5)
        assert csc_get_seconds(server, job_id) < ANSWER_WITHIN
        # Past the cap a WAIT answers at once, as WAIT=0.
        started = time.monotonic()
        response = requests.get(f"{server.url}/uws/async/{job_id}?WAIT=30", timeout=10)
        assert response.status_code == 200 and "EXECUTING" in response.text
        assert time.monotonic() - started < ANSWER_WITHIN
    finally:
        for connection in waiters:
            connection.close()  # they hang up long before their 55 s

    def a_wait_blocks_again() -> bool:
        started = time.monotonic()
        requests.get(f"{server.url}/uws/async/{job_id}?WAIT=1", timeout=10)
        return time.monotonic() - started >= 0.9

    # The waits of the clients that left end within a slice: their slots are free again.
    wait_until(a_wait_blocks_again, timeout=WAIT_SLICE_SECONDS + 5)


def _server_rss(server: ServeProcess) -> int:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_downloads_nobody_reads_are_closed_after_the_send_timeout(server: ServeProcess) -> None:
    big = submit(server, "head -c 64M /dev/zero > $JOB_OUTPUT_DIR/big.bin")
    wait_until(lambda: phase(server, big) == "completed", timeout=60)
    listing = requests.get(f"{server.url}/api/v1/job/{big}/results", timeout=10).json()
    result = next(item["id"] for item in listing if item["uri"].endswith("big.bin"))
    request = f"GET /api/v1/job/result/{result} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    readers = []

    def download_unread(source: str, count: int) -> None:
        for _ in range(count):
            with contextlib.suppress(OSError):
                connection = attacker(server, source, receive_buffer=4096)
                connection.sendall(request)
                readers.append(connection)

    try:
        download_unread("127.0.0.6", PER_CLIENT + 4)  # past the cap: refused
        time.sleep(0.5)
        assert csc_get_seconds(server, big) < ANSWER_WITHIN
        # From a second address every thread is taken; nobody reads. Past the send timeout
        # each is closed without any read on our side, which frees its thread.
        download_unread("127.0.0.7", THREADS - PER_CLIENT)
        time.sleep(SEND_TIMEOUT + 2)
        assert csc_get_seconds(server, big) < ANSWER_WITHIN
        assert _server_rss(server) < 512 * 1024 * 1024
        assert all(closed_by_server(connection, 5) for connection in readers)
    finally:
        for connection in readers:
            connection.close()
