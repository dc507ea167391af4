"""The small findings of the hostile review: each link resolves, each text comes back as sent.

Result ids of the deepest paths, links only for trusted hosts, CR and controls in UWS
text, the UTF-8 rule for every body, the owner checked before a record is copied,
``message/*`` as an attachment, and partial objects a crash left removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from lxml import etree

from ocps_jobs.composition import build_service, close_services
from ocps_jobs.config import Settings
from ocps_jobs.conventions import output_key
from ocps_jobs.errors import JobNotFoundError, ResultNotFoundError, SettingsError
from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import Caller, JobRecord, JobRequest, Phase
from ocps_jobs.objectstore.filesystem import PARTIAL_PREFIX
from ocps_jobs.resultids import MAX_KEY_BYTES, decode_result_id, encode_result_id
from ocps_jobs.service import JobService
from tests.test_local_backend import finish, submit

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
JOB = "e13ed9f2803842409763b185d4f490e2"

# --- result ids for every listed file -------------------------------------------------------

# 16 folders of 200 letters: a key of 3,262 bytes, whose id (4,350 characters) is past what
# the service used to accept, in one mkdir (a path well under PATH_MAX).
LONG_FOLDERS = "/".join(f"{n:02d}" + "d" * 198 for n in range(16))


def test_the_longest_key_a_store_holds_has_an_id_that_resolves() -> None:
    for key in (
        output_key(JOB, "a/" * ((MAX_KEY_BYTES - 60) // 2) + "f.txt"),
        "/uws/jobs/" + JOB + "/out/" + "é" * ((MAX_KEY_BYTES - 60) // 2),
    ):
        assert len(key.encode()) <= MAX_KEY_BYTES
        assert decode_result_id(encode_result_id(key)).job_id == JOB


def test_a_result_under_a_very_long_path_downloads_through_its_link(client: FlaskClient) -> None:
    job_id = submit(
        client,
        command=f'mkdir -p "$JOB_OUTPUT_DIR/{LONG_FOLDERS}"; '
        f'echo deep > "$JOB_OUTPUT_DIR/{LONG_FOLDERS}/f.txt"',
    )
    job = finish(client, job_id)
    assert job["phase"] == "completed", job["errorSummary"]
    (deep,) = [item for item in job["results"] if item["uri"].endswith("/f.txt")]
    assert len(deep["id"]) > 4096  # what the service used to refuse
    assert client.get(f"/api/v1/job/result/{deep['id']}").data == b"deep\n"
    document = etree.fromstring(client.get(f"/uws/async/{job_id}/results").data)
    links = [result.get(XLINK_HREF, "") for result in document.iter(f"{UWS}result")]
    (link,) = [href for href in links if deep["id"] in href]
    assert client.get(link.removeprefix("http://localhost")).data == b"deep\n"


# --- absolute links from the public URL or a trusted Host only ------------------------------


def _client(tmp_path: Path, **overrides: Any) -> FlaskClient:
    settings = Settings.from_env(data_dir=tmp_path / "data", max_concurrent_jobs=2, **overrides)
    return create_embedded_app(build_service(settings)).test_client()


def test_a_forged_host_never_names_where_links_lead(client: FlaskClient) -> None:
    job_id = submit(client, command="true")
    forged = {"Host": "evil.example.com"}
    created = client.post("/uws/async", data={"command": "true"}, headers=forged)
    assert created.status_code == 400 and "OCPS_PUBLIC_URL" in created.get_data(as_text=True)
    assert b"evil" not in client.get(f"/uws/async/{job_id}", headers=forged).data
    assert client.get(f"/uws/async/{job_id}", headers=forged).status_code == 400
    # The JSON interface has no absolute links: unchanged.
    assert client.get(f"/api/v1/job/{job_id}", headers=forged).status_code == 200
    # Loopback names are trusted with no setting (the embedded default).
    for host in ("localhost:8080", "127.0.0.1:8080", "[::1]:8080"):
        response = client.post("/uws/async", data={"command": "true"}, headers={"Host": host})
        assert response.status_code == 303
        assert response.headers["Location"].startswith(f"http://{host}/uws/async/")


def test_trusted_hosts_and_the_public_url_build_links(tmp_path: Path) -> None:
    trusted = _client(tmp_path / "t", trusted_hosts=["ocps.example.org", ".lsst.org"])
    for host in ("ocps.example.org", "OCPS.example.org:8443", "summit.lsst.org", "lsst.org"):
        response = trusted.post("/uws/async", data={"command": "true"}, headers={"Host": host})
        assert response.status_code == 303, host
        assert response.headers["Location"].startswith(f"http://{host.lower()}/")
    for host in ("evil.example.org", "evillsst.org", "ocps.example.org.evil.com"):
        response = trusted.post("/uws/async", data={"command": "true"}, headers={"Host": host})
        assert response.status_code == 400, host

    public = _client(tmp_path / "p", public_url="https://ocps.example.org/")
    response = public.post(
        "/uws/async", data={"command": "true"}, headers={"Host": "evil.example.com"}
    )
    assert response.status_code == 303
    assert response.headers["Location"].startswith("https://ocps.example.org/uws/async/")


@pytest.mark.parametrize("entry", ["evil.com:80", "a b", "", "x/y", "-bad.example"])
def test_a_trusted_host_that_is_not_a_host_name_stops_the_start(entry: str) -> None:
    with pytest.raises(SettingsError, match="OCPS_TRUSTED_HOSTS"):
        Settings.from_env(trusted_hosts=[entry])


# --- CR in UWS XML, controls out of /error --------------------------------------------------


def test_a_carriage_return_comes_back_from_uws_xml_as_sent(client: FlaskClient) -> None:
    response = client.post("/uws/async", data={"command": "true", "env": "NOTE=one\rtwo\r\n"})
    assert response.status_code == 303
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    raw = client.get(f"/uws/async/{job_id}/parameters").data
    assert b"\r" not in raw and b"one&#13;two&#13;\n" in raw
    values = [element.text for element in etree.fromstring(raw).iter(f"{UWS}parameter")]
    assert "NOTE=one\rtwo\r\n" in values


def test_the_error_resource_holds_no_control_characters(client: FlaskClient) -> None:
    job_id = submit(client, command=r"printf 'bad \033[31mred\033[0m\r\a\x01end\tx\n' >&2; exit 3")
    assert finish(client, job_id)["phase"] == "error"
    text = client.get(f"/uws/async/{job_id}/error").get_data(as_text=True)
    assert "bad red" in text and "end\tx" in text
    assert not [char for char in text if ord(char) < 0x20 and char not in "\t\n"]
    assert "\x7f" not in text and "\x1b" not in text


# --- the UTF-8 rule for every body ----------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_json_bodies_in_utf16_or_utf32_are_400(client: FlaskClient, encoding: str) -> None:
    body = '{"command": "echo hi"}'.encode(encoding)
    response = client.put("/api/v1/job", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["message"] == "Malformed JSON body: not UTF-8"
    assert client.get("/api/v1/job").get_json() == []


def test_json_with_a_utf8_byte_order_mark_is_still_accepted(client: FlaskClient) -> None:
    body = b"\xef\xbb\xbf" + '{"command": "echo hé"}'.encode()
    response = client.put("/api/v1/job", data=body, content_type="application/json")
    assert response.status_code == 200, response.data


def _multipart(value: bytes, part_type: str | None = None) -> tuple[bytes, str]:
    boundary = "b0undary"
    header = f"Content-Type: {part_type}\r\n" if part_type else ""
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="command"\r\n{header}\r\n'.encode()
        + value
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    ("value", "part_type"),
    [
        (b"echo caf\xe9", None),  # Latin-1
        (b"echo \xff\xfe", None),
        (b"echo caf\xe9", "text/plain; charset=iso-8859-1"),
    ],
)
def test_multipart_fields_that_are_not_utf8_are_400(
    client: FlaskClient, value: bytes, part_type: str | None
) -> None:
    body, content_type = _multipart(value, part_type)
    json_api = client.put("/api/v1/job", data=body, content_type=content_type)
    assert json_api.status_code == 400
    assert "UTF-8" in json_api.get_json()["message"]
    uws = client.post("/uws/async", data=body, content_type=content_type)
    assert uws.status_code == 400 and b"UTF-8" in uws.data
    assert client.get("/api/v1/job").get_json() == []


def test_utf8_multipart_fields_are_accepted(client: FlaskClient) -> None:
    body, content_type = _multipart("echo café".encode(), "text/plain; charset=UTF-8")
    response = client.put("/api/v1/job", data=body, content_type=content_type)
    assert response.status_code == 200, response.data
    assert response.get_json()["parameters"]["command"][-1] == "echo café"


# --- the owner checked before anything is copied --------------------------------------------


def test_another_owners_job_is_refused_before_its_record_is_copied(
    service: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = service.create_job(JobRequest(command="true"), Caller(name="alice"), start=False)
    copies: list[str] = []
    original = JobRecord.model_copy

    def counted(self: JobRecord, *args: Any, **kwargs: Any) -> JobRecord:
        copies.append(self.job_id)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(JobRecord, "model_copy", counted)
    with pytest.raises(JobNotFoundError):
        service.get_job(record.job_id, Caller(name="bob"))
    with pytest.raises(ResultNotFoundError):
        service.find_result(encode_result_id(output_key(record.job_id, "f")), Caller(name="bob"))
    assert copies == []  # neither the record nor its results were copied for bob
    assert service.get_job(record.job_id, Caller(name="alice")).owner == "alice"
    assert copies == [record.job_id]


# --- message/* as attachment ----------------------------------------------------------------


def test_message_results_download_as_attachments(client: FlaskClient) -> None:
    job_id = submit(
        client,
        command='for f in page.mht mail.eml; do printf "Content-Type: text/html\\n\\n<script>'
        'alert(1)</script>" > "$JOB_OUTPUT_DIR/$f"; done; echo ok > "$JOB_OUTPUT_DIR/ok.txt"',
    )
    job = finish(client, job_id)
    kinds = {}
    for item in job["results"]:
        response = client.get(f"/api/v1/job/result/{item['id']}")
        kinds[item["uri"].rsplit("/", 1)[1]] = response.headers["Content-Disposition"].split(";")[0]
    assert kinds["page.mht"] == kinds["mail.eml"] == "attachment"
    assert kinds["ok.txt"] == "inline"


# --- partial objects after a crash ----------------------------------------------------------


def test_partial_objects_a_crash_left_are_removed_at_the_next_start(settings: Settings) -> None:
    service = build_service(settings)
    record = service.create_job(JobRequest(command="true"), Caller(), start=False)
    job_id = record.job_id
    close_services()
    # As a crash mid-upload leaves it: the record says executing, the job's output is in
    # its work folder, and the store holds the temporaries of writes cut short.
    state = settings.data_dir / "state" / "jobs" / f"{job_id}.json"
    stored = JobRecord.model_validate_json(state.read_text())
    stored.phase = Phase.EXECUTING
    state.write_text(stored.model_dump_json())
    output = settings.data_dir / "work" / job_id / "out"
    (output / "sub").mkdir(parents=True)
    (output / "sub" / "result.txt").write_text("kept")
    store = settings.data_dir / "objects" / settings.bucket
    objects = store / "jobs" / job_id
    (objects / "out" / "sub").mkdir(parents=True)
    partials = [objects / "out" / "sub" / f"{PARTIAL_PREFIX}a1b2", objects / f"{PARTIAL_PREFIX}c3"]
    for partial in partials:
        partial.write_bytes(b"\0" * 4096)
    other = store / "jobs" / JOB / "out" / f"{PARTIAL_PREFIX}other"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"another job's, not this one's to touch")

    restarted = build_service(settings)
    recovered = restarted.get_job(job_id, Caller())
    assert recovered.phase is Phase.ERROR  # its command's end was never seen
    assert not [partial for partial in partials if partial.exists()]
    client = create_embedded_app(restarted).test_client()
    listed = client.get(f"/api/v1/job/{job_id}/results").get_json()
    (kept,) = [item for item in listed if item["uri"].endswith("/sub/result.txt")]
    assert client.get(f"/api/v1/job/result/{kept['id']}").data == b"kept"
    assert other.exists()


def test_s3_partial_uploads_of_a_prefix_are_aborted(
    s3_endpoint: str, bucket: str, s3_credentials: None
) -> None:
    from ocps_jobs.objectstore.s3 import S3Store

    store = S3Store(bucket, s3_endpoint)
    store.ensure_ready()
    mine = output_key(JOB, "big.fits")
    theirs = output_key("a6b9043ef0c24170b019641da57a0dba", "big.fits")
    for key in (mine, mine, theirs):
        store.client.create_multipart_upload(Bucket=bucket, Key=key)
    store.put_bytes(output_key(JOB, "done.txt"), b"done", "text/plain")

    assert store.remove_partial(f"jobs/{JOB}/") == 2
    left = store.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [upload["Key"] for upload in left] == [theirs]
    assert store.get_bytes(output_key(JOB, "done.txt")) == b"done"
    store.client.abort_multipart_upload(Bucket=bucket, Key=theirs, UploadId=left[0]["UploadId"])


def test_deleting_a_prefix_in_s3_aborts_its_partial_uploads_too(
    s3_endpoint: str, bucket: str, s3_credentials: None
) -> None:
    from ocps_jobs.objectstore.s3 import S3Store

    store = S3Store(bucket, s3_endpoint)
    store.ensure_ready()
    store.client.create_multipart_upload(Bucket=bucket, Key=output_key(JOB, "killed.fits"))
    store.put_bytes(output_key(JOB, "done.txt"), b"done", "text/plain")
    store.delete_prefix(f"jobs/{JOB}/")
    assert store.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(store.list_objects(f"jobs/{JOB}/")) == []
