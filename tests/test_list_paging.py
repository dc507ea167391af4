"""JSON list paging (limit, cursor, Link) and the CLI's pages, on the embedded server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from waitress import create_server

from ocps_jobs import cli
from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import Caller, JobRequest
from ocps_jobs.service import JobService

ANYONE = Caller()


@pytest.fixture
def job_ids(service: JobService) -> list[str]:
    """Five pending jobs, oldest first (creation times are to the second: a second apart)."""
    made = []
    for number in range(5):
        if number:
            time.sleep(1.01)
        made.append(service.create_job(JobRequest(command="true"), ANYONE, start=False).job_id)
    return made


def follow(client: FlaskClient, path: str) -> list[list[str]]:
    pages = []
    while True:
        response = client.get(path)
        assert response.status_code == 200
        pages.append([job["jobId"] for job in response.get_json()])
        link = response.headers.get("Link")
        if link is None:
            return pages
        assert link.endswith('>; rel="next"')
        path = link[1 : link.index(">")]


def test_pages_cover_every_job_newest_first(client: FlaskClient, job_ids: list[str]) -> None:
    assert [job["jobId"] for job in client.get("/api/v1/job").get_json()] == job_ids
    assert follow(client, "/api/v1/job?limit=2") == [
        job_ids[:2:-1],
        job_ids[2:0:-1],
        job_ids[:1],
    ]
    assert follow(client, "/api/v1/job?limit=5") == [job_ids[::-1]]
    assert follow(client, "/api/v1/job?limit=2&phase=completed") == [[]]


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=1001", "limit=two", "cursor=../x", "cursor=1-abc"]
)
def test_bad_paging_parameters_are_400(client: FlaskClient, query: str) -> None:
    response = client.get(f"/api/v1/job?{query}")
    assert response.status_code == 400
    assert response.get_json()["error"]


@pytest.fixture
def served(service: JobService) -> Iterator[str]:
    server = create_server(create_embedded_app(service), host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    host, port = server.socket.getsockname()[:2]
    yield f"http://{host}:{port}"
    server.close()
    thread.join(timeout=5)


def test_cli_list_pages(
    served: str, job_ids: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["list", "--url", served, "--json", "--limit", "3"]) == cli.EXIT_OK
    first = capsys.readouterr()
    assert [job["jobId"] for job in json.loads(first.out)] == job_ids[:1:-1]
    hint = first.err.strip()
    assert hint.startswith("more jobs: ocps-jobs list --cursor ")
    cursor = hint.rsplit(" ", 1)[1]
    arguments = ["list", "--url", served, "--json", "--limit", "3", "--cursor", cursor]
    assert cli.main(arguments) == cli.EXIT_OK
    last = capsys.readouterr()
    assert [job["jobId"] for job in json.loads(last.out)] == job_ids[1::-1]
    assert last.err == ""
    with pytest.raises(SystemExit) as refused:
        cli.main(["list", "--url", served, "--limit", "0"])
    assert refused.value.code == cli.EXIT_USAGE


@pytest.mark.parametrize("path", ["/api/v1/job", "/api/v1/job/{job_id}/results"])
def test_a_query_parameter_the_document_does_not_name_is_400(
    client: FlaskClient, path: str
) -> None:
    job_id = client.put("/api/v1/job", json={"command": "true"}).get_json()["jobId"]
    response = client.get(path.format(job_id=job_id) + "?limit=5&page=2")
    assert response.status_code == 400
    assert "page" in response.get_json()["message"]
