"""Authentication and owner isolation: two owners x every endpoint of both interfaces.

Another owner's job is 404 everywhere (never 403, and indistinguishable from a job that
does not exist), lists hold only one's own jobs, an admin sees all, the owner comes from
the authenticated identity, and authentication failures are 401 with WWW-Authenticate.
"""

from __future__ import annotations

import base64
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from ocps_jobs.backends.local import LocalBackend
from ocps_jobs.composition import build_service, build_store
from ocps_jobs.config import Settings
from ocps_jobs.http import create_embedded_app
from ocps_jobs.service import JobService
from tests.helpers import wait_for_phase

HEADER = "X-Auth-Request-User"
TOKENS = {
    "tok-alice-6f1d0c": "alice",
    "tok-bob-93ab27": "bob",
    "tok-ops-5e88f0": "ops",
}
UNKNOWN = "0123456789abcdef0123456789abcdef"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ALICE = bearer("tok-alice-6f1d0c")
BOB_TOKEN = bearer("tok-bob-93ab27")
BOB_HEADER = {HEADER: "bob"}
ADMIN_TOKEN = bearer("tok-ops-5e88f0")
ADMIN_HEADER = {HEADER: "ops"}
INTRUDERS = pytest.mark.parametrize(
    "intruder", [BOB_TOKEN, BOB_HEADER], ids=["bob-bearer", "bob-header"]
)
ADMINS = pytest.mark.parametrize(
    "admin", [ADMIN_TOKEN, ADMIN_HEADER], ids=["admin-bearer", "admin-header"]
)


def auth_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "max_concurrent_jobs": 2,
        "auth_required": True,
        "auth_tokens": TOKENS,
        "admin_users": frozenset({"ops"}),
        "auth_header": HEADER,
    }
    values.update(overrides)
    return Settings.from_env(**values)


@dataclass
class World:
    """One service with authentication on, and a finished job of alice and of bob."""

    service: JobService
    client: FlaskClient
    alice_job: str
    alice_result: str  # the result ID of alice's out.txt
    bob_job: str

    def create(self, headers: dict[str, str], **body: Any) -> dict[str, Any]:
        response = self.client.put("/api/v1/job", json={"command": "true", **body}, headers=headers)
        assert response.status_code == 200, response.data
        return dict(response.get_json())

    def pending(self, headers: dict[str, str] = ALICE) -> str:
        """A UWS job left PENDING (nothing runs)."""
        response = self.client.post("/uws/async", data={"command": "true"}, headers=headers)
        assert response.status_code == 303, response.data
        return str(response.headers["Location"].rsplit("/", 1)[1])

    def phase(self, job_id: str, headers: dict[str, str] = ALICE) -> str:
        response = self.client.get(f"/api/v1/job/{job_id}/phase", headers=headers)
        assert response.status_code == 200, response.data
        return str(response.get_json())

    def finish(self, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
        wait_for_phase(lambda: self.phase(job_id, headers), {"completed", "error", "aborted"})
        return dict(self.client.get(f"/api/v1/job/{job_id}", headers=headers).get_json())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # Built directly (not through build_service) so that it outlives each test's cleanup.
    settings = auth_settings(tmp_path_factory.mktemp("isolation") / "data")
    store = build_store(settings)
    store.ensure_ready()
    service = JobService(settings, LocalBackend(settings, store), store)
    client = create_embedded_app(service).test_client()
    empty = World(service, client, "", "", "")
    alice = empty.create(ALICE, command="echo alice-secret > $JOB_OUTPUT_DIR/out.txt")["jobId"]
    bob = empty.create(BOB_TOKEN, command="echo bob > $JOB_OUTPUT_DIR/out.txt")["jobId"]
    assert empty.finish(alice, ALICE)["phase"] == "completed"
    assert empty.finish(bob, BOB_TOKEN)["phase"] == "completed"
    results = client.get(f"/api/v1/job/{alice}/results", headers=ALICE).get_json()
    result = next(item["id"] for item in results if item["uri"].endswith("/out/out.txt"))
    yield World(service, client, alice, result, bob)
    service.close()


def request(
    world: World, method: str, path: str, headers: dict[str, str], **kw: Any
) -> TestResponse:
    return world.client.open(path, method=method, headers=headers, **kw)


def assert_hidden(response: TestResponse, like: TestResponse) -> None:
    """404, never 403, and the same kind of answer as for a job that does not exist."""
    assert response.status_code == 404, (response.status_code, response.data)
    assert like.status_code == 404
    assert response.mimetype == like.mimetype
    if response.mimetype == "application/json":
        assert response.get_json()["error"] == like.get_json()["error"]
    for secret in (b"alice", b"alice-secret", b"out.txt"):
        assert secret not in response.data


# --- reads: every GET of both interfaces ------------------------------------------------------

READS = [
    "/api/v1/job/{job}",
    "/api/v1/job/{job}/phase",
    "/api/v1/job/{job}/parameters",
    "/api/v1/job/{job}/results",
    "/api/v1/job/{job}/log",
    "/api/v1/job/{job}/log?follow=true",
    "/api/v1/job/result/{result}",
    "/api/v1/job/result/{job}/0",
    "/uws/async/{job}",
    "/uws/async/{job}?WAIT=1",
    "/uws/async/{job}?WAIT=1&PHASE=EXECUTING",
    "/uws/async/{job}/phase",
    "/uws/async/{job}/executionduration",
    "/uws/async/{job}/destruction",
    "/uws/async/{job}/error",
    "/uws/async/{job}/quote",
    "/uws/async/{job}/owner",
    "/uws/async/{job}/parameters",
    "/uws/async/{job}/results",
]


def _unknown_result_id() -> str:
    key = f"jobs/{UNKNOWN}/out/out.txt".encode()
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


@pytest.mark.parametrize("template", READS)
@INTRUDERS
def test_reads_of_another_owners_job_are_404(
    world: World, template: str, intruder: dict[str, str]
) -> None:
    path = template.format(job=world.alice_job, result=world.alice_result)
    missing = template.format(job=UNKNOWN, result=_unknown_result_id())
    assert_hidden(
        world.client.get(path, headers=intruder), world.client.get(missing, headers=intruder)
    )
    own = world.client.get(path, headers=ALICE)
    assert own.status_code == 200, own.data
    for admin in (ADMIN_TOKEN, ADMIN_HEADER):
        seen = world.client.get(path, headers=admin)
        assert seen.status_code == 200
        assert seen.data == own.data


def test_the_owner_reads_their_own_job(world: World) -> None:
    job = world.client.get(f"/api/v1/job/{world.alice_job}", headers=ALICE).get_json()
    assert job["ownerId"] == "alice"
    owner = world.client.get(f"/uws/async/{world.alice_job}/owner", headers=ALICE)
    assert owner.get_data(as_text=True) == "alice"
    download = world.client.get(f"/api/v1/job/result/{world.alice_result}", headers=ALICE)
    assert download.data == b"alice-secret\n"
    by_index = world.client.get(f"/api/v1/job/result/{world.alice_job}/0", headers=ALICE)
    assert by_index.status_code == 200
    # Bob's own job is his, and hidden from alice in turn.
    assert world.client.get(f"/api/v1/job/{world.bob_job}", headers=BOB_HEADER).status_code == 200
    assert world.client.get(f"/api/v1/job/{world.bob_job}", headers=ALICE).status_code == 404


@INTRUDERS
def test_wait_on_another_owners_job_answers_404_at_once(
    world: World, intruder: dict[str, str]
) -> None:
    job_id = world.pending()
    started = time.monotonic()
    response = world.client.get(f"/uws/async/{job_id}?WAIT=30", headers=intruder)
    assert response.status_code == 404
    assert time.monotonic() - started < 5
    assert world.phase(job_id) == "pending"


# --- state changes: every one refused for another owner, the job left as it was ----------------


@dataclass(frozen=True)
class Change:
    name: str
    method: str
    path: str
    data: dict[str, str] | None
    status: int  # what the owner gets


CHANGES = [
    Change("json-delete", "DELETE", "/api/v1/job/{job}", None, 200),
    Change("uws-delete", "DELETE", "/uws/async/{job}", None, 303),
    Change("uws-action-delete", "POST", "/uws/async/{job}", {"ACTION": "DELETE"}, 303),
    Change("uws-run", "POST", "/uws/async/{job}/phase", {"PHASE": "RUN"}, 303),
    Change("uws-abort", "POST", "/uws/async/{job}/phase", {"PHASE": "ABORT"}, 303),
    Change(
        "uws-destruction",
        "POST",
        "/uws/async/{job}/destruction",
        {"DESTRUCTION": "2099-01-01T00:00:00Z"},
        303,
    ),
    Change(
        "uws-executionduration",
        "POST",
        "/uws/async/{job}/executionduration",
        {"EXECUTIONDURATION": "1234"},
        303,
    ),
]


def snapshot(world: World, job_id: str) -> dict[str, Any]:
    response = world.client.get(f"/api/v1/job/{job_id}", headers=ALICE)
    assert response.status_code == 200, "the job must still be there"
    return dict(response.get_json())


@pytest.mark.parametrize("change", CHANGES, ids=lambda change: change.name)
@INTRUDERS
def test_changes_to_another_owners_job_are_404_and_change_nothing(
    world: World, change: Change, intruder: dict[str, str]
) -> None:
    job_id = world.pending()
    before = snapshot(world, job_id)
    path = change.path.format(job=job_id)
    refused = request(world, change.method, path, intruder, data=change.data)
    missing = request(
        world, change.method, change.path.format(job=UNKNOWN), intruder, data=change.data
    )
    assert_hidden(refused, missing)
    assert snapshot(world, job_id) == before
    done = request(world, change.method, path, ALICE, data=change.data)
    assert done.status_code == change.status, done.data
    after = world.client.get(f"/api/v1/job/{job_id}", headers=ALICE)
    if "delete" in change.name:
        assert after.status_code == 404
    else:
        assert after.get_json() != before


@pytest.mark.parametrize("change", CHANGES, ids=lambda change: change.name)
def test_an_admin_may_change_any_job(world: World, change: Change) -> None:
    job_id = world.pending(BOB_TOKEN)
    path = change.path.format(job=job_id)
    response = request(world, change.method, path, ADMIN_HEADER, data=change.data)
    assert response.status_code == change.status, response.data


# --- lists ------------------------------------------------------------------------------------


def json_list(world: World, headers: dict[str, str], query: str = "") -> list[dict[str, Any]]:
    response = world.client.get(f"/api/v1/job{query}", headers=headers)
    assert response.status_code == 200, response.data
    return list(response.get_json())


def uws_list(world: World, headers: dict[str, str], query: str = "") -> list[str]:
    response = world.client.get(f"/uws/async{query}", headers=headers)
    assert response.status_code == 200, response.data
    text = response.get_data(as_text=True)
    assert "<uws:jobs" in text
    return re.findall(r'<uws:jobref id="([0-9a-f]{32})"', text)


@INTRUDERS
def test_lists_show_only_ones_own_jobs(world: World, intruder: dict[str, str]) -> None:
    world.pending(ALICE)
    world.pending(BOB_TOKEN)
    for query in ("", "?phase=completed", "?phase=pending"):
        mine = json_list(world, ALICE, query)
        theirs = json_list(world, intruder, query)
        assert mine and theirs
        assert {job["ownerId"] for job in mine} == {"alice"}
        assert {job["ownerId"] for job in theirs} == {"bob"}
        assert not {job["jobId"] for job in mine} & {job["jobId"] for job in theirs}
    assert world.alice_job not in {job["jobId"] for job in json_list(world, intruder)}
    for query in ("", "?PHASE=COMPLETED", "?PHASE=PENDING&PHASE=COMPLETED", "?LAST=1000"):
        mine_ids = set(uws_list(world, ALICE, query))
        their_ids = set(uws_list(world, intruder, query))
        assert mine_ids and their_ids and not mine_ids & their_ids
        assert world.alice_job not in their_ids
        assert world.bob_job not in mine_ids
    assert world.alice_job in uws_list(world, ALICE)
    assert world.bob_job in uws_list(world, intruder)


@ADMINS
def test_an_admin_lists_every_owners_jobs(world: World, admin: dict[str, str]) -> None:
    listed = json_list(world, admin)
    ids = {job["jobId"] for job in listed}
    assert {world.alice_job, world.bob_job} <= ids
    assert {"alice", "bob"} <= {job["ownerId"] for job in listed}
    assert {world.alice_job, world.bob_job} <= set(uws_list(world, admin))
    everyone = {job["jobId"] for job in json_list(world, ALICE)} | {
        job["jobId"] for job in json_list(world, BOB_TOKEN)
    }
    assert everyone <= ids


# --- the owner is the authenticated identity ------------------------------------------------


def test_the_owner_comes_from_the_identity(world: World) -> None:
    assert world.create(ALICE)["ownerId"] == "alice"
    assert world.create({HEADER: "carol"})["ownerId"] == "carol"
    # A bearer token wins over the header: the header cannot impersonate a token holder.
    assert world.create({**ALICE, HEADER: "bob"})["ownerId"] == "alice"
    uws = world.client.post("/uws/async", data={"command": "true"}, headers={HEADER: "carol"})
    job_id = uws.headers["Location"].rsplit("/", 1)[1]
    document = world.client.get(f"/uws/async/{job_id}", headers={HEADER: "carol"})
    assert "<uws:ownerId>carol</uws:ownerId>" in document.get_data(as_text=True)
    owner = world.client.get(f"/uws/async/{job_id}/owner", headers={HEADER: "carol"})
    assert owner.get_data(as_text=True) == "carol"
    # Carol's job is hers alone: alice (bearer) and a header claiming alice do not see it.
    assert world.client.get(f"/uws/async/{job_id}", headers=ALICE).status_code == 404


def test_a_client_cannot_choose_the_owner(world: World) -> None:
    for field in ("ownerId", "owner", "owner_id"):
        response = world.client.put(
            "/api/v1/job", json={"command": "true", field: "bob"}, headers=ALICE
        )
        assert response.status_code == 400, field
    for field in ("OWNER", "ownerId"):
        response = world.client.post(
            "/uws/async", data={"command": "true", field: "bob"}, headers=ALICE
        )
        assert response.status_code == 400, field
    assert all(job["ownerId"] == "alice" for job in json_list(world, ALICE))


# --- authentication failures ------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/api/v1/job"),
    ("PUT", "/api/v1/job"),
    ("GET", "/api/v1/job/{job}"),
    ("GET", "/api/v1/job/{job}/phase"),
    ("GET", "/api/v1/job/{job}/results"),
    ("GET", "/api/v1/job/{job}/log"),
    ("GET", "/api/v1/job/result/{job}/0"),
    ("DELETE", "/api/v1/job/{job}"),
    ("GET", "/uws/async"),
    ("POST", "/uws/async"),
    ("GET", "/uws/async/{job}"),
    ("GET", "/uws/async/{job}/results"),
    ("POST", "/uws/async/{job}/phase"),
    ("DELETE", "/uws/async/{job}"),
]
BAD_CREDENTIALS = [
    {},
    bearer("not-a-token"),
    bearer("tok-alice-6f1d0"),  # a prefix of a real token
    bearer("tok-alice-6f1d0c0"),  # a real token plus a character
    {"Authorization": "Basic YWxpY2U6cGFzcw=="},
    {"Authorization": "Bearer"},
    {"Authorization": "tok-alice-6f1d0c"},
    {"X-Forwarded-User": "alice"},  # not the configured trusted header
    {HEADER: "x" * 300},
    {HEADER: "ali\tce"},
    {**bearer("wrong"), HEADER: "alice"},  # a bad token is refused, not bypassed by the header
]


@pytest.mark.parametrize(("method", "template"), ENDPOINTS)
@pytest.mark.parametrize("credentials", BAD_CREDENTIALS, ids=range(len(BAD_CREDENTIALS)))
def test_without_valid_credentials_every_endpoint_is_401(
    world: World, method: str, template: str, credentials: dict[str, str]
) -> None:
    response = request(
        world, method, template.format(job=world.alice_job), credentials, data={"PHASE": "RUN"}
    )
    assert response.status_code == 401, response.data
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if template.startswith("/uws"):
        assert response.mimetype == "text/plain"
    else:
        assert response.mimetype == "application/json"
        assert response.get_json()["error"] == "authentication_required"
    assert b"alice-secret" not in response.data
    assert snapshot(world, world.alice_job)["phase"] == "completed"


def test_tokens_from_a_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# token identity\ntok-file-1 dave\n\ntok-file-2  erin \n")
    service = build_service(
        auth_settings(tmp_path / "data", auth_tokens={}, auth_tokens_file=tokens)
    )
    client = create_embedded_app(service).test_client()
    created = client.put("/api/v1/job", json={"command": "true"}, headers=bearer("tok-file-1"))
    assert created.status_code == 200
    assert created.get_json()["ownerId"] == "dave"
    job_id = created.get_json()["jobId"]
    assert client.get(f"/api/v1/job/{job_id}", headers=bearer("tok-file-2")).status_code == 404
    assert client.get("/api/v1/job", headers=bearer("tok-alice-6f1d0c")).status_code == 401
    assert client.get("/api/v1/job", headers=bearer("# token")).status_code == 401
    # The Secret is updated in place (a new token, one revoked): no restart needed.
    tokens.write_text("tok-file-3 frank\ntok-file-2 erin\n")
    assert client.get("/api/v1/job", headers=bearer("tok-file-3")).status_code == 200
    assert client.get("/api/v1/job", headers=bearer("tok-file-1")).status_code == 401
    # A file that cannot be read (mid-update, not UTF-8): no token is accepted meanwhile,
    # not the last ones read, which may include one just revoked.
    tokens.write_bytes(b"tok-file-3 fr\xe9nk\n")
    assert client.get("/api/v1/job", headers=bearer("tok-file-3")).status_code == 401
    tokens.write_text("tok-file-4 gina\n")
    assert client.get("/api/v1/job", headers=bearer("tok-file-4")).status_code == 200


# --- authentication off: the embedded default ------------------------------------------------


def test_the_embedded_default_serves_anonymous_callers(
    client: FlaskClient, service: JobService
) -> None:
    assert service.settings.authentication_required is False
    created = client.put("/api/v1/job", json={"command": "true"})
    assert created.status_code == 200
    job = created.get_json()
    assert job["ownerId"] == ""
    assert client.get(f"/api/v1/job/{job['jobId']}").status_code == 200
    assert [item["jobId"] for item in client.get("/api/v1/job").get_json()] == [job["jobId"]]
    uws = client.post("/uws/async", data={"command": "true"})
    assert uws.status_code == 303
    assert client.get(uws.headers["Location"].replace("http://localhost", "")).status_code == 200
    assert client.delete(f"/api/v1/job/{job['jobId']}").status_code == 200


def test_with_authentication_off_identities_still_own_their_jobs(tmp_path: Path) -> None:
    service = build_service(auth_settings(tmp_path / "data", auth_required=False))
    client = create_embedded_app(service).test_client()
    anonymous = client.put("/api/v1/job", json={"command": "true"}).get_json()
    mine = client.put("/api/v1/job", json={"command": "true"}, headers=ALICE).get_json()
    assert anonymous["ownerId"] == "" and mine["ownerId"] == "alice"
    assert client.get(f"/api/v1/job/{mine['jobId']}").status_code == 404
    assert client.get(f"/api/v1/job/{anonymous['jobId']}", headers=ALICE).status_code == 404
    assert [job["jobId"] for job in client.get("/api/v1/job").get_json()] == [anonymous["jobId"]]
    # A token that is presented must be valid even when none is required.
    refused = client.get("/api/v1/job", headers=bearer("wrong"))
    assert refused.status_code == 401
    assert "WWW-Authenticate" in refused.headers


def test_authentication_defaults_by_backend(tmp_path: Path) -> None:
    assert Settings.from_env(data_dir=tmp_path).authentication_required is False
    assert Settings.from_env(data_dir=tmp_path, backend="kubernetes").authentication_required
    explicit = Settings.from_env(data_dir=tmp_path, backend="kubernetes", auth_required=False)
    assert explicit.authentication_required is False
    assert "tok-alice" not in repr(auth_settings(tmp_path))


# --- what a browser meets: downloads and CORS ------------------------------------------------

ACTIVE = {
    "page.html": "text/html",
    "page.htm": "text/html",
    "image.svg": "image/svg+xml",
    "data.xml": "application/xml",
    "page.xhtml": "application/xhtml+xml",
    "script.js": "text/javascript",
    "paper.pdf": "application/pdf",
}
PASSIVE = {
    "notes.txt": "text/plain",
    "table.csv": "text/csv",
    "blob.bin": "application/octet-stream",
}


def test_downloads_are_never_rendered_as_active_content(world: World) -> None:
    names = [*ACTIVE, *PASSIVE, 'odd "name"; x.html', "ünï.html"]
    script = "; ".join(
        f"printf '<script>alert(1)</script>' > \"$JOB_OUTPUT_DIR\"/{shlex.quote(name)}"
        for name in names
    )
    job_id = world.create(ALICE, command=script)["jobId"]
    assert world.finish(job_id, ALICE)["phase"] == "completed"
    listing = world.client.get(f"/api/v1/job/{job_id}/results", headers=ALICE).get_json()
    assert set(names) <= {unquote(item["uri"].rsplit("/out/", 1)[1]) for item in listing}
    dispositions = {}
    for index, item in enumerate(listing):
        name = unquote(item["uri"].rsplit("/out/", 1)[1])
        for path in (f"/api/v1/job/result/{item['id']}", f"/api/v1/job/result/{job_id}/{index}"):
            response = world.client.get(path, headers=ALICE)
            assert response.status_code == 200
            headers = response.headers
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert "private" in headers["Cache-Control"]
            disposition = dispositions[name] = headers["Content-Disposition"]
            assert "\n" not in disposition and "\r" not in disposition
            if name not in names:
                continue  # the job's log
            assert response.data == b"<script>alert(1)</script>"
            if name in PASSIVE:
                assert headers["Content-Type"].startswith(PASSIVE[name])
                assert disposition.startswith("inline;"), (name, disposition)
            else:
                assert disposition.startswith("attachment;"), (name, disposition)
                assert headers["Content-Type"].startswith(ACTIVE.get(name, "text/html"))
    # A quote or semicolon in the name cannot end the filename parameter early.
    odd = dispositions['odd "name"; x.html']
    assert odd.startswith("attachment; filename=\"odd _name__ x.html\"; filename*=UTF-8''odd")


def test_no_cors_headers_unless_configured(world: World) -> None:
    origin = {"Origin": "https://evil.example"}
    for method, path in [
        ("GET", "/api/v1/job"),
        ("GET", f"/api/v1/job/{world.alice_job}"),
        ("GET", f"/api/v1/job/result/{world.alice_result}"),
        ("GET", "/uws/async"),
        ("OPTIONS", "/api/v1/job"),
    ]:
        headers = {**ALICE, **origin, "Access-Control-Request-Method": "PUT"}
        response = request(world, method, path, headers)
        assert not [name for name, _ in response.headers.items() if name.startswith("Access-C")]
        assert response.status_code != 204


def test_cors_only_for_configured_origins(tmp_path: Path) -> None:
    allowed = "https://portal.example"
    service = build_service(auth_settings(tmp_path / "data", cors_origins=frozenset({allowed})))
    client = create_embedded_app(service).test_client()
    job_id = client.put("/api/v1/job", json={"command": "true"}, headers=ALICE).get_json()["jobId"]
    good = client.get(f"/api/v1/job/{job_id}", headers={**ALICE, "Origin": allowed})
    assert good.status_code == 200
    assert good.headers["Access-Control-Allow-Origin"] == allowed
    assert "Origin" in good.headers.get_all("Vary")
    assert "Access-Control-Allow-Credentials" not in good.headers
    # A preflight needs no credentials (browsers send none) and opens nothing else.
    preflight = client.options(
        "/api/v1/job",
        headers={"Origin": allowed, "Access-Control-Request-Method": "PUT"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == allowed
    assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert preflight.data == b""
    # Other origins get no CORS headers at all, on requests and preflights alike.
    for origin in ("https://evil.example", "https://portal.example.evil", "null", allowed + "/"):
        other = client.get(f"/api/v1/job/{job_id}", headers={**ALICE, "Origin": origin})
        assert other.status_code == 200
        assert "Access-Control-Allow-Origin" not in other.headers
        refused = client.options(
            "/api/v1/job", headers={"Origin": origin, "Access-Control-Request-Method": "PUT"}
        )
        assert "Access-Control-Allow-Origin" not in refused.headers
        assert refused.status_code != 204
    # CORS does not replace authentication: an allowed origin without a token is still 401.
    anonymous = client.get(f"/api/v1/job/{job_id}", headers={"Origin": allowed})
    assert anonymous.status_code == 401
