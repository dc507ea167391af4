"""Cold start: process start -> first 200, per function, against a bare Flask function."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

from .common import FUNCTIONS, Result, Server, function_server, median

BARE = Path(__file__).resolve().parent / "bare_flask" / "main.py"


def _first_200(port: int, method: str, path: str, body: bytes | None, started: float) -> float:
    headers = {"Content-Type": "application/json"} if body else {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            connection.close()
            if response.status == 200:
                return time.perf_counter() - started
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
            time.sleep(0.003)
    raise TimeoutError(path)


def _start(work: Path, target: str, source: Path, data_dir: Path, tag: str) -> Server:
    env = {"OCPS_DATA_DIR": str(data_dir), "OCPS_MAX_CONCURRENT_JOBS": "1"}
    return function_server(work, target, source, f"coldstart-{tag}", env)


def run(work: Path, quick: bool) -> list[Result]:
    rounds = 4 if quick else 9
    data_dir = work / "coldstart-data"
    # One job in the data dir, so that query_job and results have something to answer 200 for.
    server = _start(work, "create_job", FUNCTIONS / "create_job" / "main.py", data_dir, "seed")
    server.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                connection.request(
                    "PUT",
                    "/api/v1/job",
                    body=b'{"command": "true"}',
                    headers={"Content-Type": "application/json"},
                )
                job_id = json.loads(connection.getresponse().read())["jobId"]
                break
            except (ConnectionRefusedError, ConnectionResetError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        time.sleep(1.0)  # let the job finish
    finally:
        server.stop()

    targets = {
        "create_job": ("PUT", "/api/v1/job", b'{"command": "true"}'),
        "query_job": ("GET", f"/api/v1/job/{job_id}", None),
        "results": ("GET", f"/api/v1/job/{job_id}/results", None),
        "bare_flask": ("GET", "/", None),
    }
    times: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (method, path, body) in targets.items():
            source = BARE if name == "bare_flask" else FUNCTIONS / name / "main.py"
            target = "bare" if name == "bare_flask" else name
            server = _start(work, target, source, data_dir, name)
            server.start()
            try:
                times[name].append(_first_200(server.port, method, path, body, server.started))
            finally:
                server.stop()
    bare = median(times["bare_flask"])
    results = []
    for name in ("create_job", "query_job", "results"):
        value = median(times[name])
        ratio = value / bare
        results.append(
            Result(
                name=f"cold_start_{name}",
                value=value,
                unit="s",
                baseline=bare,
                ratio=ratio,
                goal="<=0.5s and <=2x bare Flask",
                passed=value <= 0.5 and ratio <= 2.0,
                details={
                    "runs": [round(t, 4) for t in times[name]],
                    "bare_runs": [round(t, 4) for t in times["bare_flask"]],
                    "server": "functions-framework CLI (gunicorn), local backend",
                    "ratio_meaning": "value / baseline (lower is better)",
                },
            )
        )
    return results
