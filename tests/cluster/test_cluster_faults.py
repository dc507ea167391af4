"""The kube-apiserver going away and coming back, on the real test control plane.

The shared control plane is not stopped: the service under test reaches the apiserver
through its own loopback TCP proxy (``tests.faults.TcpProxy``; TLS passes through it
untouched, and the serving certificate is for 127.0.0.1, which the proxy keeps). Cutting
the proxy is an apiserver outage for this service alone. Meanwhile every request that
needs Kubernetes is a 503 with the interface's error document; after the proxy is
restored the same service (no restart) answers everything again.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from flask.testing import FlaskClient

from ocps_jobs.composition import build_service
from ocps_jobs.http import create_embedded_app
from tests.cluster.conftest import ControlPlane, cluster_settings
from tests.faults import TcpProxy
from tests.helpers import wait_until


@pytest.fixture
def api_proxy(control_plane: ControlPlane) -> Iterator[TcpProxy]:
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    server = urlsplit(config["clusters"][0]["cluster"]["server"])
    assert server.hostname == "127.0.0.1" and server.port
    with TcpProxy((server.hostname, server.port)) as proxy:
        yield proxy


def proxied_kubeconfig(control_plane: ControlPlane, proxy: TcpProxy, tmp_path: Path) -> Path:
    """The control plane's kubeconfig with its server URL pointing at the proxy."""
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path = tmp_path / "kubeconfig-proxied"
    path.write_text(yaml.safe_dump(config))
    return path


def assert_json_503(response: Any) -> None:
    assert response.status_code == 503, (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == "service_unavailable"
    assert "Traceback" not in body["message"]


def assert_text_503(response: Any) -> None:
    assert response.status_code == 503, (response.status_code, response.data[:300])
    assert response.mimetype == "text/plain"
    assert b"Traceback" not in response.data


def uws_create(client: FlaskClient, **fields: str) -> str:
    response = client.post("/uws/async", data={"command": "true", **fields})
    assert response.status_code == 303, response.data
    return str(response.headers["Location"].rsplit("/", 1)[1])


def test_an_apiserver_outage_is_503_and_the_service_recovers(
    control_plane: ControlPlane,
    namespace: str,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
    api_proxy: TcpProxy,
) -> None:
    settings = cluster_settings(
        control_plane,
        namespace,
        s3_endpoint,
        bucket,
        tmp_path,
        kubeconfig=proxied_kubeconfig(control_plane, api_proxy, tmp_path),
    )
    service = build_service(settings)
    service.store.ensure_ready()
    client = create_embedded_app(service).test_client()

    # Before: jobs are created and read through the proxy.
    created = client.put("/api/v1/job", json={"command": "true", "run_id": "before"})
    assert created.status_code == 200, created.data
    before = created.get_json()["jobId"]
    pending = uws_create(client)
    assert client.get(f"/api/v1/job/{before}").status_code == 200
    assert before in {job["jobId"] for job in client.get("/api/v1/job").get_json()}
    assert api_proxy.connections > 0

    # A UWS WAIT blocked on a pending job when the apiserver goes away ends, bounded.
    waited: dict[str, Any] = {}

    def wait_on_pending() -> None:
        started = time.monotonic()
        response = client.get(f"/uws/async/{pending}?WAIT=8")
        waited.update(status=response.status_code, seconds=time.monotonic() - started)

    waiter = threading.Thread(target=wait_on_pending, daemon=True)
    waiter.start()
    time.sleep(1)

    api_proxy.cut()
    outage_started = time.monotonic()
    # Every operation that needs Kubernetes: 503 JSON on /api/v1, 503 text on /uws.
    assert_json_503(client.put("/api/v1/job", json={"command": "true", "run_id": "during"}))
    assert_json_503(client.get(f"/api/v1/job/{before}"))
    assert_json_503(client.get(f"/api/v1/job/{before}/phase"))
    assert_json_503(client.get("/api/v1/job"))
    assert_json_503(client.get("/api/v1/job?phase=queued"))
    assert_json_503(client.delete(f"/api/v1/job/{before}"))
    assert_json_503(client.get(f"/api/v1/job/{before}/results"))
    assert_text_503(client.post("/uws/async", data={"command": "true"}))
    assert_text_503(client.get(f"/uws/async/{pending}"))
    assert_text_503(client.get("/uws/async"))
    assert_text_503(client.post(f"/uws/async/{pending}/phase", data={"PHASE": "RUN"}))
    assert_text_503(client.delete(f"/uws/async/{pending}"))
    outage_seconds = time.monotonic() - outage_started
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "a WAIT must not hang on a dead apiserver"
    assert waited["status"] in (200, 503)

    # Back: the same service answers everything again, without a restart.
    api_proxy.restore()
    recovered_at = time.monotonic()

    def answers() -> bool:
        return client.get(f"/api/v1/job/{before}").status_code == 200

    wait_until(answers, timeout=30, interval=0.2)
    recovery_seconds = time.monotonic() - recovered_at
    after = client.put("/api/v1/job", json={"command": "true", "run_id": "after"})
    assert after.status_code == 200, after.data
    after_id = after.get_json()["jobId"]
    listed = {job["runId"]: job["jobId"] for job in client.get("/api/v1/job").get_json()}
    # Nothing the outage refused was half-done: no job "during", both others there.
    assert set(listed) == {"before", "after", pending}
    assert listed["after"] == after_id
    assert client.get(f"/uws/async/{pending}").status_code == 200
    assert re.search(
        r"<uws:phase>PENDING</uws:phase>",
        client.get(f"/uws/async/{pending}").get_data(as_text=True),
    )
    assert client.post(f"/uws/async/{pending}/phase", data={"PHASE": "RUN"}).status_code == 303
    assert client.delete(f"/api/v1/job/{before}").status_code == 200
    assert client.get(f"/api/v1/job/{before}").status_code == 404
    # The watches resynchronise too: lists come from them again, and stay complete.
    wait_until(
        lambda: (
            {job["jobId"] for job in client.get("/api/v1/job").get_json()} == {after_id, pending}
        ),
        timeout=30,
    )
    assert api_proxy.cuts == 1
    print(
        f"\napiserver outage: {outage_seconds:.1f} s of 503s; WAIT ended in "
        f"{waited['seconds']:.1f} s ({waited['status']}); reads back {recovery_seconds:.2f} s "
        "after the restore"
    )
