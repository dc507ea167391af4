"""Logs, health and metrics on the embedded default: what an operator reads and scrapes.

The log tests run ``ocps-jobs serve`` as a process and parse its standard output as an
operator's log collector would; the metrics tests scrape ``/metrics`` and parse it with
prometheus-client's own parser; readiness follows moto's S3 cut and restored through a
loopback proxy, with no restart.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from ocps_jobs.composition import build_service
from ocps_jobs.config import Settings
from ocps_jobs.http import create_embedded_app
from ocps_jobs.service import JobService
from tests.chaos import ServeProcess
from tests.conftest import FUNCTIONS
from tests.faults import TcpProxy
from tests.helpers import wait_for_phase, wait_until

FINAL = {"completed", "error", "aborted"}


# --- helpers -------------------------------------------------------------------------------


def json_lines(server: ServeProcess) -> list[dict[str, Any]]:
    """Every line of the server's output that is a JSON object (the log lines)."""
    found = []
    for line in list(server.log):
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def events(server: ServeProcess, message: str, job_id: str) -> list[dict[str, Any]]:
    """The log lines with ``message`` about ``job_id``."""
    return [
        line
        for line in json_lines(server)
        if line.get("message") == message and line.get("job_id") == job_id
    ]


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed: (sample name, sorted labels) -> value."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a labelled counter not yet incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        amount
        for (sample, sample_labels), amount in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def uws_abort(http: httpx.Client, job_id: str) -> None:
    response = http.post(f"/uws/async/{job_id}/phase", data={"PHASE": "ABORT"})
    assert response.status_code == 303, response.text


# --- logs ----------------------------------------------------------------------------------


def test_jobs_and_requests_are_logged_as_json_lines_with_their_fields(tmp_path: Path) -> None:
    env = {"OCPS_LOG_FORMAT": "json"}
    with (
        ServeProcess(tmp_path / "data", env=env) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        created = {}
        commands = {
            "ok": 'echo fine > "$JOB_OUTPUT_DIR/out.txt"',
            "fails": "echo 'it broke' >&2; exit 7",
            "aborted": "sleep 60",
        }
        for name, command in commands.items():
            response = http.put(
                "/api/v1/job",
                json={"command": command, "run_id": f"run-{name}"},
                headers={"X-Request-Id": f"req-{name}"},
            )
            assert response.status_code == 200
            assert response.headers["X-Request-Id"] == f"req-{name}"
            created[name] = response.json()["jobId"]
        phase = lambda name: http.get(f"/api/v1/job/{created[name]}/phase").json()  # noqa: E731
        wait_for_phase(lambda: phase("aborted"), {"executing"})
        uws_abort(http, created["aborted"])
        for name in created:
            wait_for_phase(lambda name=name: phase(name), FINAL)  # type: ignore[misc]
        assert http.get("/api/v1/job/" + "f" * 32).status_code == 404
        assert http.delete(f"/api/v1/job/{created['ok']}").status_code == 200
        wait_until(lambda: events(server, "job deleted", created["ok"]))  # lines come in batches

        # The access line of each create: its request id, route, caller and the new job.
        for name, job_id in created.items():
            (access,) = [
                line
                for line in json_lines(server)
                if line.get("logger") == "ocps_jobs.access" and line["request_id"] == f"req-{name}"
            ]
            assert access["method"] == "PUT"
            assert access["path"] == "/api/v1/job"
            assert access["route"] == "/api/v1/job"
            assert access["status"] == 200
            assert access["job_id"] == job_id
            assert access["user"] is None  # anonymous: authentication is off
            assert access["duration_ms"] > 0
            assert access["bytes"] > 100
            assert access["user_agent"].startswith("python-httpx")
            assert access["remote_addr"] == "127.0.0.1"
            assert access["level"] == "INFO"
            assert access["time"].endswith("+00:00")
            (made,) = events(server, "job created", job_id)
            assert made["run_id"] == f"run-{name}"
            assert made["user"] is None
            assert made["request_id"] == f"req-{name}"  # a use case's line carries the request's
        # A request with no id of its own gets one, sent back and logged.
        not_found = [
            line
            for line in json_lines(server)
            if line.get("status") == 404 and line.get("route") == "/api/v1/job/{job_id}"
        ]
        assert len(not_found) == 1 and len(not_found[0]["request_id"]) == 32

        # Job events, each with the job id as a field.
        ended = {
            name: wait_until(lambda job_id=job_id: events(server, "job ended", job_id))  # type: ignore[misc]
            for name, job_id in created.items()
        }
        assert [len(lines) for lines in ended.values()] == [1, 1, 1]
        ok, fails, aborted = (ended[name][0] for name in ("ok", "fails", "aborted"))
        assert (ok["phase"], ok["exit_code"], ok["files"]) == ("completed", 0, 2)
        assert ok["run_id"] == "run-ok"
        assert (fails["phase"], fails["exit_code"]) == ("error", 7)
        assert "7" in fails["error_summary"] and "it broke" in fails["error_summary"]
        assert aborted["phase"] == "aborted"
        assert events(server, "job started", created["aborted"])
        (abort,) = events(server, "job aborted", created["aborted"])
        assert abort["user"] is None
        (deleted,) = events(server, "job deleted", created["ok"])
        assert deleted["user"] is None
        assert len(events(server, "job archived", created["fails"])) == 1
    # The shutdown is logged too.
    assert any(line.get("message") == "stopped" for line in json_lines(server))


def test_refusals_are_warnings_and_no_secret_reaches_any_log_line(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    token = "tok-" + "S3cr3tBearer" * 3
    s3_secret = "aws-" + "VerySecretKey" * 3
    command_secret = "ghp_" + "CommandToken" * 3
    env = {
        "OCPS_LOG_FORMAT": "json",
        "OCPS_LOG_LEVEL": "DEBUG",  # the most a misguided operator could turn on
        "OCPS_AUTH_REQUIRED": "true",
        "OCPS_AUTH_TOKENS": json.dumps({token: "alice"}),
        "AWS_ACCESS_KEY_ID": "ocps-test-access",
        "AWS_SECRET_ACCESS_KEY": s3_secret,
    }
    args = ("--s3-endpoint", s3_endpoint, "--bucket", bucket)
    with (
        ServeProcess(tmp_path / "data", *args, env=env) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        auth = {"Authorization": f"Bearer {token}"}
        command = f'echo "{command_secret}" > "$JOB_OUTPUT_DIR/token.txt"'
        response = http.put(
            "/api/v1/job",
            json={"command": command, "environment": [{"name": "T", "value": command_secret}]},
            headers=auth,
        )
        assert response.status_code == 200
        job_id = response.json()["jobId"]
        phase = lambda: http.get(f"/api/v1/job/{job_id}/phase", headers=auth).json()  # noqa: E731
        assert wait_for_phase(phase, FINAL) == "completed"
        results = http.get(f"/api/v1/job/{job_id}/results", headers=auth).json()
        for result in results:
            assert http.get(f"/api/v1/job/result/{result['id']}", headers=auth).status_code == 200
        refused = http.get("/api/v1/job", headers={"Authorization": f"Bearer {token}x"})
        assert refused.status_code == 401
        assert http.get(f"/uws/async/{job_id}?token={token}").status_code == 401
        wait_until(lambda: events(server, "job ended", job_id))
        wait_until(
            lambda: len([line for line in json_lines(server) if line.get("status") == 401]) == 2
        )

    lines = list(server.log)
    assert len(lines) > 10
    for secret in (token, s3_secret, command_secret):
        assert not [line for line in lines if secret in line], secret
    logged = json_lines(server)
    warnings = [line for line in logged if line.get("status") == 401]
    assert len(warnings) == 2
    assert {line["level"] for line in warnings} == {"WARNING"}
    users = {line.get("user") for line in logged if line.get("logger") == "ocps_jobs.access"}
    assert "alice" in users


def test_another_owners_job_is_refused_with_a_warning(
    client: FlaskClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = client.put("/api/v1/job", json={"command": "true"}).get_json()["jobId"]
    service = client.application.extensions["ocps_service"]
    from ocps_jobs.errors import JobNotFoundError
    from ocps_jobs.models import Caller

    with pytest.raises(JobNotFoundError):
        service.get_job(job_id, Caller(name="mallory"))
    (refusal,) = [record for record in caplog.records if "another owner" in record.message]
    assert refusal.levelname == "WARNING"
    assert refusal.__dict__["job_id"] == job_id
    assert refusal.__dict__["user"] == "mallory"


def test_request_id_from_traceparent_or_made(client: FlaskClient) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = client.get("/api/v1/job", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    assert response.headers["X-Request-Id"] == trace
    made = {client.get("/api/v1/job").headers["X-Request-Id"] for _ in range(3)}
    assert len(made) == 3
    # An id that could forge a log line is not taken as it is.
    odd = client.get("/api/v1/job", headers={"X-Request-Id": 'x" level=ERROR'})
    assert odd.headers["X-Request-Id"] != 'x" level=ERROR'


# --- a function that cannot start ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_misconfigured_function_exits_with_one_line_naming_the_setting(tmp_path: Path) -> None:
    framework = Path(sys.executable).with_name("functions-framework")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "OCPS_DATA_DIR": str(tmp_path / "data"),
        "OCPS_DATA_DIRS": "not json",
    }
    started = subprocess.run(
        [
            str(framework),
            "--target",
            "query_job",
            "--source",
            str(FUNCTIONS / "query_job" / "main.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode != 0
    lines = [json.loads(line) for line in started.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, started.stdout
    assert lines[0]["level"] == "CRITICAL"
    assert "OCPS_DATA_DIRS" in lines[0]["message"]
    assert "Traceback" not in started.stderr


# --- health --------------------------------------------------------------------------------


def test_liveness_and_readiness_of_a_function(functions: dict[str, FlaskClient]) -> None:
    for client in functions.values():
        assert client.get("/healthz").get_json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        report = ready.get_json()
        assert report["status"] == "ready"
        assert report["failing"] == []
        assert report["settings"]["backend"] == "local"
        assert report["backend"]["status"] == "ok"
        assert report["object_store"]["status"] == "ok"


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[TcpProxy]:
    """A cuttable loopback proxy in front of moto's S3 server."""
    upstream = urlsplit(s3_endpoint)
    assert upstream.hostname and upstream.port
    with TcpProxy((upstream.hostname, upstream.port)) as proxy:
        yield proxy


def test_readiness_follows_the_object_store_down_and_up(
    tmp_path: Path, s3_proxy: TcpProxy, bucket: str
) -> None:
    settings = Settings.from_env(
        data_dir=tmp_path / "data", s3_endpoint=s3_proxy.url, bucket=bucket, max_concurrent_jobs=2
    )
    service = build_service(settings)
    client = create_embedded_app(service).test_client()
    assert client.get("/readyz").status_code == 200
    s3_proxy.cut()
    down = client.get("/readyz")
    assert down.status_code == 503
    report = down.get_json()
    assert report["failing"] == ["object_store"]
    assert report["object_store"]["status"] == "failing"
    assert report["backend"]["status"] == "ok"
    assert client.get("/healthz").status_code == 200  # alive: a restart would not help
    s3_proxy.restore()
    assert wait_until(lambda: client.get("/readyz").status_code == 200, timeout=15)


# --- metrics -------------------------------------------------------------------------------


def test_metrics_follow_the_jobs_on_the_local_backend(client: FlaskClient) -> None:
    service: JobService = client.application.extensions["ocps_service"]
    before = scrape(client)
    ids = {}
    for name, command in {
        "ok": 'printf 12345 > "$JOB_OUTPUT_DIR/five.txt"',
        "fails": "exit 3",
        "aborted": "sleep 60",
    }.items():
        response = client.put("/api/v1/job", json={"command": command})
        assert response.status_code == 200
        ids[name] = response.get_json()["jobId"]
    phase = lambda name: client.get(f"/api/v1/job/{ids[name]}/phase").get_json()  # noqa: E731
    wait_for_phase(lambda: phase("aborted"), {"executing"})
    assert (
        client.post(f"/uws/async/{ids['aborted']}/phase", data={"PHASE": "ABORT"}).status_code
        == 303
    )
    for name in ids:
        wait_for_phase(lambda name=name: phase(name), FINAL)  # type: ignore[misc]
    assert service.events.flush(10)
    for _ in range(3):  # read again and again: each job still ends once
        for job_id in ids.values():
            client.get(f"/api/v1/job/{job_id}")
    assert service.events.flush(10)
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("ocps_jobs_created_total") == 3
    assert moved("ocps_jobs_ended_total", phase="completed") == 1
    assert moved("ocps_jobs_ended_total", phase="error") == 1
    assert moved("ocps_jobs_ended_total", phase="aborted") == 1
    assert moved("ocps_job_queued_seconds_count") == 3
    assert moved("ocps_job_executing_seconds_count", phase="error") == 1
    assert moved("ocps_results_uploaded_files_total") == 4  # a file of "ok", three logs
    assert moved("ocps_results_uploaded_bytes_total") >= 5
    assert moved("ocps_archive_writes_total", outcome="ok") == 3
    puts = dict(function="serve", route="/api/v1/job", method="PUT", status="200")
    assert moved("ocps_http_requests_total", **puts) == 3
    latency = dict(function="serve", route="/api/v1/job", method="PUT")
    assert moved("ocps_http_request_duration_seconds_count", **latency) == 3
    assert value(after, "ocps_jobs_current", phase="completed") == 1
    assert value(after, "ocps_jobs_current", phase="error") == 1
    assert value(after, "ocps_jobs_current", phase="aborted") == 1
    assert value(after, "ocps_jobs_current", phase="executing") == 0
    # A deletion of a job that has not ended counts it as aborted, once.
    running = client.put("/api/v1/job", json={"command": "sleep 60"}).get_json()["jobId"]
    assert client.delete(f"/api/v1/job/{running}").status_code == 200
    client.get(f"/api/v1/job/{running}")
    assert service.events.flush(10)
    final = scrape(client)
    assert (
        value(final, "ocps_jobs_ended_total", phase="aborted")
        == value(after, "ocps_jobs_ended_total", phase="aborted") + 1
    )
    assert total(final, "ocps_http_requests_total", route="unmatched") == total(
        after, "ocps_http_requests_total", route="unmatched"
    )


def test_every_function_serves_metrics(functions: dict[str, FlaskClient]) -> None:
    functions["create_job"].put("/api/v1/job", json={"command": "true"})
    for name, client in functions.items():
        samples = scrape(client)
        assert ("ocps_jobs_created_total", ()) in samples
        has_phases = any(key[0] == "ocps_jobs_current" for key in samples)
        assert has_phases is (name == "query_job")  # where the jobs are watched anyway
    counted = scrape(functions["results"])
    create = dict(function="create_job", route="/api/v1/job", method="PUT", status="200")
    assert value(counted, "ocps_http_requests_total", **create) >= 1
