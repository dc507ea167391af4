"""Every declared job parameter reaches each interface: JSON, UWS, OpenAPI, client and CLI."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from waitress.server import create_server

from ocps_jobs import cli
from ocps_jobs.client import OCPSClient
from ocps_jobs.http import create_embedded_app
from ocps_jobs.http.openapi import openapi_document
from ocps_jobs.models import (
    JOB_PARAMETERS,
    Caller,
    JobParameter,
    JobParameters,
    JobRecord,
    ParameterKind,
)
from ocps_jobs.service import JobService

ANYONE = Caller()

# A value for each parameter other than its default. A new parameter fails
# test_every_parameter_has_a_sample until it has one here, then runs through every test.
SAMPLES: dict[str, Any] = {
    "command": "true",
    "run_id": "parameters-run",
    "environment": [("SAMPLE_NAME", "sample value")],
    "url": "file:///nonexistent/parameters.git",
    "commit_ref": "parameters-ref",
    "replicas": 3,
    "cpu": "2",
    "memory": "3Gi",
}


def as_json(parameter: JobParameter) -> Any:
    value = SAMPLES[parameter.name]
    if parameter.kind is ParameterKind.ENVIRONMENT:
        return [{"name": name, "value": text} for name, text in value]
    return value


def as_form(parameter: JobParameter) -> str:
    value = as_json(parameter)
    return json.dumps(value) if parameter.kind is ParameterKind.ENVIRONMENT else str(value)


def as_cli(parameter: JobParameter) -> list[str]:
    value = SAMPLES[parameter.name]
    if not parameter.cli.startswith("-"):
        return [str(value)]
    if parameter.kind is ParameterKind.ENVIRONMENT:
        return [item for name, text in value for item in (parameter.cli, f"{name}={text}")]
    return [parameter.cli, str(value)]


def recorded(record: JobRecord, parameter: JobParameter) -> Any:
    """The parameter's value as the job keeps it, in the samples' shape."""
    holder: Any = record.parameters if parameter.kept else record
    value = getattr(holder, parameter.name)
    if parameter.kind is ParameterKind.ENVIRONMENT:
        return [(entry.name, entry.value) for entry in value]
    return value


def assert_every_sample_reached(record: JobRecord) -> None:
    for parameter in JOB_PARAMETERS:
        assert recorded(record, parameter) == SAMPLES[parameter.name], parameter.name


def only_job(service: JobService) -> JobRecord:
    (record,) = service.list_jobs(ANYONE)
    return record


def test_every_parameter_has_a_sample() -> None:
    assert [parameter.name for parameter in JOB_PARAMETERS] == list(SAMPLES)
    for parameter in JOB_PARAMETERS:
        if not parameter.required:
            assert SAMPLES[parameter.name] != parameter.default, parameter.name


def test_the_job_keeps_every_kept_parameter() -> None:
    kept = [parameter.name for parameter in JOB_PARAMETERS if parameter.kept]
    assert list(JobParameters.model_fields) == kept


def test_json_request(client: FlaskClient, service: JobService) -> None:
    body = {parameter.name: as_json(parameter) for parameter in JOB_PARAMETERS}
    response = client.put("/api/v1/job", json=body)
    assert response.status_code == 200, response.get_json()
    assert_every_sample_reached(only_job(service))


def test_uws_form(client: FlaskClient, service: JobService) -> None:
    form = {parameter.uws: as_form(parameter) for parameter in JOB_PARAMETERS}
    response = client.post("/uws/async", data=form)
    assert response.status_code == 303, response.text
    record = only_job(service)
    assert_every_sample_reached(record)
    shown = client.get(f"/uws/async/{record.job_id}/parameters").text
    for parameter in JOB_PARAMETERS:
        if parameter.kept and parameter.kind is not ParameterKind.ENVIRONMENT:
            assert f'id="{parameter.uws}"' in shown, parameter.name


def test_uws_lists_every_parameter_when_refusing_an_unknown_one(client: FlaskClient) -> None:
    response = client.post("/uws/async", data={"command": "true", "comand": "x"})
    assert response.status_code == 400
    for parameter in JOB_PARAMETERS:
        assert parameter.uws in response.text, parameter.name


def test_openapi_document() -> None:
    schemas = openapi_document()["components"]["schemas"]
    content = openapi_document()["paths"]["/api/v1/job"]["put"]["requestBody"]["content"]
    form = content["application/x-www-form-urlencoded"]["schema"]
    for parameter in JOB_PARAMETERS:
        assert parameter.name in schemas["JobRequest"]["properties"], parameter.name
        assert parameter.name in form["properties"], parameter.name
    required = [parameter.name for parameter in JOB_PARAMETERS if parameter.required]
    assert schemas["JobRequest"]["required"] == required


@pytest.fixture
def served(service: JobService) -> Iterator[str]:
    """The embedded app served over a real socket, as the client and CLI reach it."""
    server = create_server(create_embedded_app(service), host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    host, port = server.socket.getsockname()[:2]
    yield f"http://{host}:{port}"
    server.close()
    thread.join(timeout=5)


def test_client_submit(served: str, service: JobService) -> None:
    options = {
        parameter.name: SAMPLES[parameter.name]
        for parameter in JOB_PARAMETERS
        if not parameter.required and parameter.kind is not ParameterKind.ENVIRONMENT
    }
    (environment,) = [
        SAMPLES[parameter.name]
        for parameter in JOB_PARAMETERS
        if parameter.kind is ParameterKind.ENVIRONMENT
    ]
    with OCPSClient(served) as client:
        job = client.submit(SAMPLES["command"], environment=environment, **options)
    assert job["runId"] == SAMPLES["run_id"]
    assert_every_sample_reached(only_job(service))


def test_cli_submit(served: str, service: JobService, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = [item for parameter in JOB_PARAMETERS for item in as_cli(parameter)]
    assert cli.main(["submit", "--url", served, "--json", *arguments]) == cli.EXIT_OK
    job = json.loads(capsys.readouterr().out)
    record = only_job(service)
    assert job["jobId"] == record.job_id
    assert_every_sample_reached(record)


def test_cli_refuses_an_environment_entry_without_a_value(
    served: str, service: JobService, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["submit", "--url", served, "--env", "NOVALUE", "true"]) == cli.EXIT_USAGE
    assert "NAME=VALUE" in capsys.readouterr().err
    assert service.list_jobs(ANYONE) == []
