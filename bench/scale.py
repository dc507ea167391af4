"""The Kubernetes backend's live view at scale: memory per watched Job, first list before sync.

Thousands of Jobs as the OCPS CSC's ``PUT /api/v1/job`` makes them (started, pods kept
Running on the fake nodes, so every one is ``executing``), created by parallel raw POSTs of
the manifests the library builds, then read through ``ocps-jobs serve --backend kubernetes``.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .cluster import BUCKET, Kube, k8s_server, raw_create, settle
from .common import (
    Connection,
    ControlPlane,
    Result,
    control_plane,
    guarded,
    proc_status_kb,
    s3_client,
    s3_server,
)
from .manifests import KEEP_RUNNING, csc_record, job_manifest, kube_settings

__all__ = ["run"]

FULL_JOBS = 10_000
QUICK_JOBS = 1_000
KB_PER_JOB_GOAL = 5.0
FIRST_LIST_GOAL_S = 1.0
EXECUTING = "/api/v1/job?phase=executing"
LIST_TIMEOUT_S = 600  # a list's response on a loaded machine


def _fill(kube: Kube, namespace: str, count: int, work: Path) -> float:
    """``count`` started CSC-shaped Jobs in ``namespace`` by parallel raw POSTs; seconds."""
    settings = kube_settings(namespace, kube.plane.kubeconfig, work / "scale-bodies", KEEP_RUNNING)
    started = time.perf_counter()
    made = 0
    while made < count:
        batch = min(2000, count - made)
        bodies = [job_manifest(csc_record(made + i), settings, suspend=False) for i in range(batch)]
        _, _, failures = raw_create(kube, namespace, bodies, 8)
        assert failures == 0, f"{failures} Job creations failed"
        made += batch
    return time.perf_counter() - started


def _listed(connection: Connection) -> tuple[int, float]:
    """How many jobs ``GET ?phase=executing`` returns, and its seconds."""
    started = time.perf_counter()
    status, data = connection.request("GET", EXECUTING)
    seconds = time.perf_counter() - started
    assert status == 200, status
    return len(json.loads(data)), seconds


def _wait_listed(connection: Connection, count: int, timeout: float) -> float:
    """Poll the list until it shows ``count`` executing jobs; the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if _listed(connection)[0] >= count:
            return time.monotonic() - started
        time.sleep(1.0)
    raise TimeoutError(f"fewer than {count} executing jobs listed after {timeout} s")


def _measured_at(count: int, goal: str = "") -> str:
    """What a goal says when its line ran at fewer Jobs than its name (``--quick``)."""
    return "" if count == FULL_JOBS else f" (measured at {count} Jobs{goal})"


def bench_memory(
    work: Path, count: int, plane: ControlPlane, endpoint: str, namespace: str
) -> list[Result]:
    """One server watches ``namespace`` from empty to ``count`` Jobs: VmRSS growth per Job."""
    kube = Kube(plane)
    details: dict[str, Any] = {"jobs": count, "job_shape": "CSC PUT /api/v1/job, started"}
    with k8s_server(work, "scale-memory", plane, namespace, endpoint) as server:
        server.start()
        server.wait_ready("/api/v1/openapi.json", want=200, timeout=120)
        connection = Connection(server.port, timeout=LIST_TIMEOUT_S)
        _listed(connection)  # starts the watches; then they have synced an empty namespace
        time.sleep(2.0)
        _listed(connection)
        empty_kb = proc_status_kb(server.pid, "VmRSS")
        details["fill_seconds"] = round(_fill(kube, namespace, count, work), 1)
        caught_up = _wait_listed(connection, count, 300 if count < FULL_JOBS else 1800)
        details["watch_caught_up_seconds"] = round(caught_up, 1)
        details["settle_seconds"] = round(settle(plane, timeout=120), 1)
        watched_kb = proc_status_kb(server.pid, "VmRSS")
        runs = [_listed(connection) for _ in range(3)]
        listed_kb = proc_status_kb(server.pid, "VmRSS")
        details["synced_list_seconds"] = [round(seconds, 3) for _, seconds in runs]
        details["vmhwm_mb"] = round(proc_status_kb(server.pid, "VmHWM") / 1024, 1)
        connection.close()
    details["vmrss_mb"] = {
        "empty_namespace": round(empty_kb / 1024, 1),
        "watched": round(watched_kb / 1024, 1),
        "after_lists": round(listed_kb / 1024, 1),
    }
    per_job_kb = (listed_kb - empty_kb) / count
    details["kb_per_job_watched_only"] = round((watched_kb - empty_kb) / count, 2)
    details["meaning"] = (
        "VmRSS after the Jobs are watched and listed 3 times minus VmRSS on the empty "
        "namespace, divided by the Jobs"
    )
    return [
        Result(
            "watch_memory_10k",
            per_job_kb,
            "KB/Job",
            None,
            f"<={KB_PER_JOB_GOAL:g}KB per Job watched (VmRSS growth){_measured_at(count)}",
            per_job_kb <= KB_PER_JOB_GOAL,
            details=details,
        )
    ]


def bench_first_list(
    work: Path, count: int, plane: ControlPlane, endpoint: str, namespace: str
) -> list[Result]:
    """A fresh server's first list over ``count`` Jobs, while its watches first list them."""
    gc.collect()
    details: dict[str, Any] = {"jobs": count, "job_shape": "CSC PUT /api/v1/job, started"}
    details["settle_seconds"] = round(settle(plane, timeout=120), 1)
    with k8s_server(work, "scale-first-list", plane, namespace, endpoint) as server:
        server.start()
        server.wait_ready("/api/v1/openapi.json", want=200, timeout=120)
        connection = Connection(server.port, timeout=LIST_TIMEOUT_S)
        first_count, first = _listed(connection)
        second_count, second = _listed(connection)
        connection.close()
        details["server_vmrss_mb_after_two_lists"] = round(
            proc_status_kb(server.pid, "VmRSS") / 1024, 1
        )
    details["first_list_jobs"] = first_count
    details["second_list_seconds"] = round(second, 3)
    first_goal = FIRST_LIST_GOAL_S * count / FULL_JOBS  # linear in the Jobs listed
    return [
        Result(
            "first_list_10k",
            first,
            "s",
            None,
            f"<={FIRST_LIST_GOAL_S:g}s per {FULL_JOBS} Jobs for GET ?phase=executing before "
            f"the watch synced{_measured_at(count, f'; goal scaled: {first_goal:g}s')}",
            first <= first_goal and first_count == count and second_count == count,
            details=details,
        )
    ]


# The fake node's allocatable: room for every Job's pod (0.6 CPU and 1.1 GiB requested each).
ROOMY_NODE = {
    "OCPS_TESTENV_NODE_CPU": "20000",
    "OCPS_TESTENV_NODE_MEMORY": "40Ti",
    "OCPS_TESTENV_NODE_PODS": str(2 * FULL_JOBS),
}


def run(work: Path, quick: bool) -> Iterator[Result]:
    with s3_server(work) as s3, control_plane(work, "testenv-scale", ROOMY_NODE) as plane:
        s3_client(s3.url).create_bucket(Bucket=BUCKET)
        namespace = Kube(plane).namespace("bench-scale")
        count = QUICK_JOBS if quick else FULL_JOBS
        yield from guarded(
            "watch_memory_10k", lambda: bench_memory(work, count, plane, s3.url, namespace)
        )
        yield from guarded(
            "first_list_10k", lambda: bench_first_list(work, count, plane, s3.url, namespace)
        )
