"""A client holding more connections than there are threads leaves the CSC's poll a thread.

``ocps-jobs serve`` with 16 threads and a connection cap per address above them (so the
per-address share of threads is what binds): followed logs of a running job (a request
that holds its thread while the job runs, up to the WAIT cap) from one address; meanwhile
a CSC-style GET from 127.0.0.1 must be answered within a second. Bounded in count and time.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ocps_jobs.composition import build_service
from ocps_jobs.config import Settings
from tests.chaos import ServeProcess
from tests.test_server_limits import ANSWER_WITHIN, attacker, csc_get_seconds, running_job

pytestmark = pytest.mark.slow

THREADS = 16
# Above the threads: the connection cap never binds, only the threads' share does.
CONNECTIONS_PER_CLIENT = 32
# A followed log ends by itself this soon: held threads come back between tests.
FOLLOW_SECONDS = 4
HELD = THREADS + 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data_dir = tmp_path_factory.mktemp("share") / "data"
    settings = {
        "OCPS_HTTP_CONNECTIONS_PER_CLIENT": str(CONNECTIONS_PER_CLIENT),
        "OCPS_WAIT_MAX_SECONDS": str(FOLLOW_SECONDS),
    }
    arguments = ("--max-concurrent-jobs", "2", "--threads", str(THREADS))
    with ServeProcess(data_dir, *arguments, env=settings) as running:
        yield running


@pytest.fixture
def job_id(server: ServeProcess) -> Iterator[str]:
    yield from running_job(server)


def hold_threads(server: ServeProcess, job_id: str, sources: list[str]) -> list[socket.socket]:
    """One followed log of the running job per source address given."""
    request = f"GET /api/v1/job/{job_id}/log?follow=true HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    held = []
    for source in sources:
        connection = attacker(server, source)
        connection.sendall(request.encode())
        held.append(connection)
    return held


def release(held: list[socket.socket], started: float) -> None:
    """Hang up, and let the followed logs end (their threads come back)."""
    for connection in held:
        connection.close()
    time.sleep(max(0.0, started + FOLLOW_SECONDS + 1 - time.monotonic()))


def test_one_address_holding_more_than_every_thread(server: ServeProcess, job_id: str) -> None:
    started = time.monotonic()
    held = hold_threads(server, job_id, ["127.0.0.8"] * HELD)
    try:
        time.sleep(1)
        assert csc_get_seconds(server, job_id) < ANSWER_WITHIN
    finally:
        release(held, started)


def test_many_addresses_holding_followed_logs_and_waits(server: ServeProcess, job_id: str) -> None:
    # Each address within its own share, together more than every thread: followed logs and
    # WAITs share one cap below the threads, so the CSC's poll still finds one free.
    started = time.monotonic()
    sources = [f"127.0.0.{10 + n % 5}" for n in range(HELD)]
    held = hold_threads(server, job_id, sources[: HELD // 2])
    wait = f"GET /uws/async/{job_id}?WAIT=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for source in sources[HELD // 2 :]:
        connection = attacker(server, source)
        connection.sendall(wait.encode())
        held.append(connection)
    try:
        time.sleep(1)
        assert csc_get_seconds(server, job_id) < ANSWER_WITHIN
        # Past the cap a followed log answers at once with what there is, unfollowed.
        answered = time.monotonic()
        response = requests.get(
            f"{server.url}/api/v1/job/{job_id}/log", params={"follow": "true"}, timeout=10
        )
        assert response.status_code == 200
        assert time.monotonic() - answered < ANSWER_WITHIN
    finally:
        release(held, started)


@pytest.mark.parametrize(
    ("cap", "held"), [(None, [True] * 3), (0, [False]), (2, [True, True, False])]
)
def test_held_request_slots_follow_the_wait_cap(
    tmp_path: Path, cap: int | None, held: list[bool]
) -> None:
    # None: no cap (as under functions-framework); 0: no request may hold its thread.
    service = build_service(Settings.from_env(data_dir=tmp_path / "data", max_concurrent_waits=cap))
    with contextlib.ExitStack() as stack:
        assert [stack.enter_context(service.held_request()) for _ in held] == held
    with service.held_request() as again:  # the slots come back
        assert again is (cap != 0)
