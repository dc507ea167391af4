"""User isolation on the embedded backend: each job in a bubblewrap sandbox.

Bob's job, with authentication on for two identities, tries what an attacker would: the
server's environment through /proc, the data folder's records, Alice's running job's
folder and her results. None of it is reachable; his own outputs are.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from ocps_jobs.composition import build_service
from ocps_jobs.config import Settings
from ocps_jobs.errors import SettingsError
from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import Caller
from tests.helpers import host_pid, process_alive, wait_until

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
SECRET = "server-secret-7f3a"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def two_user_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "max_concurrent_jobs": 2,
        "auth_required": True,
        "auth_tokens": TOKENS,
    }
    values.update(overrides)
    return Settings.from_env(**values)


def submit_as(client: FlaskClient, token: str, command: str) -> str:
    response = client.put("/api/v1/job", json={"command": command}, headers=bearer(token))
    assert response.status_code == 200, response.data
    return str(response.get_json()["jobId"])


def output_text(client: FlaskClient, token: str, job_id: str, name: str) -> str:
    listing = client.get(f"/api/v1/job/{job_id}/results", headers=bearer(token)).get_json()
    for item in listing:
        if item["uri"].endswith("/" + name):
            response = client.get(f"/api/v1/job/result/{item['id']}", headers=bearer(token))
            return response.get_data(as_text=True)
    raise AssertionError(f"no result {name}")


def test_a_job_reaches_neither_the_server_nor_another_users_job(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OCPS_PROBE_SECRET", SECRET)  # in the server's environment only
    settings = two_user_settings(tmp_path / "data")
    client = create_embedded_app(build_service(settings)).test_client()
    data = settings.data_dir.resolve()
    alice_done = submit_as(client, "tok-alice", "echo hers > $JOB_OUTPUT_DIR/result.txt")
    wait_until(
        lambda: (
            client.get(f"/api/v1/job/{alice_done}/phase", headers=bearer("tok-alice")).get_json()
            == "completed"
        )
    )
    alice_running = submit_as(client, "tok-alice", "sleep 60")
    wait_until(
        lambda: (
            client.get(f"/api/v1/job/{alice_running}/phase", headers=bearer("tok-alice")).get_json()
            == "executing"
        )
    )
    probe = f"""
    out=$JOB_OUTPUT_DIR/report.txt
    cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c {SECRET} >> $out
    ls -A {data}/state/jobs 2>/dev/null | wc -l >> $out
    ls {data}/work/{alice_running} >> $out 2>&1 && echo SEEN-ALICE-WORK >> $out
    echo TAMPERED > {data}/objects/ocps-jobs/jobs/{alice_done}/results/result.txt 2>/dev/null \
        && echo WROTE-ALICE-RESULT >> $out
    touch /etc/ocps-probe 2>/dev/null && echo WROTE-ETC >> $out
    echo mine > $JOB_OUTPUT_DIR/mine.txt
    """
    bob = submit_as(client, "tok-bob", probe)
    wait_until(
        lambda: (
            client.get(f"/api/v1/job/{bob}/phase", headers=bearer("tok-bob")).get_json()
            in ("completed", "error")
        ),
        timeout=30,
    )
    report = output_text(client, "tok-bob", bob, "report.txt")
    secrets_seen, records_seen = report.split()[:2]
    assert secrets_seen == "0", report
    assert records_seen == "0", report
    assert "SEEN-ALICE-WORK" not in report
    assert "WROTE-ALICE-RESULT" not in report
    assert "WROTE-ETC" not in report and not Path("/etc/ocps-probe").exists()
    assert output_text(client, "tok-bob", bob, "mine.txt") == "mine\n"
    assert output_text(client, "tok-alice", alice_done, "result.txt") == "hers\n"


@pytest.mark.parametrize("how", ["abort", "delete", "completion"])
def test_processes_that_left_the_jobs_session_stop_with_it(tmp_path: Path, how: str) -> None:
    settings = Settings.from_env(data_dir=tmp_path / "data", max_concurrent_jobs=2)
    service = build_service(settings)
    client = create_embedded_app(service).test_client()
    command = (
        "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! > $JOB_OUTPUT_DIR/escape.pid; "
        + ("sleep 2" if how == "completion" else "sleep 300")
    )
    job_id = client.put("/api/v1/job", json={"command": command}).get_json()["jobId"]
    pid_file = settings.data_dir / "work" / job_id / "out" / "escape.pid"
    escaped = host_pid(job_id, int(wait_until(lambda: pid_file.is_file() and pid_file.read_text())))
    assert process_alive(escaped)
    if how == "abort":
        service.abort_job(job_id, Caller())
    elif how == "completion":
        wait_until(lambda: client.get(f"/api/v1/job/{job_id}/phase").get_json() == "completed")
    else:
        assert client.delete(f"/api/v1/job/{job_id}").status_code in (200, 204)
    wait_until(lambda: not process_alive(escaped), timeout=10)


def test_several_identities_without_a_sandbox_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="sandbox"):
        build_service(two_user_settings(tmp_path / "data", local_sandbox="none"))
    # One identity needs no isolation from others.
    one = two_user_settings(tmp_path / "one", local_sandbox="none", auth_tokens={"t": "alice"})
    assert build_service(one).backend is not None


def test_an_aborted_sandboxed_job_gets_its_grace_period(tmp_path: Path) -> None:
    settings = Settings.from_env(data_dir=tmp_path / "data", max_concurrent_jobs=2)
    service = build_service(settings)
    client = create_embedded_app(service).test_client()
    command = (
        'trap "sleep 0.5; echo saved > $JOB_OUTPUT_DIR/partial.txt; exit 5" TERM; '
        "touch $JOB_OUTPUT_DIR/started; sleep 300 & wait"
    )
    job_id = client.put("/api/v1/job", json={"command": command}).get_json()["jobId"]
    started = settings.data_dir / "work" / job_id / "out" / "started"
    wait_until(started.is_file)
    service.abort_job(job_id, Caller())
    wait_until(lambda: client.get(f"/api/v1/job/{job_id}/phase").get_json() == "aborted")
    listing = client.get(f"/api/v1/job/{job_id}/results").get_json()
    assert any(item["uri"].endswith("/partial.txt") for item in listing), listing


def test_the_start_does_not_wait_for_the_sandbox_probe_and_the_first_job_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A bwrap that holds every run (the start's probe included) until the gate opens.
    real_bwrap, gate, bin_dir = shutil.which("bwrap"), tmp_path / "gate", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bwrap").write_text(
        f'#!/bin/sh\nwhile [ ! -e "{gate}" ]; do sleep 0.02; done\nexec "{real_bwrap}" "$@"\n'
    )
    (bin_dir / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    settings = Settings.from_env(data_dir=tmp_path / "data", max_concurrent_jobs=1)
    service = build_service(settings)  # returns while the probe is still held at the gate
    client = create_embedded_app(service).test_client()
    job_id = client.put("/api/v1/job", json={"command": "echo $$ > $JOB_OUTPUT_DIR/pid"})
    assert job_id.status_code == 200
    gate.touch()
    wait_until(
        lambda: (
            client.get(f"/api/v1/job/{job_id.get_json()['jobId']}/phase").get_json() == "completed"
        )
    )
    # The first job waited for the probe and ran in the sandbox: its own PID namespace,
    # where the shell bwrap starts has a pid in single digits.
    assert int(output_text(client, "", job_id.get_json()["jobId"], "pid")) < 10
