"""The UWS 1.1 interface in-process: schema-valid documents pyvo reads, 303s, WAIT, filters."""

from __future__ import annotations

import io
import os
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient
from lxml import etree
from pyvo.io.uws import parse_job, parse_job_list

from ocps_jobs.composition import build_service
from ocps_jobs.config import Settings
from ocps_jobs.errors import JobNotFoundError
from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import Caller, Phase
from ocps_jobs.service import JobService
from tests.conftest import REPO_ROOT
from tests.helpers import git, make_pipeline_repo, wait_until

# The reference documents sit beside the repository (../shared/reference); another place
# can be named with OCPS_REFERENCE_DIR (read at import, before settings are isolated).
REFERENCE_DIR = Path(
    os.environ.get("OCPS_REFERENCE_DIR") or REPO_ROOT.parent / "shared" / "reference"
)
UWS_XSD = REFERENCE_DIR / "UWS.xsd"
UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
UNKNOWN = "0123456789abcdef0123456789abcdef"
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z"
ANYONE = Caller()

# UWS.xsd imports the xlink schema from www.ivoa.net. Tests run offline, so that one
# import is answered with the two attributes UWS uses, as the IVOA xlink schema types them.
_XLINK_XSD = b"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
    targetNamespace="http://www.w3.org/1999/xlink">
  <xs:attribute name="type">
    <xs:simpleType><xs:restriction base="xs:string">
      <xs:enumeration value="simple"/><xs:enumeration value="extended"/>
      <xs:enumeration value="locator"/><xs:enumeration value="arc"/>
      <xs:enumeration value="resource"/><xs:enumeration value="title"/>
      <xs:enumeration value="none"/>
    </xs:restriction></xs:simpleType>
  </xs:attribute>
  <xs:attribute name="href" type="xs:anyURI"/>
</xs:schema>"""


class _OfflineXlink(etree.Resolver):
    def resolve(self, url: str, pubid: str, context: Any) -> Any:
        if url.lower().endswith("xlink.xsd"):
            return self.resolve_string(_XLINK_XSD, context)
        return None


@cache
def uws_schema() -> etree.XMLSchema:
    """The normative UWS 1.1 schema, read from ../shared/reference."""
    if not UWS_XSD.is_file():
        pytest.fail(
            f"The UWS 1.1 schema is not at {UWS_XSD}. The UWS tests validate every document "
            "against the reference copy beside the repository (../shared/reference/UWS.xsd); "
            "clone next to shared/, or set OCPS_REFERENCE_DIR to the folder holding UWS.xsd.",
            pytrace=False,
        )
    parser = etree.XMLParser(no_network=True)
    parser.resolvers.add(_OfflineXlink())
    return etree.XMLSchema(etree.parse(str(UWS_XSD), parser))


def valid_xml(data: bytes) -> Any:
    """The document, after checking it against UWS.xsd."""
    document = etree.fromstring(data)
    schema = uws_schema()
    assert schema.validate(document), f"{schema.error_log}\n{data.decode()}"
    return document


def check_job(data: bytes) -> Any:
    """A job document: schema-valid, version 1.1, readable by pyvo in pedantic mode."""
    document = valid_xml(data)
    assert document.tag == UWS + "job"
    assert document.get("version") == "1.1"
    # Every element JobSummary requires is there (nillable ones as xsi:nil, not omitted).
    names = [child.tag.removeprefix(UWS) for child in document]
    for required in ("jobId", "ownerId", "phase", "startTime", "endTime"):
        assert required in names
    for required in ("executionDuration", "destruction", "results"):
        assert required in names
    assert document.find(UWS + "executionDuration").text.isdigit()
    for name in ("creationTime", "startTime", "endTime", "destruction"):
        element = document.find(UWS + name)
        if element.get(XSI_NIL) != "true":
            assert re.fullmatch(TIME, element.text), (name, element.text)
    return parse_job(io.BytesIO(data), pedantic=True)


def check_job_list(data: bytes) -> Any:
    """A job list: schema-valid, version 1.1, readable by pyvo in pedantic mode."""
    document = valid_xml(data)
    assert document.tag == UWS + "jobs"
    assert document.get("version") == "1.1"
    return parse_job_list(io.BytesIO(data), pedantic=True)


def path_of(url: str) -> str:
    """The path (and query) of an absolute link, for the test client."""
    parts = urlsplit(url)
    assert parts.scheme in {"http", "https"} and parts.netloc, url
    return parts.path + (f"?{parts.query}" if parts.query else "")


def create(client: FlaskClient, **fields: Any) -> str:
    """POST /uws/async; the job's id from the 303's Location."""
    response = client.post("/uws/async", data=fields)
    assert response.status_code == 303, response.data
    location = response.headers["Location"]
    assert location.startswith("http://localhost/uws/async/")
    return location.rsplit("/", 1)[1]


def job(client: FlaskClient, job_id: str, query: str = "") -> Any:
    response = client.get(f"/uws/async/{job_id}{query}")
    assert response.status_code == 200, response.data
    assert response.mimetype == "text/xml"
    return check_job(response.data)


def finish(client: FlaskClient, job_id: str) -> Any:
    """Wait (with UWS WAIT itself) until the job is final."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parsed = job(client, job_id, "?WAIT=5")
        if parsed.phase in {"COMPLETED", "ERROR", "ABORTED"}:
            return parsed
    raise AssertionError("job did not finish")


def custom_client(tmp_path: Path, **overrides: Any) -> tuple[JobService, FlaskClient]:
    settings = Settings.from_env(data_dir=tmp_path / "custom", max_concurrent_jobs=2, **overrides)
    service = build_service(settings)
    return service, create_embedded_app(service).test_client()


# --- documents --------------------------------------------------------------------------------


def test_a_pending_job_document(client: FlaskClient) -> None:
    job_id = create(
        client,
        command="echo hi",
        RUNID="run-7",
        url="https://example.org/repo.git",
        commit_ref="main",
        env=["A=1", "B=x=y"],
    )
    parsed = job(client, job_id)
    assert parsed.jobid == job_id
    assert parsed.runid == "run-7"
    assert parsed.phase == "PENDING"
    assert parsed.ownerid is None
    assert parsed.starttime is None and parsed.endtime is None and parsed.destruction is None
    assert parsed.quote is None
    assert parsed.creationtime is not None
    assert parsed.executionduration.value == 0
    assert list(parsed.results) == []
    assert parsed.errorsummary is None
    assert [(p.id_, p.content) for p in parsed.parameters] == [
        ("command", "echo hi"),
        ("url", "https://example.org/repo.git"),
        ("commit_ref", "main"),
        ("env", "A=1"),
        ("env", "B=x=y"),
    ]
    document = etree.fromstring(client.get(f"/uws/async/{job_id}").data)
    assert [child.tag.removeprefix(UWS) for child in document] == [
        "jobId",
        "runId",
        "ownerId",
        "phase",
        "quote",
        "creationTime",
        "startTime",
        "endTime",
        "executionDuration",
        "destruction",
        "parameters",
        "results",
    ]
    for name in ("ownerId", "quote", "startTime", "endTime", "destruction"):
        element = document.find(UWS + name)
        assert element.get(XSI_NIL) == "true" and not element.text


def test_a_completed_job_lists_results_that_download(client: FlaskClient) -> None:
    job_id = create(
        client,
        command='mkdir -p $JOB_OUTPUT_DIR/d && echo "$GREETING" > $JOB_OUTPUT_DIR/d/hi.txt',
        env="GREETING=hello",
        PHASE="RUN",
    )
    parsed = finish(client, job_id)
    assert parsed.phase == "COMPLETED", parsed.errorsummary
    assert parsed.starttime is not None and parsed.endtime is not None
    assert parsed.errorsummary is None
    by_id = {result.id_: result for result in parsed.results}
    assert set(by_id) == {"d/hi.txt", "ocps-job.log"}
    hi = by_id["d/hi.txt"]
    assert hi.size == 6 and hi.mimetype == "text/plain"
    assert hi.href.startswith("http://localhost/api/v1/job/result/")
    download = client.get(path_of(hi.href))
    assert download.status_code == 200 and download.data == b"hello\n"

    results = client.get(f"/uws/async/{job_id}/results")
    assert results.status_code == 200
    document = valid_xml(results.data)
    assert document.tag == UWS + "results"
    assert {element.get("id") for element in document} == set(by_id)
    assert all(element.get(XLINK_HREF).startswith("http://") for element in document)

    parameters = client.get(f"/uws/async/{job_id}/parameters")
    document = valid_xml(parameters.data)
    assert [(e.get("id"), e.text) for e in document][1:] == [("env", "GREETING=hello")]


def test_an_error_job_has_an_error_summary_and_stays_valid_xml(client: FlaskClient) -> None:
    # stderr with an ANSI colour code: a control character XML 1.0 cannot carry.
    job_id = create(
        client, command="printf '\\033[31mfailed\\n' >&2; exit 3", PHASE="RUN", RUNID="x"
    )
    parsed = finish(client, job_id)
    assert parsed.phase == "ERROR"
    assert parsed.errorsummary.type_ == "fatal"
    message = parsed.errorsummary.message.content
    assert "exited with code 3" in message and "failed" in message
    error = client.get(f"/uws/async/{job_id}/error")
    assert error.status_code == 200 and error.mimetype == "text/plain"
    # The text/plain resource has the message without its terminal escapes (issue 19).
    assert error.get_data(as_text=True).endswith(": failed")


def test_job_info_tells_what_exactly_ran_and_stays_valid_xml(
    client: FlaskClient, tmp_path: Path
) -> None:
    repo = make_pipeline_repo(tmp_path)
    job_id = create(client, command="true", url=str(repo), commit_ref="v1", PHASE="RUN")
    parsed = finish(client, job_id)  # schema-valid and read by pyvo in pedantic mode
    assert parsed.phase == "COMPLETED"
    document = etree.fromstring(client.get(f"/uws/async/{job_id}").data)
    info = document.find(UWS + "jobInfo")
    assert info is not None and document[-1] is info  # JobSummary's last element
    assert info.findtext(UWS + "commitSha") == git(repo, "rev-parse", "v1^{commit}")
    # A job without a clone: no jobInfo at all.
    plain = create(client, command="true", PHASE="RUN")
    finish(client, plain)
    assert etree.fromstring(client.get(f"/uws/async/{plain}").data).find(UWS + "jobInfo") is None


def test_text_sub_resources(client: FlaskClient) -> None:
    job_id = create(client, command="true")
    texts = {
        name: client.get(f"/uws/async/{job_id}/{name}")
        for name in ("phase", "executionduration", "destruction", "error", "quote", "owner")
    }
    assert {name: r.status_code for name, r in texts.items()} == dict.fromkeys(texts, 200)
    assert all(r.mimetype == "text/plain" for r in texts.values())
    assert {name: r.get_data(as_text=True) for name, r in texts.items()} == {
        "phase": "PENDING",
        "executionduration": "0",
        "destruction": "",
        "error": "",
        "quote": "",
        "owner": "",
    }


# --- state changes ----------------------------------------------------------------------------


def test_phase_run_at_creation_or_on_phase_queues_before_the_303(
    client: FlaskClient, service: JobService
) -> None:
    pending = create(client, command="sleep 30")
    assert service.get_job(pending, ANYONE).phase.value == "pending"
    response = client.post(f"/uws/async/{pending}/phase", data={"PHASE": "RUN"})
    assert response.status_code == 303
    assert response.headers["Location"] == f"http://localhost/uws/async/{pending}"
    assert service.get_job(pending, ANYONE).phase.value in {"queued", "executing"}
    queued = create(client, command="sleep 30", phase="run")  # names and values any case
    assert service.get_job(queued, ANYONE).phase.value in {"queued", "executing"}
    for job_id in (pending, queued):
        client.post(f"/uws/async/{job_id}/phase", data={"PHASE": "ABORT"})


def test_abort_ends_aborted_with_end_time_and_results(client: FlaskClient) -> None:
    command = "echo partial > $JOB_OUTPUT_DIR/p.txt; echo written; sleep 60"
    job_id = create(client, command=command, PHASE="RUN")
    # Aborted once the partial output is written (its log says so), not merely executing.
    wait_until(lambda: b"written" in client.get(f"/api/v1/job/{job_id}/log").data)
    response = client.post(f"/uws/async/{job_id}/phase", data={"phase": "ABORT"})
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/uws/async/{job_id}")
    parsed = job(client, job_id)
    assert parsed.phase == "ABORTED"
    assert parsed.endtime is not None
    assert {result.id_ for result in parsed.results} == {"p.txt", "ocps-job.log"}
    assert parsed.errorsummary.message.content
    # Aborting again changes nothing; running an aborted job is a conflict.
    assert client.post(f"/uws/async/{job_id}/phase", data={"PHASE": "ABORT"}).status_code == 303
    conflict = client.post(f"/uws/async/{job_id}/phase", data={"PHASE": "RUN"})
    assert conflict.status_code == 409
    assert conflict.mimetype == "text/plain" and b"aborted" in conflict.data


def test_abort_of_a_completed_job_is_a_conflict(client: FlaskClient) -> None:
    job_id = create(client, command="true", PHASE="RUN")
    assert finish(client, job_id).phase == "COMPLETED"
    response = client.post(f"/uws/async/{job_id}/phase", data={"PHASE": "ABORT"})
    assert response.status_code == 409


def test_delete_and_action_delete_redirect_to_the_list(
    client: FlaskClient, service: JobService
) -> None:
    first = create(client, command="sleep 60", PHASE="RUN")
    second = create(client, command="true")
    deleted = client.delete(f"/uws/async/{first}")
    assert deleted.status_code == 303
    assert deleted.headers["Location"] == "http://localhost/uws/async"
    posted = client.post(f"/uws/async/{second}", data={"ACTION": "DELETE"})
    assert posted.status_code == 303
    assert posted.headers["Location"] == "http://localhost/uws/async"
    for job_id in (first, second):
        assert client.get(f"/uws/async/{job_id}").status_code == 404
    assert client.post(f"/uws/async/{second}", data={"ACTION": "DELETE"}).status_code == 404
    other = create(client, command="true")
    assert client.post(f"/uws/async/{other}", data={"ACTION": "STOP"}).status_code == 400
    assert client.post(f"/uws/async/{other}").status_code == 400


def test_execution_duration_is_clamped_and_enforced(tmp_path: Path) -> None:
    _, client = custom_client(tmp_path, max_execution_duration=3600)
    job_id = create(client, command="sleep 30")
    # New jobs get the maximum when no default is set: unlimited is clamped.
    assert client.get(f"/uws/async/{job_id}/executionduration").data == b"3600"
    cases = [("7200", "3600"), ("0", "3600"), ("60", "60"), ("1.4", "1")]
    for asked, got in cases:
        response = client.post(
            f"/uws/async/{job_id}/executionduration", data={"EXECUTIONDURATION": asked}
        )
        assert response.status_code == 303
        assert response.headers["Location"].endswith(f"/uws/async/{job_id}")
        assert client.get(f"/uws/async/{job_id}/executionduration").data == got.encode()
    for bad in ("-1", "ten", "", "1e3", "nan", "2147483648", "99999999999", "\u0663"):
        response = client.post(
            f"/uws/async/{job_id}/executionduration", data={"EXECUTIONDURATION": bad}
        )
        assert response.status_code == 400, bad
    started = time.monotonic()
    client.post(f"/uws/async/{job_id}/phase", data={"PHASE": "RUN"})
    parsed = finish(client, job_id)
    assert parsed.phase == "ABORTED"
    assert "execution duration of 1 s" in parsed.errorsummary.message.content
    assert time.monotonic() - started < 20
    late = client.post(f"/uws/async/{job_id}/executionduration", data={"EXECUTIONDURATION": "5"})
    assert late.status_code == 409


def test_creation_takes_execution_duration_and_destruction(tmp_path: Path) -> None:
    _, client = custom_client(tmp_path, max_execution_duration=100, default_execution_duration=10)
    when = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    job_id = create(
        client,
        command="true",
        EXECUTIONDURATION="50",
        DESTRUCTION=when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    )
    parsed = job(client, job_id)
    assert parsed.executionduration.value == 50
    assert client.get(f"/uws/async/{job_id}/destruction").get_data(as_text=True) == (
        when.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    assert job(client, create(client, command="true")).executionduration.value == 10


def test_destruction_is_clamped(tmp_path: Path) -> None:
    _, client = custom_client(tmp_path, max_destruction_seconds=86400)
    job_id = create(client, command="true")
    limit = client.get(f"/uws/async/{job_id}/destruction").get_data(as_text=True)
    assert limit  # the maximum applies to new jobs as their destruction time
    latest = datetime.fromisoformat(limit)
    assert timedelta(hours=23) < latest - datetime.now(UTC) <= timedelta(days=1)
    far = client.post(
        f"/uws/async/{job_id}/destruction", data={"DESTRUCTION": "2999-01-01T00:00:00Z"}
    )
    assert far.status_code == 303
    assert far.headers["Location"].endswith(f"/uws/async/{job_id}")
    assert client.get(f"/uws/async/{job_id}/destruction").get_data(as_text=True) == limit
    soon = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    assert (
        client.post(
            f"/uws/async/{job_id}/destruction", data={"DESTRUCTION": soon.isoformat()}
        ).status_code
        == 303
    )
    assert job(client, job_id).destruction.datetime.replace(tzinfo=UTC) == soon
    for bad in ("tomorrow", "", "2000-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00"):
        response = client.post(f"/uws/async/{job_id}/destruction", data={"DESTRUCTION": bad})
        assert response.status_code == 400, bad


def test_destruction_removes_the_job_and_its_results(
    client: FlaskClient, service: JobService
) -> None:
    job_id = create(client, command="echo x > $JOB_OUTPUT_DIR/x.txt", PHASE="RUN")
    assert finish(client, job_id).phase == "COMPLETED"
    objects = service.settings.data_dir / "objects"
    assert list(objects.rglob(f"*{job_id}*"))
    soon = datetime.now(UTC) + timedelta(seconds=2)
    response = client.post(
        f"/uws/async/{job_id}/destruction", data={"DESTRUCTION": soon.isoformat()}
    )
    assert response.status_code == 303
    assert client.get(f"/uws/async/{job_id}").status_code == 200
    wait_until(lambda: client.get(f"/uws/async/{job_id}").status_code == 404, timeout=10)
    assert client.get(f"/api/v1/job/{job_id}").status_code == 404
    wait_until(lambda: not list(objects.rglob(f"*{job_id}*")), timeout=10)
    assert not (service.settings.data_dir / "state" / "jobs" / f"{job_id}.json").exists()


def test_default_destruction_applies_and_sweeps(tmp_path: Path) -> None:
    service, client = custom_client(tmp_path, default_destruction_seconds=1)
    job_id = create(client, command="true")
    assert client.get(f"/uws/async/{job_id}/destruction").data
    wait_until(lambda: service.backend.get(job_id) is None, timeout=10)
    assert client.get(f"/uws/async/{job_id}/phase").status_code == 404


# --- creation parameters ----------------------------------------------------------------------


def test_environment_as_json_array_and_repeated_env(client: FlaskClient) -> None:
    job_id = create(
        client,
        COMMAND='echo "$ONE|$TWO|$THREE" > $JOB_OUTPUT_DIR/env.txt',
        ENVIRONMENT='[{"name": "ONE", "value": "1"}, {"name": "TWO", "value": "a b"}]',
        Env="THREE=x=3",
        phase="RUN",
    )
    parsed = finish(client, job_id)
    assert parsed.phase == "COMPLETED"
    href = next(r.href for r in parsed.results if r.id_ == "env.txt")
    assert client.get(path_of(href)).data == b"1|a b|x=3\n"


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({}, b"command"),
        ({"command": ""}, b"command"),
        ({"command": "true", "comand": "x"}, b"comand"),
        ({"command": "true", "env": "NOEQUALS"}, b"NAME=value"),
        ({"command": "true", "env": "1BAD=x"}, b"environment"),
        ({"command": "true", "env": "JOB_ID=x"}, b"reserved"),
        ({"command": "true", "environment": "{"}, b"JSON array"),
        ({"command": "true", "environment": "{}"}, b"JSON array"),
        ({"command": "true", "PHASE": "ABORT"}, b"RUN"),
        ({"command": "true", "EXECUTIONDURATION": "-5"}, b"EXECUTIONDURATION"),
        ({"command": "true", "DESTRUCTION": "soon"}, b"DESTRUCTION"),
        ({"command": "true", "replicas": "0"}, b"replicas"),
        ({"command": "true", "replicas": "many"}, b"replicas"),
        ({"command": "true", "replicas": "\u0663"}, b"replicas"),
        ({"command": "true", "replicas": "9" * 40}, b"replicas"),
        ({"command": "true", "url": "-oProxyCommand=x"}, b"url"),
        ({"command": ["a", "b"]}, b"more than once"),
    ],
)
def test_bad_creation_requests_are_400_text(
    client: FlaskClient, fields: dict[str, Any], fragment: bytes
) -> None:
    response = client.post("/uws/async", data=fields)
    assert response.status_code == 400, response.data
    assert response.mimetype == "text/plain"
    assert fragment in response.data


def test_creation_refuses_bodies_that_are_not_form_fields(client: FlaskClient) -> None:
    response = client.post("/uws/async", json={"command": "true"})
    assert response.status_code == 415 and response.mimetype == "text/plain"
    multipart = client.post(
        "/uws/async",
        data={"command": "true", "upload": (io.BytesIO(b"x"), "f.txt")},
        content_type="multipart/form-data",
    )
    assert multipart.status_code == 400
    big = client.post("/uws/async", data={"command": "x" * 300_000})
    assert big.status_code == 413
    ok = client.post("/uws/async", data={"command": "true"}, content_type="multipart/form-data")
    assert ok.status_code == 303


# --- WAIT -------------------------------------------------------------------------------------


def _start_later(service: JobService, job_id: str, delay: float) -> threading.Thread:
    def start() -> None:
        time.sleep(delay)
        service.start_job(job_id, ANYONE)

    thread = threading.Thread(target=start)
    thread.start()
    return thread


def test_wait_returns_when_the_phase_changes(client: FlaskClient, service: JobService) -> None:
    job_id = create(client, command="sleep 30")
    starter = _start_later(service, job_id, 0.5)
    started = time.monotonic()
    parsed = job(client, job_id, "?WAIT=30")
    elapsed = time.monotonic() - started
    starter.join()
    assert parsed.phase in {"QUEUED", "EXECUTING"}
    assert 0.4 <= elapsed < 10
    client.post(f"/uws/async/{job_id}/phase", data={"PHASE": "ABORT"})


def test_wait_with_a_phase_guard_that_does_not_match_returns_at_once(
    client: FlaskClient,
) -> None:
    job_id = create(client, command="sleep 30")
    started = time.monotonic()
    assert job(client, job_id, "?WAIT=30&PHASE=EXECUTING").phase == "PENDING"
    assert job(client, job_id, "?wait=30&phase=queued").phase == "PENDING"
    assert time.monotonic() - started < 5


def test_wait_on_a_final_job_returns_at_once(client: FlaskClient) -> None:
    job_id = create(client, command="true", PHASE="RUN")
    assert finish(client, job_id).phase == "COMPLETED"
    started = time.monotonic()
    assert job(client, job_id, "?WAIT=-1").phase == "COMPLETED"
    assert time.monotonic() - started < 5


def test_wait_is_capped(tmp_path: Path) -> None:
    _, client = custom_client(tmp_path, wait_max_seconds=1)
    job_id = create(client, command="true")
    for query in ("?WAIT=-1", "?WAIT=600", "?WAIT=30&PHASE=PENDING", "?WAIT=12345678901"):
        started = time.monotonic()
        assert job(client, job_id, query).phase == "PENDING"
        assert 0.9 <= time.monotonic() - started < 5, query
    started = time.monotonic()
    assert job(client, job_id, "?WAIT=0").phase == "PENDING"
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    "query", ["?WAIT=abc", "?WAIT=-2", "?WAIT=1.5", "?WAIT=\u0663", "?WAIT=1&PHASE=RUNNING"]
)
def test_bad_wait_is_400(client: FlaskClient, query: str) -> None:
    job_id = create(client, command="true")
    response = client.get(f"/uws/async/{job_id}{query}")
    assert response.status_code == 400 and response.mimetype == "text/plain"


# --- the job list -----------------------------------------------------------------------------


@pytest.fixture
def three_jobs(client: FlaskClient) -> list[str]:
    """A completed, then a pending, then an aborted job, created a second apart."""
    done = create(client, command="true", PHASE="RUN")
    assert finish(client, done).phase == "COMPLETED"
    time.sleep(1.1)
    pending = create(client, command="true")
    time.sleep(1.1)
    aborted = create(client, command="true")
    client.post(f"/uws/async/{aborted}/phase", data={"PHASE": "ABORT"})
    return [done, pending, aborted]


def listed(client: FlaskClient, query: str = "") -> list[str]:
    response = client.get(f"/uws/async{query}")
    assert response.status_code == 200, response.data
    assert response.mimetype == "text/xml"
    return [reference.jobid for reference in check_job_list(response.data)]


def test_job_list_documents_and_filters(client: FlaskClient, three_jobs: list[str]) -> None:
    done, pending, aborted = three_jobs
    assert listed(client) == [done, pending, aborted]
    response = client.get("/uws/async")
    references = check_job_list(response.data)
    assert [r.phase for r in references] == ["COMPLETED", "PENDING", "ABORTED"]
    document = etree.fromstring(response.data)
    assert [e.get(XLINK_HREF) for e in document] == [
        f"http://localhost/uws/async/{job_id}" for job_id in three_jobs
    ]
    assert listed(client, "?PHASE=PENDING") == [pending]
    assert listed(client, "?PHASE=COMPLETED&PHASE=aborted") == [done, aborted]
    assert listed(client, "?phase=EXECUTING") == []
    assert listed(client, "?LAST=2") == [aborted, pending]
    assert listed(client, "?LAST=0") == []
    # More than there are is all of them, newest first, however many digits it takes.
    for many in ("12345678901", "9" * 5000):
        assert listed(client, f"?LAST={many}") == [aborted, pending, done]
    assert listed(client, "?LAST=2&PHASE=COMPLETED&PHASE=PENDING") == [pending, done]
    created = {
        r.jobid: r.creationtime.datetime.replace(tzinfo=UTC)
        for r in check_job_list(client.get("/uws/async").data)
    }
    after = created[done].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert listed(client, f"?AFTER={after}") == [pending, aborted]
    assert listed(client, f"?after={after}&LAST=1") == [aborted]
    assert listed(client, f"?AFTER={after}&PHASE=COMPLETED") == []
    assert listed(client, "?AFTER=2999-01-01T00:00:00Z") == []
    assert listed(client, "?AFTER=2000-01-01") == [done, pending, aborted]


def test_archived_jobs_are_listed_only_when_asked_for(
    client: FlaskClient, service: JobService
) -> None:
    kept = create(client, command="true")
    archived = create(client, command="true")
    backend: Any = service.backend
    with backend._lock:  # the embedded backend never archives: mark one by hand
        backend._records[archived].phase = Phase.ARCHIVED
    assert listed(client) == [kept]
    assert listed(client, "?PHASE=ARCHIVED") == [archived]
    assert sorted(listed(client, "?PHASE=ARCHIVED&PHASE=PENDING")) == sorted([kept, archived])
    assert job(client, archived).phase == "ARCHIVED"


@pytest.mark.parametrize(
    "query",
    [
        "?PHASE=RUNNING",
        "?PHASE=",
        "?AFTER=yesterday",
        "?AFTER=9999-12-31T23:59:59-14:00",
        "?LAST=-1",
        "?LAST=x",
        "?LAST=\u0663",  # ARABIC-INDIC DIGIT THREE: a digit, not an ASCII one
        "?LAST=1&LAST=2",
    ],
)
def test_bad_list_filters_are_400(client: FlaskClient, query: str) -> None:
    response = client.get(f"/uws/async{query}")
    assert response.status_code == 400 and response.mimetype == "text/plain"


# --- unknown jobs and routes ------------------------------------------------------------------

SUB_RESOURCES = [
    "phase",
    "executionduration",
    "destruction",
    "error",
    "quote",
    "results",
    "parameters",
    "owner",
]

UNKNOWN_JOB_REQUESTS = [
    ("GET", ""),
    ("GET", "?WAIT=5"),
    ("DELETE", ""),
    ("POST", "", {"ACTION": "DELETE"}),
    ("POST", "/phase", {"PHASE": "RUN"}),
    ("POST", "/phase", {"PHASE": "ABORT"}),
    ("POST", "/executionduration", {"EXECUTIONDURATION": "10"}),
    ("POST", "/destruction", {"DESTRUCTION": "2999-01-01T00:00:00Z"}),
    *[("GET", f"/{name}") for name in SUB_RESOURCES],
]


@pytest.mark.parametrize("job_id", [UNKNOWN, "not-a-job-id"])
@pytest.mark.parametrize("request_", UNKNOWN_JOB_REQUESTS, ids=lambda r: f"{r[0]}{r[1]}")
def test_unknown_jobs_are_404_on_every_resource(
    client: FlaskClient, job_id: str, request_: tuple[Any, ...]
) -> None:
    method, suffix, *data = request_
    started = time.monotonic()
    response = client.open(
        f"/uws/async/{job_id}{suffix}", method=method, data=data[0] if data else None
    )
    assert response.status_code == 404, response.data
    assert response.mimetype == "text/plain"
    assert time.monotonic() - started < 3


def test_uws_routes_answer_404_and_405_as_text(client: FlaskClient) -> None:
    job_id = create(client, command="true")
    missing = client.get(f"/uws/async/{job_id}/nothing")
    assert missing.status_code == 404 and missing.mimetype == "text/plain"
    assert client.get("/uws/sync").status_code == 404
    wrong = client.put(f"/uws/async/{job_id}/phase")
    assert wrong.status_code == 405 and wrong.mimetype == "text/plain"
    assert wrong.headers["Allow"] == "GET, HEAD, POST"
    assert client.post(f"/uws/async/{job_id}/results").status_code == 405
    assert client.post(f"/uws/async/{job_id}/phase", data={"PHASE": "HOLD"}).status_code == 400
    assert client.post(f"/uws/async/{job_id}/phase").status_code == 400
    # The JSON interface keeps its JSON error body.
    assert client.get(f"/api/v1/job/{UNKNOWN}").get_json()["error"] == "job_not_found"


def test_public_url_is_used_for_links(tmp_path: Path) -> None:
    _, client = custom_client(tmp_path, public_url="https://ocps.example.org/base")
    response = client.post("/uws/async", data={"command": "true"})
    assert response.headers["Location"].startswith("https://ocps.example.org/base/uws/async/")


def test_destroy_expired_use_case(client: FlaskClient, service: JobService) -> None:
    job_id = create(client, command="true")
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    service.set_destruction(job_id, ANYONE, soon)
    assert service.destroy_expired() == []
    wait_until(lambda: datetime.now(UTC) > soon + timedelta(seconds=0.1), timeout=5)
    with pytest.raises(JobNotFoundError):
        service.get_job(job_id, ANYONE)  # gone for every request at once
    assert set(service.destroy_expired()) <= {job_id}  # the embedded sweeper may be first
    wait_until(lambda: service.backend.get(job_id) is None, timeout=5)
