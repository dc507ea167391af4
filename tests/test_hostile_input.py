"""Hostile input: no 500, no byte outside a job's results, values reach the job byte for byte."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from ocps_jobs.service import JobService
from tests.test_local_backend import finish, result_text, submit


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def two_jobs(client: FlaskClient) -> tuple[str, str]:
    first = submit(client, command="echo one > $JOB_OUTPUT_DIR/mine.txt")
    second = submit(client, command="echo secret > $JOB_OUTPUT_DIR/secret.txt")
    assert finish(client, first)["phase"] == "completed"
    assert finish(client, second)["phase"] == "completed"
    return first, second


def test_result_ids_cannot_leave_a_jobs_results(
    client: FlaskClient, service: JobService, two_jobs: tuple[str, str]
) -> None:
    first, second = two_jobs
    data_dir = service.settings.data_dir
    (data_dir / "outside.txt").write_text("outside")
    attempts = [
        b64("/etc/passwd"),
        b64("../../../../etc/passwd"),
        b64(f"jobs/{first}/out/../../{second}/out/secret.txt"),
        b64(f"jobs/{first}/out/../job.json"),
        b64(f"jobs/{first}/manifest.json"),
        b64(f"jobs/{first}/job.json"),
        b64(f"jobs/{first}/out/../../../../outside.txt"),
        b64(f"jobs/{first}/out/secret.txt"),  # a file of another job under this job's id
        b64(f"/uws/jobs/{first}/out/../../{second}/out/secret.txt"),
        b64(str(data_dir / "outside.txt")),
        b64(f"jobs/{'f' * 32}/out/mine.txt"),
        "..%2F..%2Fetc%2Fpasswd",
        "%2E%2E",
    ]
    for result_id in attempts:
        response = client.get(f"/api/v1/job/result/{result_id}")
        assert response.status_code == 404, result_id
        assert response.get_json()["error"] == "result_not_found"
        assert b"root:" not in response.data and b"secret" not in response.data
    for index in ["-1", "abc", "\u0663", "1.0"]:  # \u0663: ARABIC-INDIC DIGIT THREE
        response = client.get(f"/api/v1/job/result/{first}/{index}")
        assert response.status_code == 400, index
        assert "non-negative integer" in response.get_json()["message"]
    for index in ["99", "2330977089", "9" * 5000]:  # well-formed, past the job's results
        response = client.get(f"/api/v1/job/result/{first}/{index}")
        assert response.status_code == 404, index
        assert response.get_json()["error"] == "result_not_found"
    # The job's own file stays reachable, by ID and by index.
    assert result_text(client, first, "mine.txt") == "one\n"
    assert client.get(f"/api/v1/job/result/{first}/0").status_code == 200


@pytest.mark.parametrize(
    "job_id",
    [
        "%2E%2E",
        "..",
        "%2E%2E%2F%2E%2E",
        ".",
        "*",
        "0" * 32,
        "E13ED9F2803842409763B185D4F490E2",
        "'; DROP TABLE jobs; --",
        "%00",
        "x" * 5000,
    ],
)
def test_job_ids_that_are_not_jobs_are_404_everywhere(
    client: FlaskClient, service: JobService, two_jobs: tuple[str, str], job_id: str
) -> None:
    for method, suffix in [
        ("DELETE", ""),
        ("GET", ""),
        ("GET", "/phase"),
        ("GET", "/results"),
        ("GET", "/parameters"),
    ]:
        response = client.open(f"/api/v1/job/{job_id}{suffix}", method=method)
        assert response.status_code in (404, 405), (method, job_id, response.status_code)
        assert response.is_json
    # Nothing was deleted: both jobs and the data dir are intact.
    assert len(client.get("/api/v1/job").get_json()) == 2
    assert (service.settings.data_dir / "state").is_dir()


SPECIAL_VALUES = [
    "key: value",
    "value # not a comment",
    "'single' \"double\" `backtick` $HOME ${PATH} \\backslash",
    "multi\nline\nvalue\n",
    "- yaml: [list]\n  {flow: map}",
    "ünïcødé ✓ 日本",
    "   leading and trailing spaces   ",
    "",
    "tab\there\rcarriage",
]


def test_commands_and_values_reach_the_job_byte_for_byte(client: FlaskClient) -> None:
    environment = [{"name": f"V{n}", "value": value} for n, value in enumerate(SPECIAL_VALUES)]
    writes = "; ".join(
        f'printf "%s" "$V{n}" > "$JOB_OUTPUT_DIR/v{n}"' for n in range(len(SPECIAL_VALUES))
    )
    command = (
        writes
        + "; # a comment: with colon\n"
        + "echo 'it''s: \"quoted\"' > \"$JOB_OUTPUT_DIR/command.txt\""
    )
    job_id = submit(client, command=command, environment=environment, run_id="run: #1 'x'")
    job = finish(client, job_id)
    assert job["phase"] == "completed", job["errorSummary"]
    assert job["runId"] == "run: #1 'x'"
    assert job["parameters"]["command"] == ["/bin/bash", "-c", command]
    for n, value in enumerate(SPECIAL_VALUES):
        assert result_text(client, job_id, f"v{n}") == value
    assert result_text(client, job_id, "command.txt") == 'its: "quoted"\n'


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"\xff\xfe\x00garbage", "application/json", 400),
        (b"[1, 2, 3]", "application/json", 400),
        (b'"just a string"', "application/json", 400),
        (b"null", "application/json", 400),
        (b"[" * 200_000, "application/json", 400),
        (b'{"command": 5}', "application/json", 400),
        (b'{"command": "true", "environment": "A=1"}', "application/json", 400),
        (
            b'{"command": "true", "environment": [{"name": "X", "value": 1}]}',
            "application/json",
            400,
        ),
        (b'{"command": "true", "replicas": 1e999}', "application/json", 400),
        (b'{"command": "true", "kind": "Pod"}', "application/json", 400),
        (
            b'{"command": "true", "environment": [{"name": "JOB_ID", "value": "x"}]}',
            "application/json",
            400,
        ),
        (b"command=true&environment=notjson", "application/x-www-form-urlencoded", 400),
        (b"command=true&replicas=two", "application/x-www-form-urlencoded", 400),
        (b"command=a&command=b", "application/x-www-form-urlencoded", 400),
        (b"<job/>", "application/xml", 415),
        (b"command: true", "text/yaml", 415),
        (b"", "application/json", 400),
        (b"", None, 400),
    ],
)
def test_malformed_bodies_are_4xx_json(client: FlaskClient, body, content_type, status) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.put("/api/v1/job", data=body, headers=headers)
    assert response.status_code == status, response.data[:300]
    error = response.get_json()
    assert set(error) == {"error", "message"}
    assert len(response.data) < 2000
    assert client.get("/api/v1/job").get_json() == []


def test_a_deeply_nested_json_body_is_400_saying_so(client: FlaskClient) -> None:
    response = client.put("/api/v1/job", data=b"[" * 200_000, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["message"] == "Malformed JSON body: nested too deeply"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/api/v1/job", b"command=caf%E9"),  # Latin-1, percent-encoded
        ("PUT", "/api/v1/job", "command=caf\u00e9".encode("latin-1")),  # raw Latin-1 byte
        ("POST", "/uws/async", b"command=echo+%ff"),
        ("POST", "/uws/async?RUNID=%ff", b"command=true"),
    ],
)
def test_form_fields_that_are_not_utf8_are_400_not_altered(
    client: FlaskClient, method: str, path: str, body: bytes
) -> None:
    response = client.open(
        path, method=method, data=body, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 400, response.data[:300]
    assert b"not UTF-8 once percent-decoded" in response.data
    assert client.get("/api/v1/job").get_json() == []


def test_huge_bodies_are_413(client: FlaskClient) -> None:
    huge = json.dumps({"command": "true", "run_id": "x" * 300_000}).encode()
    response = client.put("/api/v1/job", data=huge, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"] == "payload_too_large"
    many = [{"name": f"V{n}", "value": "x" * 1000} for n in range(300)]
    response = client.put("/api/v1/job", json={"command": "true", "environment": many})
    assert response.status_code == 413
    assert client.get("/api/v1/job").get_json() == []


def test_form_encoded_and_charset_json_are_accepted(client: FlaskClient) -> None:
    form = client.put(
        "/api/v1/job",
        data={
            "command": "echo form > $JOB_OUTPUT_DIR/f",
            "run_id": "form-job",
            "environment": json.dumps([{"name": "A", "value": "b"}]),
            "replicas": "1",
        },
    )
    assert form.status_code == 200, form.data
    assert form.get_json()["runId"] == "form-job"
    charset = client.put(
        "/api/v1/job",
        data=json.dumps({"command": "true"}).encode("utf-8"),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert charset.status_code == 200
    assert finish(client, form.get_json()["jobId"])["phase"] == "completed"


def test_range_requests(client: FlaskClient, service: JobService, tmp_path: Path) -> None:
    job_id = submit(
        client,
        command="printf '0123456789' > $JOB_OUTPUT_DIR/digits.txt; : > $JOB_OUTPUT_DIR/empty",
    )
    job = finish(client, job_id)
    ids = {item["uri"].rsplit("/", 1)[1]: item["id"] for item in job["results"]}
    url = f"/api/v1/job/result/{ids['digits.txt']}"
    cases = {
        "bytes=2-5": (206, b"2345", "bytes 2-5/10"),
        "bytes=7-": (206, b"789", "bytes 7-9/10"),
        "bytes=-3": (206, b"789", "bytes 7-9/10"),
        # A suffix longer than the file is the whole file (RFC 9110 section 14.1.2).
        "bytes=-243": (206, b"0123456789", "bytes 0-9/10"),
        "bytes=-10": (206, b"0123456789", "bytes 0-9/10"),
        "bytes=5-100": (206, b"56789", "bytes 5-9/10"),
        "bytes=0-1,4-5": (200, b"0123456789", None),
        "garbage": (200, b"0123456789", None),
        # A unit other than bytes is ignored (RFC 9110 section 14.2): the whole file.
        "items=0-1": (200, b"0123456789", None),
        "items=20-30": (200, b"0123456789", None),
    }
    for header, (status, body, content_range) in cases.items():
        response = client.get(url, headers={"Range": header})
        assert response.status_code == status, header
        assert response.data == body
        assert response.headers.get("Content-Range") == content_range
        assert response.headers["Content-Length"] == str(len(body))
    unsatisfiable = client.get(url, headers={"Range": "bytes=10-20"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == "bytes */10"
    empty = client.get(f"/api/v1/job/result/{ids['empty']}", headers={"Range": "bytes=0-5"})
    assert empty.status_code == 200 and empty.data == b""


def test_downloads_never_render_active_content_inline(client: FlaskClient) -> None:
    job_id = submit(client, command="echo '<script>alert(1)</script>' > $JOB_OUTPUT_DIR/page.html")
    job = finish(client, job_id)
    (item,) = [r for r in job["results"] if r["uri"].endswith("page.html")]
    response = client.get(f"/api/v1/job/result/{item['id']}")
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
