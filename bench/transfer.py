"""Result download through the API and sidecar upload, each against boto3 on the same S3."""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

from .common import (
    FUNCTIONS,
    PYTHON,
    ROOT,
    S3_ENV,
    SERVER_ENV,
    Result,
    Server,
    cpu_seconds,
    function_server,
    guarded,
    median,
    new_record,
    ocps_server,
    proc_status_kb,
    process_tree,
    s3_client,
    s3_kind,
    s3_server,
)

MIB = 1024 * 1024
BUCKET = "ocps-jobs"

BLOCK = random.Random(1).randbytes(MIB)


def write_file(path: Path, size: int) -> None:
    """A file of ``size`` bytes (a repeated random block: not compressible per block)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        left = size
        while left > 0:
            out.write(BLOCK[: min(left, MIB)])
            left -= MIB


def _empty_bucket(client: Any, prefix: str = "") -> None:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


# --- download ------------------------------------------------------------------------------


def _seed_job(data_dir: Path, key: str, size: int) -> str:
    """A finished job record whose one result is ``key``, as the embedded backend keeps it."""
    from ocps_jobs.models import Phase, ResultFile

    record = new_record(
        phase=Phase.COMPLETED,
        results=[ResultFile(key=key, size=size, content_type="application/octet-stream")],
    )
    state = data_dir / "state" / "jobs"
    state.mkdir(parents=True, exist_ok=True)
    (state / f"{record.job_id}.json").write_text(record.model_dump_json(indent=1))
    return record.job_id


def _http_download(port: int, path: str) -> tuple[int, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    assert response.status == 200, response.status
    buffer = bytearray(MIB)
    view = memoryview(buffer)
    total = 0
    while read := response.readinto(view):
        total += read
    seconds = time.perf_counter() - started
    connection.close()
    return total, seconds


def _boto_download(client: Any, key: str) -> tuple[int, float]:
    started = time.perf_counter()
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
    total = 0
    for chunk in body.iter_chunks(MIB):
        total += len(chunk)
    return total, time.perf_counter() - started


# The results function served two ways: as Knative runs it, and as a laptop runs everything.
DOWNLOAD_SERVERS = {
    "function": "results function, functions-framework CLI (gunicorn gthread), as on Knative",
    "serve": "ocps-jobs serve (all functions in one waitress process), the embedded default",
}
# Each server's goal as a fraction of a direct boto3 GET: the embedded default stays one
# waitress process, which copies every byte through its output buffer.
DOWNLOAD_GOALS = {"function": 0.8, "serve": 0.7}


def _download_server(
    work: Path, kind: str, size: int, endpoint: str, key: str
) -> tuple[Server, str]:
    """The server of ``kind`` on its own data dir holding one finished job; the job's ID."""
    name = f"download-{kind}-{size // MIB}m"
    data_dir = work / f"{name}-data"  # ocps_server's data dir for ``name``
    job_id = _seed_job(data_dir, key, size)
    if kind == "serve":
        server = ocps_server(work, name, ["--s3-endpoint", endpoint], env={**S3_ENV, **SERVER_ENV})
        return server, job_id
    env = {**S3_ENV, **SERVER_ENV, "OCPS_DATA_DIR": str(data_dir), "OCPS_S3_ENDPOINT": endpoint}
    return function_server(work, "results", FUNCTIONS / "results" / "main.py", name, env), job_id


def _peak_rss_kb(server: Server) -> int:
    """The largest VmHWM in the server's process tree (gunicorn's worker, not its arbiter).

    A child that has exited and is not yet reaped (a job's process, a sandbox probe) has no
    memory lines: it counts as nothing.
    """
    peaks = [0]
    for pid in process_tree(server.pid):
        with suppress(KeyError, OSError):
            peaks.append(proc_status_kb(pid, "VmHWM"))
    return max(peaks)


def bench_download(work: Path, quick: bool, endpoint: str) -> list[Result]:
    sizes = [64 * MIB, 256 * MIB] if quick else [256 * MIB, 1024 * MIB]
    # Five rounds at both sizes: a quick round is short, and with a median of three one
    # disturbed round could decide the verdict.
    rounds = 5
    client = s3_client(endpoint)
    per_size: dict[int, dict[str, dict[str, Any]]] = {}
    for size in sizes:
        key = f"jobs/bench-download/out/result-{size // MIB}m.bin"
        source = work / f"download-{size}.bin"
        write_file(source, size)
        client.upload_file(str(source), BUCKET, key)
        source.unlink()
        started = {
            kind: _download_server(work, kind, size, endpoint, key) for kind in DOWNLOAD_SERVERS
        }
        servers = {kind: server for kind, (server, _) in started.items()}
        jobs = {kind: job_id for kind, (_, job_id) in started.items()}
        paths = {kind: f"/api/v1/job/result/{job_id}/0" for kind, job_id in jobs.items()}
        runs: dict[str, list[float]] = {"boto3": [], **{kind: [] for kind in servers}}
        idle: dict[str, int] = {}
        try:
            for kind, server in servers.items():
                server.start()
                server.wait_ready(f"/api/v1/job/{jobs[kind]}/results", want=200)
                idle[kind] = _peak_rss_kb(server)
            # Not measured: the first read after the upload (the store can serve it from its
            # cache) and each server's first download (its S3 client starts on first use).
            # Then each round downloads once directly and once through each server, in an
            # order that rotates so that no side always goes first.
            _boto_download(client, key)
            for kind, server in servers.items():
                _http_download(server.port, paths[kind])
            sides = ["boto3", *servers]
            for round_index in range(rounds):
                shift = round_index % len(sides)
                for side in sides[shift:] + sides[:shift]:
                    if side == "boto3":
                        got, seconds = _boto_download(client, key)
                    else:
                        got, seconds = _http_download(servers[side].port, paths[side])
                    assert got == size, (side, got, size)
                    runs[side].append(size / seconds / MIB)
            peaks = {kind: _peak_rss_kb(server) for kind, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
        # The median of each round's own ratio: the rounds are side by side, so other load
        # on the machine disturbs both sides of a round alike; every run is in the details.
        per_size[size] = {
            kind: {
                "api_mib_s": round(median(runs[kind]), 1),
                "boto3_mib_s": round(median(runs["boto3"]), 1),
                "ratio": round(
                    median(
                        [mine / raw for mine, raw in zip(runs[kind], runs["boto3"], strict=True)]
                    ),
                    3,
                ),
                "api_runs": [round(value, 1) for value in runs[kind]],
                "boto3_runs": [round(value, 1) for value in runs["boto3"]],
                "server_vmhwm_mb": round(peaks[kind] / 1024, 1),
                "server_vmhwm_before_download_mb": round(idle[kind] / 1024, 1),
            }
            for kind in servers
        }
        client.delete_object(Bucket=BUCKET, Key=key)
    results = []
    for kind, server_name in DOWNLOAD_SERVERS.items():
        large, small = per_size[sizes[-1]][kind], per_size[sizes[0]][kind]
        ratio = large["ratio"]
        growth = large["server_vmhwm_mb"] - small["server_vmhwm_mb"]
        peak_mb = max(entry[kind]["server_vmhwm_mb"] for entry in per_size.values())
        details = {
            "server": server_name,
            "sizes_mib": [size // MIB for size in sizes],
            "per_size": {f"{size // MIB}MiB": value[kind] for size, value in per_size.items()},
            "vmhwm_growth_mb_between_sizes": round(growth, 1),
            "client": "http.client readinto 1 MiB vs boto3 get_object iter_chunks 1 MiB",
            "endpoint": s3_kind(),
            "ratio_meaning": "median over rounds of API MiB/s / boto3 MiB/s (higher is better)",
        }
        suffix = "_function" if kind == "function" else ""
        goal = DOWNLOAD_GOALS[kind]
        results.append(
            Result(
                f"download_{sizes[-1] // MIB}MiB{suffix}",
                large["api_mib_s"],
                "MiB/s",
                large["boto3_mib_s"],
                f">={goal}x boto3 GET, server VmHWM<=150MB and flat (+<=20MB) between sizes",
                ratio >= goal and peak_mb <= 150 and growth <= 20,
                ratio=ratio,
                details=details,
            )
        )
    return results


# --- upload --------------------------------------------------------------------------------


def make_outputs(root: Path, small_files: int, big_size: int) -> int:
    """A pipeline's outputs: many small files in nested folders and one big file."""
    chooser = random.Random(2)
    total = 0
    for index in range(small_files):
        size = chooser.randint(512, 32 * 1024)
        path = root / f"visit{index % 10:02d}" / f"det{index % 7}" / f"calexp_{index:05d}.fits"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(BLOCK[:size])
        total += size
    write_file(root / "coadd" / "deep_coadd.fits", big_size)
    return total + big_size


def _worker(
    mode: str, endpoint: str, folder: Path, job_id: str, s3_pid: int | None = None
) -> dict[str, Any]:
    """One upload in a fresh process; with ``s3_pid``, also the S3 server's CPU meanwhile."""
    server_cpu = cpu_seconds(s3_pid) if s3_pid else 0.0
    environment = {**os.environ, **S3_ENV, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [PYTHON, "-m", "bench.upload_worker", mode, endpoint, BUCKET, str(folder), job_id],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"upload worker {mode} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if s3_pid:
        result["s3_server_cpu_s"] = round(cpu_seconds(s3_pid) - server_cpu, 2)
    return result


# The boto3 configurations the uploader is measured against, in the same run and endpoint.
BOTO3_UPLOADS = {
    "sequential": "upload_file per file, default configuration",
    "transfer": "one transfer manager, 16 concurrent transfers across files, 8 MiB parts",
}
UPLOAD_BEST_GOAL = 0.9  # uploader speed / the best boto3 configuration's
SMALL_FILES_GOAL = 2.0  # uploader speed / sequential upload_file, small files alone
PEAK_RSS_GOAL_MB = 200
UPLOAD_ROUNDS = 3  # quick and full: each a side-by-side round of every configuration


def bench_upload(work: Path, quick: bool, endpoint: str, s3_pid: int | None = None) -> list[Result]:
    small = 1000 if not quick else 300
    big = 1024 * MIB if not quick else 256 * MIB
    # Several rounds at every size: one round's verdict depended on the machine's load in
    # that round. Each round runs every side once, in an order that rotates.
    rounds = UPLOAD_ROUNDS
    folder = work / "upload-outputs"
    total = make_outputs(folder, small, big)
    client = s3_client(endpoint)
    product: list[dict[str, Any]] = []
    baselines: dict[str, list[dict[str, Any]]] = {mode: [] for mode in BOTO3_UPLOADS}
    # The small files alone, to tell their share from the big file's.
    only_small = work / "upload-small-only"
    make_outputs(only_small, small, 0)
    (only_small / "coadd" / "deep_coadd.fits").unlink()
    small_runs: dict[str, list[float]] = {"sequential": [], "uploader": []}
    for round_index in range(rounds):
        order = list(small_runs)[round_index % 2 :] + list(small_runs)[: round_index % 2]
        for mode in order:
            small_runs[mode].append(_worker(mode, endpoint, only_small, "s")["seconds"])
            _empty_bucket(client, "baseline/" if mode == "sequential" else "jobs/s/")
    # Not measured: a first upload of the whole folder. The S3 server's first one after the
    # small files' rounds costs it more CPU than the others, whichever side runs it.
    warm_up = _worker("transfer", endpoint, folder, "warm-up", s3_pid)
    _empty_bucket(client, "baseline/")
    sides = ["uploader", *BOTO3_UPLOADS]
    for round_index in range(rounds):
        job_id = uuid.uuid4().hex
        shift = round_index % len(sides)
        for mode in sides[shift:] + sides[:shift]:
            if mode == "uploader":
                product.append(_worker("uploader", endpoint, folder, job_id, s3_pid))
                _empty_bucket(client, f"jobs/{job_id}/")
            else:
                baselines[mode].append(_worker(mode, endpoint, folder, job_id, s3_pid))
                _empty_bucket(client, "baseline/")
    seconds = median([entry["seconds"] for entry in product])
    boto3_seconds = {
        mode: median([entry["seconds"] for entry in runs]) for mode, runs in baselines.items()
    }
    best_mode = min(boto3_seconds, key=lambda mode: boto3_seconds[mode])
    best_seconds = boto3_seconds[best_mode]
    peak_mb = max(entry["peak_rss_kb"] for entry in product) / 1024
    # The median of each round's own ratio against the best configuration (the one whose
    # median is lowest), as for the downloads: a round's sides share that round's load.
    ratio = median(
        [
            raw["seconds"] / mine["seconds"]
            for mine, raw in zip(product, baselines[best_mode], strict=True)
        ]
    )
    small_ratio = median(
        [
            raw / mine
            for mine, raw in zip(small_runs["uploader"], small_runs["sequential"], strict=True)
        ]
    )
    details = {
        "small_files": small,
        "big_file_mib": big // MIB,
        "total_mib": round(total / MIB, 1),
        "uploader_runs": product,
        **{f"{mode}_runs": runs for mode, runs in baselines.items()},
        "boto3_configurations": BOTO3_UPLOADS,
        "boto3_seconds": {mode: round(value, 2) for mode, value in boto3_seconds.items()},
        "best_boto3": best_mode,
        "uploader_peak_rss_mb": round(peak_mb, 1),
        **{
            f"{mode}_peak_rss_mb": round(max(e["peak_rss_kb"] for e in runs) / 1024, 1)
            for mode, runs in baselines.items()
        },
        "small_only_ratio": round(small_ratio, 2),
        "rounds": rounds,
        "warm_up_run": warm_up,
        "ratio_meaning": (
            "median over rounds of best boto3 configuration seconds / uploader seconds "
            "(higher is better)"
        ),
        "endpoint": s3_kind(),
        "small_only_sequential_s": round(median(small_runs["sequential"]), 2),
        "small_only_uploader_s": round(median(small_runs["uploader"]), 2),
        "small_only_runs": {mode: [round(v, 2) for v in runs] for mode, runs in small_runs.items()},
    }
    return [
        Result(
            "sidecar_upload",
            seconds,
            "s",
            best_seconds,
            f">={UPLOAD_BEST_GOAL}x best boto3 (transfer manager 16x8MiB or sequential), "
            f"small files >={SMALL_FILES_GOAL:g}x sequential upload_file, "
            f"peak RSS<={PEAK_RSS_GOAL_MB}MB",
            ratio >= UPLOAD_BEST_GOAL
            and small_ratio >= SMALL_FILES_GOAL
            and peak_mb <= PEAK_RSS_GOAL_MB,
            ratio=ratio,
            details=details,
        )
    ]


def run(work: Path, quick: bool) -> Iterator[Result]:
    with s3_server(work) as s3:
        s3_client(s3.url).create_bucket(Bucket=BUCKET)
        yield from guarded("download", lambda: bench_download(work, quick, s3.url))
        yield from guarded("sidecar_upload", lambda: bench_upload(work, quick, s3.url, s3.pid))
