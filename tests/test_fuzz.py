"""Fuzzing the JSON interface with schemathesis against its own served OpenAPI document.

Every response must be documented (status code, content type, body schema) and none may
be a 5xx. Two runs:

- every operation, positive and negative data, against a service whose backend only
  records jobs (``RecordingBackend``, at the project's own ``JobBackend`` boundary): the
  fuzzer's commands never run. Seeded jobs in every phase, with result files, are
  substituted for generated ids some of the time so that the 200/206/416 answers are
  fuzzed too, not only 404s. Authentication is on, and a share of the requests carry no
  or bad credentials (401 must be documented too).
- ``PUT /api/v1/job`` against the real local backend, every generated body made harmless
  first (the ``map_body`` idea): the command becomes ``true``, no git URL, environment
  names prefixed so that nothing like ``BASH_ENV`` or ``LD_PRELOAD`` reaches bash. Every
  job it accepted must then complete.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.generation.modes import GenerationMode

from ocps_jobs.composition import build_service, build_store
from ocps_jobs.config import Settings
from ocps_jobs.conventions import output_key
from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import (
    Caller,
    JobParameters,
    JobRecord,
    JobRequest,
    Phase,
    ResultFile,
    utcnow,
)
from ocps_jobs.objectstore import ObjectStore
from ocps_jobs.resultids import encode_result_id
from ocps_jobs.service import JobService
from tests.helpers import wait_until
from tests.recording import RecordingBackend

CHECKS = [
    checks.not_a_server_error,
    checks.response_schema_conformance,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.negative_data_rejection,
]
FORM_ENVIRONMENTS = ["[]", '[{"name": "FUZZ_A", "value": "1"}, {"name": "FUZZ_B", "value": ""}]']
# The 4xx a valid request may still get: no such job or result, a phase that forbids it,
# a body over the size limit (which no field's schema can state), a range outside the file.
VALID_BUT_REFUSED = {404, 409, 413, 416}
TOKEN = "fuzz-token-4b1e"
OWNER = "fuzzer"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# What a share of the requests carry instead of the valid token.
BAD_AUTH: list[dict[str, str]] = [{}, {"Authorization": "Bearer wrong"}]

MIN_TOTAL_EXAMPLES = 1000
# Ranges a download may get: one range (206), outside the file (416), or ignored (200).
RANGES = [
    "bytes=0-0",
    "bytes=1-",
    "bytes=-10",
    "bytes=3-5000",
    "bytes=99999-",
    "bytes=5-2",
    "bytes=0-1,3-4",
    "bytes=",
    "items=0-1",
]


SEED_FILES = {
    "summary.txt": (b"hello\n", "text/plain"),
    "page.html": (b"<html><script>alert(1)</script></html>", "text/html"),
    "data/deep/image.fits": (bytes(range(256)) * 64, "application/fits"),
    "empty.bin": (b"", "application/octet-stream"),
}


@dataclass
class Seeded:
    """Jobs of every phase, and result IDs in every accepted form, for substitution."""

    job_ids: list[str] = field(default_factory=list)
    result_ids: list[str] = field(default_factory=list)


def seed(backend: RecordingBackend, store: ObjectStore) -> Seeded:
    seeded = Seeded()
    now = utcnow()
    for number, phase in enumerate(Phase):
        job_id = f"{number:02x}" * 16
        results = []
        if phase in (Phase.COMPLETED, Phase.ERROR, Phase.ABORTED, Phase.ARCHIVED):
            for name, (data, content_type) in SEED_FILES.items():
                key = output_key(job_id, name)
                store.put_bytes(key, data, content_type)
                results.append(ResultFile(key=key, size=len(data), content_type=content_type))
                result_id = encode_result_id(key)
                seeded.result_ids += [result_id, result_id + "=" * (-len(result_id) % 4)]
                seeded.result_ids.append(f"/uws/jobs/{job_id}/out/{name}")
        backend.records[job_id] = JobRecord(
            job_id=job_id,
            run_id=f"seed-{phase.value}",
            owner=OWNER,
            phase=phase,
            creation_time=now - timedelta(hours=1),
            start_time=None if phase in (Phase.PENDING, Phase.QUEUED) else now,
            end_time=now if results else None,
            execution_duration=3600 if number % 2 else None,
            destruction=now + timedelta(days=number + 1) if number % 3 else None,
            parameters=JobParameters(command=f"echo {phase.value}"),
            error_message="it failed" if phase is Phase.ERROR else "",
            results=results or None,
        )
        seeded.job_ids.append(job_id)
    # A job of another owner: must stay invisible (404) to the fuzzer's identity.
    other = "ff" * 16
    backend.records[other] = backend.records[seeded.job_ids[3]].model_copy(
        update={"job_id": other, "owner": "someone-else"}
    )
    seeded.job_ids.append(other)
    return seeded


@dataclass
class Tally:
    examples: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)

    def count(self, label: str, status: int) -> None:
        self.examples += 1
        self.by_operation[label] = self.by_operation.get(label, 0) + 1
        self.statuses[status] = self.statuses.get(status, 0) + 1


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    max_examples: int,
    prepare: Callable[[Any, Any], dict[str, str]],
    tally: Tally,
    with_checks: list[Any] = CHECKS,
) -> None:
    """Run one operation's strategy through hypothesis; every case checked ``with_checks``."""

    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    @hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
    )
    def run(case: Any, data: Any) -> None:
        headers = prepare(case, data)
        response = case.call_and_validate(headers=headers, checks=with_checks)
        tally.count(f"{operation.label} [{mode.value}]", response.status_code)
        if mode is GenerationMode.POSITIVE and headers == AUTH:
            # What the document calls valid is accepted, or refused only for a reason above.
            assert response.status_code < 400 or response.status_code in VALID_BUT_REFUSED, (
                case.as_curl_command(),
                response.status_code,
                response.text[:300],
            )

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # A plain string path parameter has no invalid values: nothing negative to send.
        assert mode is GenerationMode.NEGATIVE


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[JobService, RecordingBackend, Seeded]]:
    settings = Settings.from_env(
        data_dir=tmp_path / "fuzz-data",
        auth_required=True,
        auth_tokens={TOKEN: OWNER},
    )
    store = build_store(settings)
    store.ensure_ready()
    backend = RecordingBackend(store)
    seeded = seed(backend, store)
    service = JobService(settings, backend, store)
    yield service, backend, seeded
    service.close()


def test_fuzz_every_operation_against_its_documented_schema(
    recorded: tuple[JobService, RecordingBackend, Seeded],
) -> None:
    service, backend, seeded = recorded
    app = create_embedded_app(service)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 10
    tally = Tally()

    def prepare(case: Any, data: Any) -> dict[str, str]:
        # Hypothesis biases its own draws to boundary values: a true Random draws evenly.
        chance = data.draw(st.randoms(use_true_random=True), label="substitutions")
        parameters = case.path_parameters or {}
        if "jobId" in parameters and chance.random() < 0.6:
            if case.method.upper() == "DELETE":
                # A fresh job to delete, so that the seeded ones stay for the other operations.
                parameters["jobId"] = service.create_job(
                    JobRequest(command="true"), Caller(name=OWNER)
                ).job_id
            else:
                parameters["jobId"] = chance.choice(seeded.job_ids)
        if "n" in parameters and chance.random() < 0.6:
            parameters["n"] = chance.randrange(len(SEED_FILES) + 2)
        if "resultId" in parameters and chance.random() < 0.8:
            parameters["resultId"] = chance.choice(seeded.result_ids)
        if case.media_type == "application/x-www-form-urlencoded" and isinstance(case.body, dict):
            # A form field is text. The test transport (werkzeug) leaves out a field whose
            # generated value is null, a list or an object, so such a case would claim a field
            # (say an unknown one, to be refused) that is never sent.
            hypothesis.assume(
                all(isinstance(value, str | int | float) for value in case.body.values())
            )
            # The form's environment is JSON text (contentMediaType), which generated
            # strings are not: give the valid ones a JSON array.
            if case.meta.generation.mode.is_positive and "environment" in case.body:
                case.body["environment"] = chance.choice(FORM_ENVIRONMENTS)
        if "/result/" in case.path and chance.random() < 0.5:
            case.headers = {**(case.headers or {}), "Range": chance.choice(RANGES)}
        if chance.random() < 0.1:
            return chance.choice(BAD_AUTH)
        return AUTH

    started = time.monotonic()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(operation, mode, 65, prepare, tally)
    elapsed = time.monotonic() - started
    print(
        f"\nfuzz (recording backend): {tally.examples} examples in {elapsed:.1f} s; "
        f"statuses {dict(sorted(tally.statuses.items()))}"
    )
    for label, count in sorted(tally.by_operation.items()):
        print(f"  {count:4d}  {label}")
    assert tally.examples >= MIN_TOTAL_EXAMPLES
    assert not [status for status in tally.statuses if status >= 500]
    # The substitutions reached the successful answers, not only the 4xx ones.
    assert {200, 400, 401, 404} <= set(tally.statuses)
    assert backend.created > 0  # accepted creations were recorded, and never run


def harmless(body: Any) -> Any:
    """The generated body with nothing in it that could do harm when the job really runs."""
    if not isinstance(body, dict):
        return body
    body = copy.deepcopy(body)
    if "command" in body or "environment" in body or not body:
        body["command"] = "true"
    body.pop("url", None)
    body.pop("commit_ref", None)
    environment = body.get("environment")
    if isinstance(environment, list):
        for entry in environment:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                entry["name"] = "FUZZ_" + entry["name"][:200]
    elif environment is not None:
        del body["environment"]  # a form field holding JSON text: not worth parsing here
    return body


def test_fuzz_job_creation_on_the_real_local_backend(tmp_path: Path) -> None:
    service = build_service(
        Settings.from_env(data_dir=tmp_path / "fuzz-local", max_concurrent_jobs=1)
    )
    app = create_embedded_app(service)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operation = schema["/api/v1/job"]["PUT"]
    tally = Tally()
    accepted: list[str] = []

    def prepare(case: Any, data: Any) -> dict[str, str]:
        case.body = harmless(case.body)
        return {}

    original = service.create_job

    def create_job(*args: Any, **kwargs: Any) -> JobRecord:
        record = original(*args, **kwargs)
        assert record.parameters.command == "true"
        assert record.parameters.url is None
        accepted.append(record.job_id)
        return record

    service.create_job = create_job  # type: ignore[method-assign]
    started = time.monotonic()
    # harmless() may turn an invalid body into a valid one (a missing command becomes
    # "true"), so refusing invalid data is left to the recording-backend run.
    kept = [check for check in CHECKS if check is not checks.negative_data_rejection]
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        fuzz_operation(operation, mode, 60, prepare, tally, kept)
    print(
        f"\nfuzz (local backend, PUT only): {tally.examples} examples, "
        f"{len(accepted)} jobs run, in {time.monotonic() - started:.1f} s; "
        f"statuses {dict(sorted(tally.statuses.items()))}"
    )
    assert accepted, "no generated body was accepted"
    assert not [status for status in tally.statuses if status >= 500]

    def all_finished() -> bool:
        return all(
            (record := service.backend.get(job_id)) is not None and record.is_final
            for job_id in accepted
        )

    wait_until(all_finished, timeout=60, interval=0.2)
    phases = {service.backend.get(job_id).phase for job_id in accepted}  # type: ignore[union-attr]
    assert phases == {Phase.COMPLETED}


def test_the_served_openapi_document_is_valid(client: Any) -> None:
    from openapi_spec_validator import validate

    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document = response.get_json()
    validate(document)  # OpenAPI 3.1, every $ref resolving
    operations = {
        (path, method): body
        for path, item in document["paths"].items()
        for method, body in item.items()
        if method != "parameters"
    }
    assert len(operations) == 10
    for (path, method), body in operations.items():
        assert "401" in body["responses"], (path, method)
        assert body["responses"]["401"]["content"]["application/json"]


def test_regressions_the_fuzzer_found(client: Any) -> None:
    # Empty url / commit_ref and a null environment value are accepted, as documented.
    created = client.put(
        "/api/v1/job",
        json={
            "command": "echo hi > $JOB_OUTPUT_DIR/out.txt",
            "url": "",
            "commit_ref": "",
            "environment": [{"name": "EMPTY", "value": None}],
        },
    )
    assert created.status_code == 200, created.data
    job = created.get_json()
    assert job["parameters"]["url"] is None and job["parameters"]["commit_ref"] is None
    job_id = job["jobId"]
    wait_until(lambda: client.get(f"/api/v1/job/{job_id}/phase").get_json() == "completed")
    result_id = client.get(f"/api/v1/job/{job_id}/results").get_json()[0]["id"]
    assert client.get(f"/api/v1/job/result/{result_id}").status_code == 200
    # A path Flask's router cannot match (a newline in a segment) is the JSON error,
    # and a trailing newline does not name the job or result without it.
    for path in (
        "/api/v1/job/a%0Ab/parameters",
        f"/api/v1/job/{job_id}%0A",
        f"/api/v1/job/{job_id}%0A/phase",
        f"/api/v1/job/result/{result_id}%0A",
        f"/api/v1/job/result/{job_id}/0%0A",
    ):
        response = client.get(path)
        assert response.status_code in (400, 404), path
        assert response.mimetype == "application/json", path
    text = client.get("/uws/async/a%0Ab")
    assert text.status_code == 404 and text.mimetype == "text/plain"
    # Phase filters in any case; empty means all.
    for query in ("phase=COMPLETED", "phase=Completed", "phase=completed", "phase="):
        assert [item["jobId"] for item in client.get(f"/api/v1/job?{query}").get_json()] == [job_id]
