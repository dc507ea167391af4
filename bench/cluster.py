"""The Kubernetes backend on the real test control plane (scripts/testenv).

create through the service against raw POSTs of the same Job; ``?phase=`` lists over
thousands of Jobs against ``list_namespaced_job``; WAIT fan-out on a Job.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from .common import (
    CONTROLLER_QPS,
    S3_ENV,
    SERVER_ENV,
    Connection,
    ControlPlane,
    Result,
    closed_loop,
    control_plane,
    cpu_seconds,
    guarded,
    median,
    new_record,
    ocps_server,
    percentile,
    proc_status_kb,
    s3_client,
    s3_server,
)
from .local import FORM, wait_fanout, wait_verdict
from .manifests import job_manifest, kube_settings

BUCKET = "ocps-jobs"
CREATE_RATIO_GOAL = 0.75  # service create rate / raw POST rate of the same Job


class Kube:
    """Raw HTTPS to kube-apiserver with the test token (the baseline's own client)."""

    def __init__(self, plane: ControlPlane) -> None:
        address = urlsplit(plane.server)
        self.host = address.hostname or "127.0.0.1"
        self.port = address.port or 443
        self.tls = ssl.create_default_context(cafile=plane.ca_file)
        self.headers = {
            "Authorization": f"Bearer {plane.token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.plane = plane

    def connect(self) -> Connection:
        return Connection(self.port, timeout=60, host=self.host, tls=self.tls)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        connection = self.connect()
        data = None if body is None else json.dumps(body).encode()
        status, text = connection.request(method, path, data, self.headers)
        connection.close()
        return status, json.loads(text) if text else None

    def namespace(self, name: str) -> str:
        status, _ = self.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        assert status in (201, 409), status
        return name


def job_bodies(plane: ControlPlane, namespace: str, count: int, work: Path) -> list[bytes]:
    """The Job the service would create for a PENDING ``command=true`` job, ``count`` times."""
    settings = kube_settings(namespace, plane.kubeconfig, work / "k8s-bodies")
    return [job_manifest(new_record(), settings, suspend=True) for _ in range(count)]


def k8s_server(work: Path, name: str, plane: ControlPlane, namespace: str, endpoint: str) -> Any:
    return ocps_server(
        work,
        name,
        [
            "--backend",
            "kubernetes",
            "--kubeconfig",
            str(plane.kubeconfig),
            "--namespace",
            namespace,
            "--s3-endpoint",
            endpoint,
        ],
        env={**S3_ENV, **SERVER_ENV},
    )


def settle(plane: ControlPlane, timeout: float = 30.0) -> float:
    """Wait until the control plane is nearly idle (< 10% of a core); the seconds waited.

    Each side of a round then starts from a quiet plane instead of paying for the Job
    controller's and the watches' work on the other side's Jobs.
    """
    started = time.monotonic()
    window = 0.5
    while time.monotonic() - started < timeout:
        before = sum(cpu_seconds(pid) for pid in plane.pids.values())
        time.sleep(window)
        if sum(cpu_seconds(pid) for pid in plane.pids.values()) - before < 0.1 * window:
            break
    return time.monotonic() - started


def raw_create(kube: Kube, namespace: str, bodies: list[bytes], concurrency: int) -> Any:
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    return closed_loop(
        kube.port,
        len(bodies),
        concurrency,
        lambda i: ("POST", path, bodies[i], kube.headers),
        lambda status: status == 201,
        connect=kube.connect,
    )


def bench_create(work: Path, quick: bool, plane: ControlPlane, endpoint: str) -> list[Result]:
    count = 100 if quick else 250
    rounds = 3 if quick else 6
    concurrency = 4
    kube = Kube(plane)
    product_ns = kube.namespace("bench-create")
    raw_ns = kube.namespace("bench-create-raw")
    body = urlencode({"command": "true"}).encode()
    product_rates, raw_rates, product_latencies, raw_latencies = [], [], [], []
    failures = 0
    settled: list[float] = []
    with k8s_server(work, "create-k8s", plane, product_ns, endpoint) as server:
        server.start()
        server.wait_ready("/api/v1/job", want=200)
        closed_loop(server.port, 10, 2, lambda _: ("POST", "/uws/async", body, FORM))
        for _ in range(rounds):
            bodies = job_bodies(plane, raw_ns, count, work)
            settled.append(settle(plane))
            latencies, seconds, bad = raw_create(kube, raw_ns, bodies, concurrency)
            raw_rates.append(count / seconds)
            raw_latencies.extend(latencies)
            failures += bad
            settled.append(settle(plane))
            latencies, seconds, bad = closed_loop(
                server.port,
                count,
                concurrency,
                lambda _: ("POST", "/uws/async", body, FORM),
                lambda status: status == 303,
            )
            product_rates.append(count / seconds)
            product_latencies.extend(latencies)
            failures += bad
    rate, raw_rate = median(product_rates), median(raw_rates)
    p99 = percentile(product_latencies, 0.99) * 1000
    # Rounds alternate raw and service: the median of each round's own ratio is the least
    # disturbed by other load on the machine drifting between rounds.
    ratio = median([mine / raw for mine, raw in zip(product_rates, raw_rates, strict=True)])
    details = {
        "jobs_per_round": count,
        "rounds": rounds,
        "concurrency": concurrency,
        "request": "UWS POST /uws/async command=true (a suspended Job) vs raw POST of that Job",
        "service_rates": [round(r, 1) for r in product_rates],
        "raw_rates": [round(r, 1) for r in raw_rates],
        "service_p50_ms": round(median(product_latencies) * 1000, 2),
        "service_p99_ms": round(p99, 2),
        "raw_p50_ms": round(median(raw_latencies) * 1000, 2),
        "raw_p99_ms": round(percentile(raw_latencies, 0.99) * 1000, 2),
        "failures": failures,
        "settle_seconds_max": round(max(settled), 2),
        "controller_qps": CONTROLLER_QPS,
        "ratio_meaning": "median over rounds of service rate / raw rate (higher is better)",
    }
    return [
        Result(
            "create_k8s_rate",
            rate,
            "jobs/s",
            raw_rate,
            f">={CREATE_RATIO_GOAL}x raw POST rate, p99<=100ms",
            ratio >= CREATE_RATIO_GOAL and p99 <= 100 and failures == 0,
            ratio=ratio,
            details=details,
        )
    ]


def bench_wait(work: Path, quick: bool, plane: ControlPlane, endpoint: str) -> list[Result]:
    kube = Kube(plane)
    namespace = kube.namespace("bench-wait")
    idle = 3.0 if quick else 10.0
    with k8s_server(work, "wait-k8s", plane, namespace, endpoint) as server:
        server.start()
        server.wait_ready("/api/v1/job", want=200)
        stats = wait_fanout(server, 200, idle)
    return [wait_verdict("wait_fanout_k8s", stats)]


def _fill(kube: Kube, namespace: str, count: int, work: Path) -> float:
    started = time.perf_counter()
    made = 0
    while made < count:
        batch = min(2000, count - made)
        bodies = job_bodies(kube.plane, namespace, batch, work)
        _, _, failures = raw_create(kube, namespace, bodies, 8)
        assert failures == 0, f"{failures} Job creations failed"
        made += batch
    return time.perf_counter() - started


def bench_list(work: Path, quick: bool, plane: ControlPlane, endpoint: str) -> list[Result]:
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    count = 2000 if quick else 10_000
    rounds = 3
    kube = Kube(plane)
    namespace = kube.namespace("bench-list")
    fill_seconds = _fill(kube, namespace, count, work)
    settle_seconds = settle(plane, timeout=120)  # the Job controller's status on every Job
    api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(plane.kubeconfig)
    )
    batch = k8s.BatchV1Api(api)
    timings: dict[str, list[float]] = {"baseline": [], "pending": [], "executing": []}
    sizes: dict[str, int] = {}
    with k8s_server(work, "list-k8s", plane, namespace, endpoint) as server:
        server.start()
        server.wait_ready("/api/v1/openapi.json", want=200, timeout=120)
        connection = Connection(server.port, timeout=120)
        # The first list reads the API (and starts the watches); later ones the watched copy.
        started = time.perf_counter()
        status, _ = connection.request("GET", "/api/v1/job?phase=executing")
        first = time.perf_counter() - started
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = time.perf_counter()
            connection.request("GET", "/api/v1/job?phase=executing")
            if time.perf_counter() - started < first / 3:
                break
            time.sleep(0.5)
        for _ in range(rounds):
            started = time.perf_counter()
            listed = batch.list_namespaced_job(namespace)
            timings["baseline"].append(time.perf_counter() - started)
            sizes["baseline"] = len(listed.items)
            del listed
            for phase in ("pending", "executing"):
                started = time.perf_counter()
                status, data = connection.request("GET", f"/api/v1/job?phase={phase}")
                timings[phase].append(time.perf_counter() - started)
                assert status == 200, status
                sizes[phase] = len(json.loads(data))
        connection.close()
        rss_mb = proc_status_kb(server.pid, "VmRSS") / 1024
    api.close()
    baseline = median(timings["baseline"])
    results = []
    for phase in ("pending", "executing"):
        value = median(timings[phase])
        ratio = baseline / value
        results.append(
            Result(
                f"list_k8s_phase_{phase}",
                value,
                "s",
                baseline,
                "<=0.5s and >=5x faster than list_namespaced_job",
                value <= 0.5 and ratio >= 5 and sizes["baseline"] == count,
                ratio=ratio,
                details={
                    "jobs_in_namespace": count,
                    "jobs_returned": sizes[phase],
                    "fill_seconds": round(fill_seconds, 1),
                    "settle_seconds_after_fill": round(settle_seconds, 1),
                    "first_list_s_before_watch_synced": round(first, 3),
                    "server_vmrss_mb_after": round(rss_mb, 1),
                    "rounds": rounds,
                    "service_runs": [round(t, 3) for t in timings[phase]],
                    "baseline_runs": [round(t, 3) for t in timings["baseline"]],
                    "request": f"GET /api/v1/job?phase={phase} (suspended Jobs are pending)",
                    "ratio_meaning": "baseline seconds / service seconds (higher is better)",
                },
            )
        )
    return results


def run(work: Path, quick: bool) -> Iterator[Result]:
    with s3_server(work) as s3, control_plane(work) as plane:
        endpoint = s3.url
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield from guarded("create_k8s_rate", lambda: bench_create(work, quick, plane, endpoint))
        yield from guarded("wait_fanout_k8s", lambda: bench_wait(work, quick, plane, endpoint))
        yield from guarded("list_k8s", lambda: bench_list(work, quick, plane, endpoint))
