"""Bounds on a job's outputs (embedded backend) and a job object that stays small (JSON, UWS)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from ocps_jobs.composition import build_service, close_services
from ocps_jobs.config import Settings
from ocps_jobs.conventions import manifest_key
from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import MAX_JOB_OBJECT_RESULTS, MAX_RESULTS_PAGE
from ocps_jobs.objectstore.trees import walk_files
from ocps_jobs.observability import metrics
from ocps_jobs.service import JobService
from ocps_jobs.uploader.skips import MAX_SKIPPED_LISTED
from tests.helpers import wait_until
from tests.test_local_backend import finish, submit
from tests.test_uws import UWS, check_job, path_of, valid_xml

OCPS = "{urn:ocps-jobs}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
MANY = MAX_JOB_OBJECT_RESULTS + 150  # files the job writes; with its log, one result more


def limited(tmp_path: Path, **limits: int) -> tuple[JobService, FlaskClient]:
    settings = Settings.from_env(data_dir=tmp_path / "data", max_concurrent_jobs=2, **limits)
    service = build_service(settings)
    return service, create_embedded_app(service).test_client()


def manifest_of(service: JobService, job_id: str) -> dict[str, Any]:
    data = service.store.get_bytes(manifest_key(job_id))
    assert data is not None
    manifest: dict[str, Any] = json.loads(data)
    return manifest


def names(job: dict[str, Any]) -> list[str]:
    return [item["uri"].rsplit("/out/", 1)[1] for item in job["results"]]


def test_a_job_past_the_file_count_keeps_its_first_files_and_its_phase(tmp_path: Path) -> None:
    service, client = limited(tmp_path, max_output_files=5)
    job_id = submit(
        client, command='for i in $(seq -w 1 20); do echo $i > "$JOB_OUTPUT_DIR/f-$i.txt"; done'
    )
    job = finish(client, job_id)
    assert job["phase"] == "completed", job["errorSummary"]
    assert sorted(names(job)) == [*(f"f-{n:02d}.txt" for n in range(1, 6)), "ocps-job.log"]
    skipped = manifest_of(service, job_id)["skipped"]
    assert [item["path"] for item in skipped] == [f"f-{n:02d}.txt" for n in range(6, 21)]
    assert {item["reason"] for item in skipped} == {"over the job's output-files limit (5 files)"}


def test_a_job_of_many_files_gets_a_bounded_skipped_list_and_keeps_its_results(
    tmp_path: Path,
) -> None:
    service, client = limited(tmp_path, max_output_files=5)
    counted_before = skipped_metric()
    job_id = submit(client, command='cd "$JOB_OUTPUT_DIR" && touch f-{0001..1200}.txt')
    job = finish(client, job_id)
    assert job["phase"] == "completed", job["errorSummary"]
    assert sorted(names(job)) == [*(f"f-{n:04d}.txt" for n in range(1, 6)), "ocps-job.log"]
    skipped = manifest_of(service, job_id)["skipped"]
    reason = "over the job's output-files limit (5 files)"
    assert len(skipped) == MAX_SKIPPED_LISTED + 1  # not one entry per file past the limit
    assert skipped[0] == {"path": "f-0006.txt", "reason": reason}
    assert skipped[-1] == {"more": 1200 - 5 - MAX_SKIPPED_LISTED, "reason": reason}
    # The metric counts every skipped file, the counted ones too.
    wait_until(lambda: skipped_metric() == counted_before + 1195)


def skipped_metric() -> float:
    return metrics.REGISTRY.get_sample_value("ocps_upload_skipped_files_total") or 0.0


def test_a_sparse_file_past_the_byte_limit_is_never_copied(tmp_path: Path) -> None:
    service, client = limited(tmp_path, max_output_bytes=1024 * 1024, max_output_depth=1)
    job_id = submit(
        client,
        command='cd "$JOB_OUTPUT_DIR" && truncate -s 5G sparse.bin && echo kept > kept.txt'
        " && mkdir -p a/b && echo deep > a/b/deep.txt && exit 3",
    )
    job = finish(client, job_id)
    assert job["phase"] == "error"  # as its command decided; the other results are kept
    assert "code 3" in job["errorSummary"]["message"]
    assert sorted(names(job)) == ["kept.txt", "ocps-job.log"]
    assert {item["path"]: item["reason"] for item in manifest_of(service, job_id)["skipped"]} == {
        "a/b/": "deeper than the job's output-depth limit (1 folder)",
        "sparse.bin": f"over the job's output-bytes limit ({1024 * 1024} bytes)",
    }
    objects = tmp_path / "data" / "objects"
    assert not [path for path in walk_files(objects) if path.name == "sparse.bin"]


def _job_of_many_results(
    tmp_path: Path, write: str
) -> tuple[JobService, FlaskClient, str, dict[str, Any]]:
    """A completed job that ran ``write`` (to ``r-$i.txt``) for each of ``MANY`` files."""
    service, client = limited(tmp_path)
    command = f'cd "$JOB_OUTPUT_DIR" && for i in $(seq -w 1 {MANY}); do {write} "r-$i.txt"; done'
    job_id = submit(client, command=command)
    job = finish(client, job_id, timeout=120)
    assert job["phase"] == "completed", job["errorSummary"]
    return service, client, job_id, job


def test_the_job_object_stays_small_and_links_to_every_result(tmp_path: Path) -> None:
    _service, client, job_id, job = _job_of_many_results(tmp_path, ": >")
    response = client.get(f"/api/v1/job/{job_id}")
    # The object is its bounded list (an id and a uri of about 260 bytes each, here) and a
    # little more, however many results there are.
    assert len(response.data) < MAX_JOB_OBJECT_RESULTS * 300
    assert len(job["results"]) == MAX_JOB_OBJECT_RESULTS
    assert job["jobInfo"]["resultCount"] == MANY + 1
    link = job["jobInfo"]["resultsLink"]
    assert link == f"/api/v1/job/{job_id}/results?limit={MAX_RESULTS_PAGE}"
    # The link and each page's Link header lead through every result, in the listing's order.
    listed: list[dict[str, Any]] = []
    pages = 0
    next_link: str | None = link
    while next_link is not None:
        page = client.get(next_link)
        assert page.status_code == 200, page.data
        listed.extend(page.get_json())
        pages += 1
        found = re.fullmatch(r'<([^>]+)>; rel="next"', page.headers.get("Link", ""))
        next_link = found[1] if found else None
    assert pages == 2
    everything = client.get(f"/api/v1/job/{job_id}/results").get_json()  # no paging: all
    assert listed == everything and len(everything) == MANY + 1
    assert [{"id": item["id"], "uri": item["uri"]} for item in listed[:1000]] == job["results"]
    # Smaller pages, and bad paging parameters.
    small = client.get(f"/api/v1/job/{job_id}/results?limit=100&cursor=1100")
    assert small.get_json() == everything[1100:1151] and "Link" not in small.headers
    for query in ("limit=0", f"limit={MAX_RESULTS_PAGE + 1}", "cursor=-1", "cursor=x"):
        assert client.get(f"/api/v1/job/{job_id}/results?{query}").status_code == 400, query
    # The list of jobs carries the same bounded object.
    (listed_job,) = client.get("/api/v1/job").get_json()
    assert listed_job == job

    # UWS: <uws:results> bounded likewise; jobInfo says how many and where they all are.
    document = client.get(f"/uws/async/{job_id}")
    parsed = check_job(document.data)
    assert len(parsed.results) == MAX_JOB_OBJECT_RESULTS
    tree = valid_xml(document.data)
    info = tree.find(UWS + "jobInfo")
    assert info.find(OCPS + "resultCount").text == str(MANY + 1)
    # The link is the paginated JSON listing's first page, whose Link headers lead on.
    href = info.find(OCPS + "results").get(XLINK_HREF)
    assert path_of(href) == link
    # /results is bounded the same way: the first results, a comment naming the listing,
    # and the listing's next page (the results after these) in its Link header.
    results = client.get(f"/uws/async/{job_id}/results")
    page = valid_xml(results.data)
    listed_xml = page.findall(UWS + "result")
    assert len(listed_xml) == MAX_JOB_OBJECT_RESULTS
    assert [item.get(XLINK_HREF).rsplit("/", 1)[1] for item in listed_xml] == [
        item["id"] for item in job["results"]
    ]
    assert f"the first {MAX_JOB_OBJECT_RESULTS} of {MANY + 1} results".encode() in results.data
    assert href.encode() in results.data
    found = re.fullmatch(r'<([^>]+)>; rel="next"', results.headers["Link"])
    assert found is not None
    rest = client.get(path_of(found[1]))
    assert rest.get_json() == everything[MAX_JOB_OBJECT_RESULTS:]
    assert len(results.data) < MAX_JOB_OBJECT_RESULTS * 400


def test_a_job_of_many_results_keeps_a_small_record_and_lists_them_from_its_manifest(
    tmp_path: Path,
) -> None:
    service, client, job_id, job = _job_of_many_results(tmp_path, "echo $i >")
    # The record (in memory and its file) holds the job object's results and a count, not
    # one entry per result: the manifest beside the outputs lists them all.
    record_file = tmp_path / "data" / "state" / "jobs" / f"{job_id}.json"
    saved = json.loads(record_file.read_text())
    assert len(saved["results"]) == MAX_JOB_OBJECT_RESULTS
    assert saved["result_count"] == MANY + 1
    record = service.backend.get(job_id)
    assert record is not None and record.results is not None
    assert len(record.results) == MAX_JOB_OBJECT_RESULTS and record.result_count == MANY + 1
    assert job["jobInfo"]["resultCount"] == MANY + 1
    assert len(job["results"]) == MAX_JOB_OBJECT_RESULTS

    def check(client: FlaskClient) -> None:
        every = client.get(f"/api/v1/job/{job_id}/results").get_json()
        assert len(every) == MANY + 1
        assert [item["id"] for item in every[:MAX_JOB_OBJECT_RESULTS]] == [
            item["id"] for item in job["results"]
        ]
        # A result past the record's: found in the manifest, by its id and by its index.
        last = next(item for item in every if item["uri"].endswith(f"/r-{MANY}.txt"))
        assert client.get(f"/api/v1/job/result/{last['id']}").data == f"{MANY}\n".encode()
        index = every.index(last)
        assert client.get(f"/api/v1/job/result/{job_id}/{index}").data == f"{MANY}\n".encode()
        assert client.get(f"/api/v1/job/{job_id}").get_json() == job

    check(client)
    close_services()  # and after a restart, from the record file and the manifest
    check(create_embedded_app(build_service(service.settings)).test_client())


def test_a_job_with_few_results_has_the_seed_object_unchanged(client: FlaskClient) -> None:
    job_id = submit(client, command='echo hi > "$JOB_OUTPUT_DIR/hi.txt"')
    job = finish(client, job_id)
    assert len(job["results"]) == 2 and all(set(item) == {"id", "uri"} for item in job["results"])
    assert "resultCount" not in job["jobInfo"] and "resultsLink" not in job["jobInfo"]
    info = valid_xml(client.get(f"/uws/async/{job_id}").data).find(UWS + "jobInfo")
    assert info is None or info.find(OCPS + "resultCount") is None
    results = client.get(f"/uws/async/{job_id}/results")
    assert b"<!--" not in results.data and "Link" not in results.headers
