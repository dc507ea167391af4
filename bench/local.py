"""Embedded backend: create latency and rate, CSC-style GET polling, WAIT fan-out."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .common import (
    Connection,
    Result,
    Server,
    closed_loop,
    cpu_seconds,
    guarded,
    median,
    ocps_server,
    open_loop,
    percentile,
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


def create_pending(port: int, count: int, concurrency: int = 4, command: str = "true") -> list[str]:
    """``count`` PENDING jobs through UWS ``POST /uws/async``; all PENDING ids, oldest first."""
    body = urlencode({"command": command}).encode()
    _, _, failures = closed_loop(
        port, count, concurrency, lambda _: ("POST", "/uws/async", body, FORM), lambda s: s == 303
    )
    assert failures == 0, f"{failures} creates failed"
    connection = Connection(port)
    status, data = connection.request("GET", "/api/v1/job?phase=pending")
    connection.close()
    assert status == 200
    return [job["jobId"] for job in json.loads(data)]


def bench_create(work: Path, quick: bool) -> list[Result]:
    count = 600 if quick else 3000
    concurrency = 4
    results = []
    with ocps_server(work, "create-local", ["--max-concurrent-jobs", "2"]) as server:
        server.start()
        server.wait_ready("/api/v1/job", want=200)
        body = json.dumps({"command": "true"}).encode()
        # Warm up (first-request costs are the cold-start benchmark's business).
        closed_loop(server.port, 20, 2, lambda _: ("PUT", "/api/v1/job", body, JSON))
        latencies, seconds, failures = closed_loop(
            server.port, count, concurrency, lambda _: ("PUT", "/api/v1/job", body, JSON)
        )
        rate = count / seconds
        p50 = median(latencies) * 1000
        # The same path one request at a time: the latency a single client sees.
        single, _, single_failures = closed_loop(
            server.port, min(300, count), 1, lambda _: ("PUT", "/api/v1/job", body, JSON)
        )
        single_p50 = median(single) * 1000
    details: dict[str, Any] = {
        "jobs": count,
        "concurrency": concurrency,
        "request": "PUT /api/v1/job {command: true} (jobs are queued and run; 2 job slots)",
        "p50_ms_concurrent": round(p50, 2),
        "p99_ms_concurrent": round(percentile(latencies, 0.99) * 1000, 2),
        "p50_ms_single_client": round(single_p50, 2),
        "failures": failures + single_failures,
    }
    results.append(
        Result(
            "create_local_p50",
            single_p50,
            "ms",
            None,
            "<=5ms",
            single_p50 <= 5 and failures == 0,
            details=details,
        )
    )
    results.append(
        Result(
            "create_local_rate",
            rate,
            "jobs/s",
            None,
            ">=300jobs/s",
            rate >= 300 and failures == 0,
            details=details,
        )
    )
    return results


def bench_poll(work: Path, quick: bool) -> list[Result]:
    jobs = 1000
    rate = 500.0
    seconds = 6.0 if quick else 20.0
    with ocps_server(work, "poll-local", ["--max-concurrent-jobs", "2"]) as server:
        server.start()
        server.wait_ready("/api/v1/job", want=200)
        ids = create_pending(server.port, jobs)
        # Warm up the connection pool and caches.
        open_loop(server.port, 200, 1.0, lambda i: f"/api/v1/job/{ids[i % len(ids)]}")
        chooser = random.Random(6)
        picks = [chooser.randrange(len(ids)) for _ in range(int(rate * seconds) + 1)]
        cpu_before = cpu_seconds(server.pid)
        stats = open_loop(server.port, rate, seconds, lambda i: f"/api/v1/job/{ids[picks[i]]}")
        stats["server_cpu_per_request_ms"] = round(
            (cpu_seconds(server.pid) - cpu_before) / stats["requests"] * 1000, 3
        )
    stats["jobs"] = jobs
    stats["rate"] = rate
    stats["seconds"] = seconds
    stats["generator"] = "open loop, 48 keep-alive connections, latency from scheduled send"
    passed = stats["p99_ms"] <= 20 and stats["achieved_rate"] >= rate * 0.97
    passed = passed and stats["failures"] == 0
    return [
        Result(
            "get_job_poll_p99",
            stats["p99_ms"],
            "ms",
            None,
            "p99<=20ms at>=500req/s",
            passed,
            details={k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()},
        )
    ]


def _run(server: Server, job_id: str) -> None:
    """PHASE=RUN on a PENDING job: the one phase change the waiters wait for."""
    status, _ = Connection(server.port, timeout=90).request(
        "POST", f"/uws/async/{job_id}/phase", b"PHASE=RUN", FORM
    )
    assert status == 303, status


def wait_fanout(
    server: Server, waiters: int, idle_seconds: float, other_path: str = "/api/v1/job"
) -> dict[str, Any]:
    """Block ``waiters`` UWS WAITs on one PENDING job, measure idle CPU, then run it.

    Reports when every waiter was answered after the change, and the server's CPU while
    they waited against the same server's CPU with nobody waiting.
    """
    job_id = create_pending(server.port, 1, concurrency=1, command="sleep 5")[-1]
    pid = server.pid
    time.sleep(1.0)
    before = cpu_seconds(pid)
    time.sleep(idle_seconds)
    idle_cpu = cpu_seconds(pid) - before

    answered: list[float] = []
    phases: list[str] = []
    lock = threading.Lock()
    sent = threading.Barrier(waiters + 1)

    def waiter() -> None:
        connection = Connection(server.port, timeout=120)
        sent.wait()
        try:
            status, data = connection.request("GET", f"/uws/async/{job_id}?WAIT=50")
            done = time.perf_counter()
            text = data.decode(errors="replace")
            phase = text.split("<uws:phase>", 1)[1].split("<", 1)[0] if status == 200 else "?"
        except OSError as error:
            done, phase = time.perf_counter(), f"error {error}"
        finally:
            connection.close()
        with lock:
            answered.append(done)
            phases.append(phase)

    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(waiters)]
    for thread in threads:
        thread.start()
    sent.wait()
    time.sleep(3.0)  # every waiter is in (or queued for) its WAIT
    early = len(answered)
    before = cpu_seconds(pid)
    time.sleep(idle_seconds)
    waiting_cpu = cpu_seconds(pid) - before
    # Is the server still answering others while the waiters hold their requests?
    probe = Connection(server.port, timeout=10)
    probe_started = time.perf_counter()
    try:
        probe_status, _ = probe.request("GET", other_path)
    except OSError:
        probe_status = 0  # no answer within 10 s: every worker thread is held by a WAIT
    probe_ms = (time.perf_counter() - probe_started) * 1000
    probe.close()

    changed = time.perf_counter()
    _run(server, job_id)
    for thread in threads:
        thread.join(timeout=70)
    last = max(answered) - changed if answered else float("nan")
    after = sorted(done - changed for done in answered)
    changed_phases = sorted({phase for phase in phases})
    return {
        "waiters": waiters,
        "answered": len(answered),
        "answered_before_change": early,
        "phases_seen": changed_phases,
        "last_answer_after_change_s": round(last, 3),
        "answer_after_change_p50_p90_s": [
            round(percentile(after, 0.5), 3) if after else None,
            round(percentile(after, 0.9), 3) if after else None,
        ],
        "idle_seconds": idle_seconds,
        "server_cpu_idle_no_waiters_s": round(idle_cpu, 3),
        "server_cpu_idle_with_waiters_s": round(waiting_cpu, 3),
        "other_request_while_waiting_ms": round(probe_ms, 1),
        "other_request_status": probe_status,
    }


def wait_verdict(name: str, stats: dict[str, Any]) -> Result:
    extra_cpu = stats["server_cpu_idle_with_waiters_s"] - stats["server_cpu_idle_no_waiters_s"]
    per_second = max(0.0, extra_cpu) / stats["idle_seconds"]
    stats["extra_cpu_fraction_of_a_core"] = round(per_second, 4)
    passed = (
        stats["answered"] == stats["waiters"]
        and stats["answered_before_change"] == 0
        and "PENDING" not in stats["phases_seen"]
        and stats["last_answer_after_change_s"] <= 1.0
        and per_second <= 0.01
        and stats["other_request_while_waiting_ms"] <= 1000
    )
    return Result(
        name,
        stats["last_answer_after_change_s"],
        "s",
        stats["server_cpu_idle_no_waiters_s"],
        "all<=1s after change; idle CPU with waiters <= no waiters + 1% core",
        passed,
        ratio=None,
        details=stats,
    )


def bench_wait(work: Path, quick: bool) -> list[Result]:
    waiters = 200
    idle = 3.0 if quick else 10.0
    with ocps_server(work, "wait-local", ["--max-concurrent-jobs", "2"]) as server:
        server.start()
        server.wait_ready("/api/v1/job", want=200)
        stats = wait_fanout(server, waiters, idle)
    return [wait_verdict("wait_fanout_local", stats)]


def run(work: Path, quick: bool) -> Iterator[Result]:
    yield from guarded("create_local", lambda: bench_create(work, quick))
    yield from guarded("get_job_poll", lambda: bench_poll(work, quick))
    yield from guarded("wait_fanout_local", lambda: bench_wait(work, quick))
