"""The UWS routes of each Knative function in-process, through functions-framework's factory."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.test_uws import UNKNOWN, check_job, check_job_list, path_of, valid_xml


def test_a_uws_job_through_all_three_functions(functions: dict[str, FlaskClient]) -> None:
    create, query, results = functions["create_job"], functions["query_job"], functions["results"]
    created = create.post("/uws/async", data={"command": "echo hi > $JOB_OUTPUT_DIR/hi.txt"})
    assert created.status_code == 303
    job_url = created.headers["Location"]
    job_path = path_of(job_url)
    assert check_job(query.get(job_path).data).phase == "PENDING"

    assert (
        create.post(job_path + "/executionduration", data={"EXECUTIONDURATION": "60"}).status_code
        == 303
    )
    assert create.post(job_path + "/phase", data={"PHASE": "RUN"}).status_code == 303
    for _ in range(20):
        parsed = check_job(query.get(job_path + "?WAIT=5").data)
        if parsed.phase == "COMPLETED":
            break
    assert parsed.phase == "COMPLETED"
    assert parsed.executionduration.value == 60
    assert query.get(job_path + "/phase").data == b"COMPLETED"
    assert [r.jobid for r in check_job_list(query.get("/uws/async?PHASE=COMPLETED").data)] == [
        parsed.jobid
    ]

    listing = results.get(job_path + "/results")
    assert listing.status_code == 200
    hrefs = {
        e.get("id"): e.get("{http://www.w3.org/1999/xlink}href") for e in valid_xml(listing.data)
    }
    assert set(hrefs) == {"hi.txt", "ocps-job.log"}
    assert results.get(path_of(hrefs["hi.txt"])).data == b"hi\n"

    deleted = create.delete(job_path)
    assert deleted.status_code == 303 and deleted.headers["Location"].endswith("/uws/async")
    assert query.get(job_path).status_code == 404


@pytest.mark.parametrize(
    ("function", "method", "path", "status"),
    [
        # create_job: state changes only.
        ("create_job", "GET", "/uws/async", 405),
        ("create_job", "GET", f"/uws/async/{UNKNOWN}", 405),
        ("create_job", "GET", f"/uws/async/{UNKNOWN}/phase", 405),
        ("create_job", "GET", f"/uws/async/{UNKNOWN}/results", 404),
        ("create_job", "GET", f"/uws/async/{UNKNOWN}/owner", 404),
        # query_job: reads only.
        ("query_job", "POST", "/uws/async", 405),
        ("query_job", "DELETE", f"/uws/async/{UNKNOWN}", 405),
        ("query_job", "POST", f"/uws/async/{UNKNOWN}/phase", 405),
        ("query_job", "POST", f"/uws/async/{UNKNOWN}/destruction", 405),
        ("query_job", "GET", f"/uws/async/{UNKNOWN}/results", 404),
        ("query_job", "GET", f"/uws/async/{UNKNOWN}", 404),
        # results: the result listing only.
        ("results", "GET", "/uws/async", 404),
        ("results", "GET", f"/uws/async/{UNKNOWN}", 404),
        ("results", "POST", f"/uws/async/{UNKNOWN}/results", 405),
        ("results", "GET", f"/uws/async/{UNKNOWN}/results", 404),
    ],
)
def test_each_function_answers_only_its_uws_routes(
    functions: dict[str, FlaskClient], function: str, method: str, path: str, status: int
) -> None:
    response = functions[function].open(path, method=method)
    assert response.status_code == status, response.data
    assert response.mimetype == "text/plain"
    if status == 405:
        assert response.headers["Allow"]
