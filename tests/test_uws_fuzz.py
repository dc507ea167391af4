"""Fuzzing the UWS interface: any method, job, sub-resource, parameters and body; never a 5xx."""

from __future__ import annotations

import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from ocps_jobs.composition import build_store
from ocps_jobs.config import Settings
from ocps_jobs.http import create_embedded_app
from ocps_jobs.service import JobService
from tests.recording import RecordingBackend

CREATION = ["command", "url", "commit_ref", "runid", "RUNID", "replicas", "env", "environment"]
CONTROLS = ["PHASE", "phase", "EXECUTIONDURATION", "DESTRUCTION"]
READ_ONLY = [
    "/phase", "/executionduration", "/destruction", "/error", "/quote", "/owner",
    "/parameters", "/results", "/results/result/0",
]  # fmt: skip
# Each UWS route (None: the job list, "": the job), with the parameters it reads; then some
# routes and methods that do not exist. Every case also mixes in names from ANY_NAMES.
ROUTES: list[tuple[str, str | None, list[str]]] = [
    ("POST", None, CREATION + CONTROLS),
    ("GET", None, ["PHASE", "phase", "LAST", "AFTER"]),
    ("GET", "", ["WAIT", "PHASE"]),
    ("POST", "", ["ACTION", "action"]),
    ("DELETE", "", []),
    ("POST", "/phase", ["PHASE", "phase"]),
    ("POST", "/executionduration", ["EXECUTIONDURATION"]),
    ("POST", "/destruction", ["DESTRUCTION"]),
    *[("GET", sub_resource, []) for sub_resource in READ_ONLY],
    ("PUT", "", []),
    ("POST", "/quote", []),
    ("GET", "/nope", []),
    ("GET", "/results/result/x", []),
    ("GET", "/parameters/command", []),
]
ANY_NAMES = [*CREATION, *CONTROLS, "WAIT", "LAST", "AFTER", "ACTION", "x", ""]
# Values those take, the boundaries around them, and what none of them takes.
VALUES = [
    "RUN", "ABORT", "SUSPEND", "DELETE", "-1", "0", "1", "1.5", "99999999999", "9" * 5000,
    "2030-01-01T00:00:00Z", "2000-01-01", "9999-12-31T23:59:59-14:00", "true", "A=1",
    "1BAD=x", "JOB_ID=x", "[]", "{", "\x00", "\u0663", "-oProxyCommand=x",
]  # fmt: skip
BODY_TYPES = [
    "application/x-www-form-urlencoded", "multipart/form-data", "application/json",
    "text/plain", None,
]  # fmt: skip
ERROR_TYPES = {"text/plain", "application/json"}


@pytest.fixture
def client_and_backend(tmp_path: Path) -> Any:
    settings = Settings.from_env(data_dir=tmp_path / "data")
    store = build_store(settings)
    store.ensure_ready()
    backend = RecordingBackend(store)  # never runs a command
    service = JobService(settings, backend, store)
    yield create_embedded_app(service).test_client(), backend
    service.close()


def test_no_uws_request_gets_a_server_error(
    client_and_backend: tuple[FlaskClient, RecordingBackend],
) -> None:
    client, backend = client_and_backend

    def create(**fields: str) -> str:
        created = client.post("/uws/async", data={"command": "true", **fields})
        return str(created.headers["Location"])

    pending, queued, aborted = create(), create(PHASE="RUN"), create(PHASE="RUN")
    assert client.post(f"{aborted}/phase", data={"PHASE": "ABORT"}).status_code == 303
    job_ids = [location.rsplit("/", 1)[1] for location in (pending, queued, aborted)]
    initial = {job_id: record.model_copy(deep=True) for job_id, record in backend.records.items()}
    statuses: Counter[int] = Counter()

    @given(
        route=st.sampled_from(ROUTES),
        # Mostly real jobs, so that the answers are about them rather than 404s.
        job=st.sampled_from([*job_ids, *job_ids, *job_ids, "0" * 32, "..", "%2e%2e", "x" * 300]),
        in_query=st.booleans(),
        body_type=st.sampled_from(BODY_TYPES),
        data=st.data(),
    )
    @hypothesis.settings(
        max_examples=1500,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run: a failure here is never a fluke
        suppress_health_check=list(HealthCheck),
    )
    def run(
        route: tuple[str, str | None, list[str]],
        job: str,
        in_query: bool,
        body_type: str | None,
        data: Any,
    ) -> None:
        method, sub_resource, names = route
        # Each case starts from the same three jobs, whatever the last one deleted or changed.
        backend.records = {job_id: r.model_copy(deep=True) for job_id, r in initial.items()}
        name = st.sampled_from(names or ANY_NAMES) | st.sampled_from(ANY_NAMES)
        value = st.sampled_from(VALUES) | st.text(max_size=40)
        params = data.draw(st.lists(st.tuples(name, value), max_size=4), label="params")
        path = "/uws/async" + (f"/{job}{sub_resource}" if sub_resource is not None else "")
        query = urllib.parse.urlencode(params)
        if in_query or method in ("GET", "DELETE"):
            response = client.open(path + (f"?{query}" if query else ""), method=method)
        elif body_type == "multipart/form-data":
            response = client.open(path, method=method, data={k or "_": v for k, v in params})
        else:
            response = client.open(path, method=method, data=query.encode(), content_type=body_type)
        statuses[response.status_code] += 1
        assert response.status_code < 500, (method, path, params, response.data[:300])
        if response.status_code >= 400:
            assert response.mimetype in ERROR_TYPES, (method, path, response.mimetype)
            assert response.data  # a reason, not an empty body

    run()
    answered = dict(sorted(statuses.items()))
    print(f"\nUWS fuzz: {sum(statuses.values())} requests; statuses {answered}")
    # The cases reached the answers that matter, not only the refusals.
    assert {200, 303, 400, 404} <= set(statuses), statuses
    assert sum(statuses.values()) >= 1500
