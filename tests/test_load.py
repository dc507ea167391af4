"""Load on one ``ocps-jobs serve`` over loopback: concurrent creates, and many CSC-style pollers.

Bounded in count and time, 127.0.0.1 only. Latencies are printed, never asserted:
performance is measured by ``bench/``, these tests check that nothing is lost and that
no request fails under load.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from bench.common import percentile

from tests.chaos import ServeProcess
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

CREATES = 500
CREATE_WORKERS = 50
READERS = 200
POLL_SECONDS = 0.5  # the CSC's interval
READ_DURATION = 20.0
FINISHED = {"completed", "error", "aborted", "unknown"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    # The default HTTP threads and connection limit: what an operator gets.
    with ServeProcess(tmp_path / "data", "--max-concurrent-jobs", "4") as running:
        yield running


def summary(name: str, latencies: list[float], seconds: float) -> str:
    ms = [value * 1000 for value in latencies]
    return (
        f"{name}: {len(ms)} requests in {seconds:.1f} s ({len(ms) / seconds:.0f}/s), "
        f"p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms, "
        f"max {max(ms):.1f} ms"
    )


def list_jobs(base: str) -> list[dict[str, Any]]:
    response = requests.get(f"{base}/api/v1/job", timeout=60)
    assert response.status_code == 200
    return list(response.json())


def all_finished(base: str, expected: set[str]) -> bool:
    jobs = list_jobs(base)
    return {job["jobId"] for job in jobs} == expected and all(
        job["phase"] in FINISHED for job in jobs
    )


def test_concurrent_creates_lose_nothing(server: ServeProcess) -> None:
    base = server.url

    def create(number: int) -> tuple[int, str, float]:
        started = time.perf_counter()
        response = requests.put(
            f"{base}/api/v1/job",
            json={"command": "true", "run_id": f"load-{number}"},
            timeout=60,
        )
        elapsed = time.perf_counter() - started
        job_id = response.json()["jobId"] if response.status_code == 200 else ""
        return response.status_code, job_id, elapsed

    started = time.monotonic()
    with ThreadPoolExecutor(CREATE_WORKERS) as pool:
        outcomes = list(pool.map(create, range(CREATES)))
    seconds = time.monotonic() - started
    statuses = Counter(status for status, _, _ in outcomes)
    print(f"\n{summary('create', [e for _, _, e in outcomes], seconds)}; statuses {statuses}")
    assert statuses == {200: CREATES}
    ids = {job_id for _, job_id, _ in outcomes}
    assert len(ids) == CREATES  # distinct
    listed = list_jobs(base)
    assert len(listed) == CREATES
    assert {job["jobId"] for job in listed} == ids
    assert {job["runId"] for job in listed} == {f"load-{n}" for n in range(CREATES)}
    # And every one of them runs to completion.
    wait_until(lambda: all_finished(base, ids), timeout=90, interval=1.0)
    phases = Counter(job["phase"] for job in list_jobs(base))
    assert phases == {"completed": CREATES}, phases


def test_many_csc_pollers_while_jobs_run(server: ServeProcess) -> None:
    base = server.url
    job_ids = []
    for number in range(100):  # ~12 s of work at 4 at a time: they run while polled
        response = requests.put(
            f"{base}/api/v1/job",
            json={"command": "sleep 0.5", "run_id": f"poll-{number}"},
            timeout=30,
        )
        assert response.status_code == 200
        job_ids.append(response.json()["jobId"])

    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    phases: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + READ_DURATION

    def poll(reader: int) -> None:
        job_id = job_ids[reader % len(job_ids)]
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                response = requests.get(f"{base}/api/v1/job/{job_id}", timeout=30)
                phase = response.json()["phase"] if response.status_code == 200 else ""
            except (requests.RequestException, ValueError) as error:
                with lock:
                    failures.append(repr(error))
                return
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses[response.status_code] += 1
                phases[phase] += 1
            time.sleep(POLL_SECONDS)

    started = time.monotonic()
    readers = [threading.Thread(target=poll, args=(n,), daemon=True) for n in range(READERS)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=READ_DURATION + 60)
    seconds = time.monotonic() - started
    print(f"\n{summary(f'{READERS} pollers, GET job', latencies, seconds)}")
    print(f"  statuses {dict(statuses)}, phases seen {dict(phases)}")
    assert not [reader for reader in readers if reader.is_alive()]
    assert not failures, failures[:5]
    assert statuses and set(statuses) == {200}
    assert "unknown" not in phases
    assert {"executing", "completed"} <= set(phases)  # the jobs ran while they were polled
    assert len(latencies) >= READERS * 5
    wait_until(lambda: all_finished(base, set(job_ids)), timeout=90, interval=1.0)
