"""The web view's pages over the embedded app: owner isolation, CSRF, filters, long polls.

The same authentication and owner checks as the API (tokens, trusted header, admin), HTML
that reads without JavaScript, an abort no cross-site request can trigger, and the long
polls that keep the pages current.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from ocps_jobs.backends.local import LocalBackend
from ocps_jobs.composition import build_service, build_store
from ocps_jobs.http import create_embedded_app
from ocps_jobs.http.web import ABORT_HEADER
from ocps_jobs.http.webpages import JOBS_PER_PAGE, LOG_TAIL_BYTES
from ocps_jobs.models import Caller
from ocps_jobs.service import JobPage, JobService, ListQuery
from tests.helpers import wait_for_phase
from tests.test_isolation import (
    ADMIN_HEADER,
    ADMIN_TOKEN,
    ALICE,
    BOB_HEADER,
    BOB_TOKEN,
    auth_settings,
)

SAME_ORIGIN = {ABORT_HEADER: "abort", "Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}


class Site:
    """One service with authentication on; alice's finished and pending jobs, bob's one."""

    def __init__(self, service: JobService) -> None:
        self.service = service
        self.client: FlaskClient = create_embedded_app(service).test_client()
        self.alice_done = self.create(ALICE, "echo alice-secret > $JOB_OUTPUT_DIR/alice.txt")
        self.bob_done = self.create(BOB_TOKEN, "echo bob-output > $JOB_OUTPUT_DIR/bob.txt")
        self.finish(self.alice_done, ALICE)
        self.finish(self.bob_done, BOB_TOKEN)

    def create(self, headers: dict[str, str], command: str, run_id: str = "") -> str:
        body = {"command": command, "run_id": run_id or f"run-of-{headers}"}
        response = self.client.put("/api/v1/job", json=body, headers=headers)
        assert response.status_code == 200, response.data
        return str(response.get_json()["jobId"])

    def pending(self, headers: dict[str, str], run_id: str) -> str:
        data = {"command": "true", "RUNID": run_id}
        response = self.client.post("/uws/async", data=data, headers=headers)
        assert response.status_code == 303, response.data
        return str(response.headers["Location"].rsplit("/", 1)[1])

    def phase(self, job_id: str, headers: dict[str, str]) -> str:
        return str(self.client.get(f"/api/v1/job/{job_id}/phase", headers=headers).get_json())

    def finish(self, job_id: str, headers: dict[str, str]) -> None:
        wait_for_phase(lambda: self.phase(job_id, headers), {"completed", "error", "aborted"})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    settings = auth_settings(tmp_path_factory.mktemp("web") / "data")
    store = build_store(settings)
    store.ensure_ready()
    service = JobService(settings, LocalBackend(settings, store), store)
    yield Site(service)
    service.close()


def shown_job_ids(html: str) -> set[str]:
    return set(re.findall(r'data-job-id="([0-9a-f]{32})"', html))


def test_pages_need_the_apis_credentials(site: Site) -> None:
    for path in ("/", f"/web/jobs/{site.alice_done}", "/web/jobs/changes"):
        response = site.client.get(path)
        assert response.status_code == 401, path
        assert b"alice" not in response.data
        bad = site.client.get(path, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401, path
    # The stylesheet and script hold nothing of anyone's.
    assert site.client.get("/web/static/web.css").status_code == 200
    assert site.client.get("/web/static/../web.py").status_code == 404


@pytest.mark.parametrize("bob", [BOB_TOKEN, BOB_HEADER], ids=["bearer", "header"])
def test_another_owners_jobs_are_neither_listed_nor_shown(site: Site, bob: dict[str, str]) -> None:
    listing = site.client.get("/", headers=bob)
    assert listing.status_code == 200
    assert shown_job_ids(listing.text) == {site.bob_done}
    assert b"signed in as <strong>bob</strong>" in listing.data
    page = site.client.get(f"/web/jobs/{site.alice_done}", headers=bob)
    unknown = site.client.get("/web/jobs/0123456789abcdef0123456789abcdef", headers=bob)
    assert page.status_code == unknown.status_code == 404
    assert page.mimetype == "text/html"
    assert page.data.replace(site.alice_done.encode(), b"X") == unknown.data.replace(
        b"0123456789abcdef0123456789abcdef", b"X"
    )  # the same answer as for a job that does not exist
    for secret in (b"alice", b"alice.txt"):
        assert secret not in page.data
    changes = site.client.get(f"/web/jobs/{site.alice_done}/changes", headers=bob)
    assert changes.status_code == 404
    own = site.client.get(f"/web/jobs/{site.bob_done}", headers=bob)
    assert own.status_code == 200 and b"bob.txt" in own.data


@pytest.mark.parametrize("admin", [ADMIN_TOKEN, ADMIN_HEADER], ids=["bearer", "header"])
def test_an_admin_sees_every_job(site: Site, admin: dict[str, str]) -> None:
    listing = site.client.get("/", headers=admin)
    assert {site.alice_done, site.bob_done} <= shown_job_ids(listing.text)
    assert site.client.get(f"/web/jobs/{site.alice_done}", headers=admin).status_code == 200


def test_a_job_page_reads_without_javascript(site: Site) -> None:
    page = site.client.get(f"/web/jobs/{site.alice_done}", headers=ALICE)
    assert page.status_code == 200
    html = page.text
    assert 'class="phase phase-completed"' in html
    assert "echo alice-secret &gt; $JOB_OUTPUT_DIR/alice.txt" in html
    links = re.findall(r'href="(/api/v1/job/result/[^"]+)"', html)
    assert len(links) == 2  # alice.txt and the log
    downloads = [site.client.get(link, headers=ALICE) for link in links]
    assert sorted(d.data for d in downloads if d.data.startswith(b"alice"))[0] == b"alice-secret\n"
    # The links reach nothing bob could not reach through the API.
    assert all(site.client.get(link, headers=BOB_TOKEN).status_code == 404 for link in links)
    assert "Content-Security-Policy" in page.headers
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


def test_abort_refuses_anything_but_the_pages_own_request(site: Site) -> None:
    job_id = site.pending(ALICE, "abort-me")
    url = f"/web/jobs/{job_id}/abort"
    refused = [
        {},  # a cross-site form: no custom header can come with it
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example"},
        {ABORT_HEADER: "abort", "Origin": "https://evil.example"},
        {ABORT_HEADER: "abort", "Sec-Fetch-Site": "cross-site"},
        {ABORT_HEADER: "abort", "Sec-Fetch-Site": "same-site", "Origin": "http://localhost"},
        {ABORT_HEADER: "yes", "Sec-Fetch-Site": "same-origin"},
    ]
    for headers in refused:
        response = site.client.post(url, headers={**ALICE, **headers}, data={"a": "b"})
        assert response.status_code == 403, headers
        assert site.phase(job_id, ALICE) == "pending", headers
    # The same checks as the API's: another owner finds no such job; no credentials, 401.
    assert site.client.post(url, headers={**BOB_TOKEN, **SAME_ORIGIN}).status_code == 404
    assert site.client.post(url, headers=SAME_ORIGIN).status_code == 401
    assert site.phase(job_id, ALICE) == "pending"
    done = site.client.post(url, headers={**ALICE, **SAME_ORIGIN})
    assert done.status_code == 200 and done.get_json() == {"phase": "aborted"}
    assert site.phase(job_id, ALICE) == "aborted"
    finished = site.client.post(
        f"/web/jobs/{site.alice_done}/abort", headers={**ALICE, **SAME_ORIGIN}
    )
    assert finished.status_code == 409


def next_page(html: str) -> str | None:
    found = re.search(r'<a rel="next" href="([^"]+)"', html)
    return found[1].replace("&amp;", "&") if found else None


def test_filters_and_pages(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [site.pending(BOB_HEADER, f"page-run-{n:02d}") for n in range(JOBS_PER_PAGE + 2)]
    asked: list[int | None] = []
    list_page = site.service.list_page

    def recorded(caller: Caller, query: ListQuery) -> JobPage:
        asked.append(query.limit)
        return list_page(caller, query)

    monkeypatch.setattr(site.service, "list_page", recorded)
    first = site.client.get("/?phase=pending&run_id=page-run-", headers=BOB_HEADER).text
    shown = re.findall(r'data-job-id="([0-9a-f]{32})"', first)
    assert len(shown) == JOBS_PER_PAGE and f"{JOBS_PER_PAGE} jobs; more on the next" in first
    # The service's pages are read, never the whole list: the one filter it does not know
    # (the run id's part) reads one page on, to find whether another page follows.
    assert asked == [JOBS_PER_PAGE, JOBS_PER_PAGE]
    older = next_page(first)
    assert older is not None and "cursor=" in older and "run_id=page-run-" in older
    second = site.client.get(older, headers=BOB_HEADER).text
    shown += re.findall(r'data-job-id="([0-9a-f]{32})"', second)
    assert next_page(second) is None and 'rel="first" href="/?phase=pending&amp;run_id=' in second
    assert len(shown) == len(ids) and set(shown) == set(ids)
    asked.clear()
    unfiltered = site.client.get("/?phase=pending", headers=BOB_HEADER).text
    assert asked == [JOBS_PER_PAGE] and next_page(unfiltered) is not None
    created = {job_id: site.service.backend.get(job_id).creation_time for job_id in ids}
    times = [created[job_id] for job_id in shown]
    assert times == sorted(times, reverse=True)  # newest first, across the pages
    one = site.client.get("/?run_id=page-run-07", headers=BOB_HEADER).text
    assert shown_job_ids(one) == {ids[7]}
    completed = site.client.get("/?phase=completed", headers=BOB_HEADER).text
    assert shown_job_ids(completed) == {site.bob_done}
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert (
        shown_job_ids(site.client.get(f"/?created_after={later}", headers=BOB_HEADER).text) == set()
    )
    bad = site.client.get("/?phase=running", headers=BOB_HEADER)
    assert bad.status_code == 400 and bad.mimetype == "text/html"
    assert b"Unknown phase" in bad.data
    forged = site.client.get("/?cursor=not-a-cursor", headers=BOB_HEADER)
    assert forged.status_code == 400 and b"cursor" in forged.data


def test_the_log_tail_is_the_end_of_a_long_log(site: Site) -> None:
    job_id = site.create(ALICE, "seq 1 40000; echo last-line-of-log", run_id="long-log")
    site.finish(job_id, ALICE)
    html = site.client.get(f"/web/jobs/{job_id}", headers=ALICE).text
    log = re.search(r'<pre class="log"[^>]*>(.*?)</pre>', html, re.S)
    assert log is not None
    text = log.group(1)
    assert text.rstrip().endswith("last-line-of-log")
    assert "\n1\n" not in "\n" + text  # the start is cut ...
    assert len(text.encode()) <= LOG_TAIL_BYTES
    assert text.split("\n", 1)[0].isdigit()  # ... at a whole line
    assert f"The last {LOG_TAIL_BYTES // 1024} KiB" in html


def test_a_running_jobs_page_has_its_log_so_far_and_follows_the_api(site: Site) -> None:
    # Beside the data folder, not in it: jobs run sandboxed, without sight of the data folder.
    flag = site.service.settings.data_dir.parent / "running-log-flag"
    command = f"echo first-line; echo '<b>bold</b>'; while [ ! -e {flag} ]; do sleep 0.1; done"
    job_id = site.create(ALICE, command, run_id="running-log")
    wait_for_phase(lambda: site.phase(job_id, ALICE), {"executing"})
    try:
        deadline = time.monotonic() + 10
        while True:
            html = site.client.get(f"/web/jobs/{job_id}", headers=ALICE).text
            log = re.search(r'<pre class="log" id="log"([^>]*)>(.*?)</pre>', html, re.S)
            assert log is not None
            if "first-line" in log[2] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert log[2] == "first-line\n&lt;b&gt;bold&lt;/b&gt;\n"  # escaped, as every value
        follow = re.search(r'data-follow="([^"]+)"', log[1])
        assert follow is not None
        url = follow[1].replace("&amp;", "&")
        assert url.startswith(f"/api/v1/job/{job_id}/log?") and "follow=true" in url
        # What the script reads is the API's own log: bob may not follow alice's.
        assert site.client.get(url, headers=BOB_HEADER).status_code == 404
        done = site.client.get(url.replace("follow=true", "follow=false"), headers=ALICE)
        assert done.status_code == 200 and done.text.startswith("first-line\n")
    finally:
        flag.touch()
    site.finish(job_id, ALICE)
    ended = site.client.get(f"/web/jobs/{job_id}", headers=ALICE).text
    assert "data-follow" not in ended and "first-line" in ended


@pytest.fixture
def quick(tmp_path: Path) -> FlaskClient:
    """The embedded app, anonymous, with long polls held at most 2 s."""
    from ocps_jobs.config import Settings

    settings = Settings.from_env(data_dir=tmp_path / "data", wait_max_seconds=2)
    return create_embedded_app(build_service(settings)).test_client()


def test_the_table_long_poll_answers_when_a_job_appears(quick: FlaskClient) -> None:
    page = quick.get("/").text
    since = re.search(r'data-fingerprint="([0-9a-f]+)"', page)
    assert since is not None
    started = time.monotonic()
    assert quick.get(f"/web/jobs/changes?since={since[1]}").status_code == 204
    assert time.monotonic() - started >= 1.5  # held, not answered at once
    created: list[str] = []

    def create_soon() -> None:
        time.sleep(0.5)
        response = quick.put("/api/v1/job", json={"command": "sleep 1", "run_id": "late"})
        created.append(response.get_json()["jobId"])

    thread = threading.Thread(target=create_soon)
    thread.start()
    change = quick.get(f"/web/jobs/changes?since={since[1]}")
    thread.join()
    assert change.status_code == 200
    body = change.get_json()
    assert body["fingerprint"] != since[1] and body["count"] == 1
    assert f'data-job-id="{created[0]}"' in body["html"]


def test_the_job_long_poll_answers_when_the_phase_changes(quick: FlaskClient) -> None:
    job_id = quick.put("/api/v1/job", json={"command": "sleep 0.5"}).get_json()["jobId"]
    wait_for_phase(lambda: quick.get(f"/api/v1/job/{job_id}/phase").get_json(), {"executing"})
    change = quick.get(f"/web/jobs/{job_id}/changes?phase=executing")
    assert change.status_code == 200
    body = change.get_json()
    assert body["phase"] == "completed" and body["waiting"] is False
    assert 'id="job-phase">completed<' in body["html"]


def test_the_functions_serve_the_pages_and_the_abort(functions: dict[str, FlaskClient]) -> None:
    """As Knative runs them: query_job serves / and /web, create_job the abort."""
    created = functions["create_job"].put("/api/v1/job", json={"command": "sleep 30"})
    job_id = created.get_json()["jobId"]
    listing = functions["query_job"].get("/")
    assert listing.status_code == 200 and listing.mimetype == "text/html"
    assert f'data-job-id="{job_id}"' in listing.text
    assert functions["query_job"].get(f"/web/jobs/{job_id}").status_code == 200
    assert functions["query_job"].get("/web/static/web.js").status_code == 200
    assert functions["results"].get("/").status_code == 404
    aborted = functions["create_job"].post(f"/web/jobs/{job_id}/abort", headers=SAME_ORIGIN)
    assert aborted.status_code == 200 and aborted.get_json() == {"phase": "aborted"}
