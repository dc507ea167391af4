"""list_history_100k: UWS LAST=100 over 100,000 archived jobs whose Kubernetes Job is gone."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from .cluster import BUCKET, Kube, k8s_server
from .common import (
    Connection,
    ControlPlane,
    Result,
    control_plane,
    guarded,
    median,
    proc_status_kb,
    s3_client,
    s3_kind,
    s3_server,
)

ROUNDS = 15
# The server's resident memory may grow by at most this much from a tenth of the archived
# jobs to all of them (an in-memory list of every archived record would be ~1 KB per job).
MEMORY_GROWTH_LIMIT_MB = 20.0
LAST = 100


def _fill(endpoint: str, first: int, count: int, start: Any) -> None:
    """Archive jobs ``first..count-1`` as the uploader does: job.json, then its history entries.

    Creation times one second apart, from ``start``: the newest job is the last written.
    """
    from ocps_jobs.conventions import archive_key
    from ocps_jobs.models import JobParameters, JobRecord, Phase
    from ocps_jobs.objectstore.history import HistoryIndex
    from ocps_jobs.objectstore.s3 import S3Store

    store = S3Store(BUCKET, endpoint, client=s3_client(endpoint))
    index = HistoryIndex(store)

    def archive(number: int) -> None:
        created = start + timedelta(seconds=number)
        job_id = uuid.uuid4().hex
        record = JobRecord(
            job_id=job_id,
            run_id=job_id,
            owner="",
            parameters=JobParameters(command="true"),
            creation_time=created,
            phase=Phase.COMPLETED,
            start_time=created,
            end_time=created + timedelta(seconds=1),
            results=[],
        )
        store.put_bytes(archive_key(record.job_id), record.model_dump_json().encode(), "x")
        index.add(record.job_id, record.owner, record.creation_time, None)

    with ThreadPoolExecutor(max_workers=32) as pool:
        for _ in pool.map(archive, range(first, count), chunksize=64):
            pass


def _scan_everything(endpoint: str) -> tuple[float, int]:
    """The baseline: what a list without an index cursor pays, one listing of every entry."""
    from ocps_jobs.objectstore.history import HISTORY_ROOT

    client = s3_client(endpoint)
    started = time.perf_counter()
    keys = 0
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=HISTORY_ROOT + "all/"
    ):
        keys += len(page.get("Contents", []))
    return time.perf_counter() - started, keys


def _measure(connection: Connection) -> tuple[float, list[float], int]:
    """First and later ``GET /uws/async?LAST=100`` times; jobs in the last answer."""
    timings = []
    jobs = 0
    for _ in range(ROUNDS):
        started = time.perf_counter()
        status, data = connection.request("GET", f"/uws/async?LAST={LAST}")
        timings.append(time.perf_counter() - started)
        assert status == 200, status
        jobs = data.count(b"<uws:jobref ")
    return timings[0], timings[1:], jobs


def bench_history(work: Path, quick: bool, plane: ControlPlane, endpoint: str) -> list[Result]:
    from ocps_jobs.models import utcnow

    count = 10_000 if quick else 100_000
    tenth = count // 10
    namespace = Kube(plane).namespace("bench-history")
    start = utcnow() - timedelta(days=30)
    fill_started = time.perf_counter()
    _fill(endpoint, 0, tenth, start)
    fills = [time.perf_counter() - fill_started]
    with k8s_server(work, "history-k8s", plane, namespace, endpoint) as server:
        server.start()
        server.wait_ready("/api/v1/openapi.json", want=200, timeout=120)
        connection = Connection(server.port, timeout=120)
        first_small, _, _ = _measure(connection)
        rss_small_mb = proc_status_kb(server.pid, "VmRSS") / 1024
        fill_started = time.perf_counter()
        _fill(endpoint, tenth, count, start)
        fills.append(time.perf_counter() - fill_started)
        first, timings, jobs = _measure(connection)
        rss_mb = proc_status_kb(server.pid, "VmRSS") / 1024
        connection.close()
    baseline, keys = _scan_everything(endpoint)
    value = median(timings)
    growth = rss_mb - rss_small_mb
    return [
        Result(
            "list_history_100k",
            value,
            "s",
            baseline,
            f"<=0.3s and memory growth <={MEMORY_GROWTH_LIMIT_MB:g}MB from {tenth} to {count}",
            value <= 0.3
            and first <= 0.3
            and growth <= MEMORY_GROWTH_LIMIT_MB
            and jobs == LAST
            and keys == count,
            ratio=baseline / value,
            details={
                "archived_jobs": count,
                "store": f"{s3_kind()} S3 endpoint",
                "request": f"GET /uws/async?LAST={LAST} (every Job gone: all from the history)",
                "first_request_s": round(first, 3),
                "first_request_s_at_a_tenth": round(first_small, 3),
                "later_runs": [round(t, 3) for t in timings],
                "server_vmrss_mb_at_a_tenth": round(rss_small_mb, 1),
                "server_vmrss_mb_at_all": round(rss_mb, 1),
                "fill_seconds": [round(t, 1) for t in fills],
                "baseline": "one listing of every history entry (boto3 paginator), no records",
                "ratio_meaning": "baseline seconds / service seconds (higher is better)",
            },
        )
    ]


def run(work: Path, quick: bool) -> Iterator[Result]:
    with s3_server(work) as s3, control_plane(work) as plane:
        s3_client(s3.url).create_bucket(Bucket=BUCKET)
        yield from guarded("list_history_100k", lambda: bench_history(work, quick, plane, s3.url))
