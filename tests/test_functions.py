"""The three Knative functions in-process, through functions-framework's own app factory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from flask.testing import FlaskClient

from tests.conftest import FUNCTIONS
from tests.helpers import wait_for_phase

JOB = "0" * 32


def test_a_job_through_all_three_functions(functions: dict[str, FlaskClient]) -> None:
    created = functions["create_job"].put(
        "/api/v1/job",
        json={"command": 'echo "$JOB_ID" > "$JOB_OUTPUT_DIR/id.txt"', "run_id": "fn-test"},
    )
    assert created.status_code == 200
    job = created.get_json()
    job_id = job["jobId"]
    assert job["runId"] == "fn-test"
    query = functions["query_job"]
    wait_for_phase(lambda: query.get(f"/api/v1/job/{job_id}/phase").get_json(), {"completed"})
    listed = query.get("/api/v1/job?phase=completed").get_json()
    assert [item["jobId"] for item in listed] == [job_id]
    results = functions["results"].get(f"/api/v1/job/{job_id}/results").get_json()
    by_name = {item["uri"].rsplit("/", 1)[1]: item for item in results}
    assert set(by_name) == {"id.txt", "ocps-job.log"}
    download = functions["results"].get(f"/api/v1/job/result/{by_name['id.txt']['id']}")
    assert download.status_code == 200
    assert download.data == f"{job_id}\n".encode()
    deleted = functions["create_job"].delete(f"/api/v1/job/{job_id}")
    assert deleted.get_json() == {"status": "ok", "message": "", "code": 200}
    assert query.get(f"/api/v1/job/{job_id}").status_code == 404


@pytest.mark.parametrize(
    ("function", "method", "path", "status"),
    [
        ("create_job", "GET", f"/api/v1/job/{JOB}", 405),
        ("create_job", "GET", "/", 404),
        ("query_job", "PUT", "/api/v1/job", 405),
        ("query_job", "GET", "/api/v1/job/result/abc", 404),
        ("results", "DELETE", "/api/v1/job/result/abc", 405),
        ("results", "GET", f"/api/v1/job/{JOB}", 404),
    ],
)
def test_functions_refuse_what_is_not_theirs(
    functions: dict[str, FlaskClient], function: str, method: str, path: str, status: int
) -> None:
    response = functions[function].open(path, method=method)
    assert response.status_code == status
    assert response.is_json
    assert set(response.get_json()) == {"error", "message"}
    if status == 405:
        assert response.headers["Allow"]


def test_openapi_is_served_by_query_job(functions: dict[str, FlaskClient]) -> None:
    document = functions["query_job"].get("/api/v1/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    assert "/api/v1/job/{jobId}" in document["paths"]
    request_schema = document["components"]["schemas"]["JobRequest"]
    assert request_schema["required"] == ["command"]
    assert request_schema["additionalProperties"] is False
    # The same fields as form fields: each a string, the same one required, no others.
    create = document["paths"]["/api/v1/job"]["put"]["requestBody"]["content"]
    form_schema = create["application/x-www-form-urlencoded"]["schema"]
    assert form_schema["required"] == ["command"]
    assert form_schema["additionalProperties"] is False
    assert set(form_schema["properties"]) == set(request_schema["properties"])
    types = {name: field["type"] for name, field in form_schema["properties"].items()}
    assert types == {name: "integer" if name == "replicas" else "string" for name in types}
    replicas = request_schema["properties"]["replicas"]
    assert form_schema["properties"]["replicas"]["maximum"] == replicas["maximum"]
    assert "JSON array" in form_schema["properties"]["environment"]["description"]
    assert form_schema["properties"]["environment"]["contentMediaType"] == "application/json"
    for name in ("command", "url"):  # text keeps its limits, optional or not
        declared = request_schema["properties"][name]
        as_string = next(b for b in declared.get("anyOf", [declared]) if b["type"] == "string")
        assert form_schema["properties"][name]["maxLength"] == as_string["maxLength"]
        assert form_schema["properties"][name]["pattern"] == as_string["pattern"]
    assert form_schema["properties"]["command"]["minLength"] == 1
    variable = document["components"]["schemas"]["EnvironmentVariable-Input"]["properties"]["name"]
    assert set(variable["not"]["enum"]) == {"JOB_ID", "JOB_OUTPUT_DIR", "JOB_SOURCE_DIR"} | {
        "SRC_GIT_URL",
        "GIT_COMMIT_REF",
    }


def test_the_readiness_probe_needs_no_credentials_when_authentication_is_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from functions_framework import create_app

    from tests.conftest import FUNCTIONS, REPO_ROOT

    ksvc = yaml.safe_load((REPO_ROOT / "knative" / "service-query-job.yaml").read_text())
    (container,) = ksvc["spec"]["template"]["spec"]["containers"]
    probe = container["readinessProbe"]["httpGet"]["path"]
    monkeypatch.setenv("OCPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("OCPS_AUTH_REQUIRED", "true")
    monkeypatch.setenv("OCPS_AUTH_TOKENS", '{"tok-alice": "alice"}')
    query = create_app("query_job", str(FUNCTIONS / "query_job" / "main.py")).test_client()
    assert query.get(probe).status_code == 200  # Knative's probe carries no credentials
    assert query.get("/api/v1/job").status_code == 401  # everything else still needs them
    listed = query.get("/api/v1/job", headers={"Authorization": "Bearer tok-alice"})
    assert listed.status_code == 200


def test_a_function_with_bad_settings_does_not_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions_framework import create_app

    from ocps_jobs.observability.logs import flush_logging
    from tests.conftest import FUNCTIONS

    monkeypatch.setenv("OCPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("OCPS_MAX_CONCURRENT_JOBS", "many")
    flush_logging()  # earlier tests' lines
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        create_app("query_job", str(FUNCTIONS / "query_job" / "main.py"))
    assert stopped.value.code not in (0, None)
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines() if text]
    assert line["level"] == "CRITICAL"
    assert "OCPS_MAX_CONCURRENT_JOBS" in line["message"]


def test_the_web_view_loads_on_its_first_page_not_at_a_functions_start(tmp_path: Path) -> None:
    # In a fresh interpreter, as Knative starts the function: its start (a cold start)
    # imports the web view's routes only; the first page request loads the view.
    script = f"""
import os, sys
os.environ.update(OCPS_DATA_DIR={str(tmp_path / "data")!r}, OCPS_AUTH_REQUIRED="false")
from functions_framework import create_app
from ocps_jobs.http.web_routes import WEB_VIEW_MODULE
client = create_app("query_job", {str(FUNCTIONS / "query_job" / "main.py")!r}).test_client()
started = WEB_VIEW_MODULE in sys.modules
page = client.get("/", headers={{"Accept": "text/html"}})
print("RESULT", started, page.status_code, WEB_VIEW_MODULE in sys.modules, b"<table" in page.data)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    (result,) = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert result == "RESULT False 200 True True"
