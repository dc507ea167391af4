"""Routing: a function answers its own paths, 405 with Allow for other methods, 404 otherwise."""

import pytest

from ocps_jobs.errors import MethodNotAllowedError, RouteNotFoundError
from ocps_jobs.http.app import FUNCTION_ROUTES
from ocps_jobs.http.routing import Router

JOB = "e13ed9f2803842409763b185d4f490e2"


@pytest.mark.parametrize(
    ("function", "method", "path", "handler", "params"),
    [
        ("create_job", "PUT", "/api/v1/job", "create_job", {}),
        ("create_job", "PUT", "/api/v1/job/", "create_job", {}),
        ("create_job", "DELETE", f"/api/v1/job/{JOB}", "delete_job", {"job_id": JOB}),
        ("query_job", "GET", "/api/v1/job", "list_jobs", {}),
        ("query_job", "HEAD", f"/api/v1/job/{JOB}", "get_job", {"job_id": JOB}),
        ("query_job", "GET", f"/api/v1/job/{JOB}/phase", "get_phase", {"job_id": JOB}),
        ("query_job", "GET", f"/api/v1/job/{JOB}/parameters", "get_parameters", {"job_id": JOB}),
        ("results", "GET", f"/api/v1/job/{JOB}/results", "list_results", {"job_id": JOB}),
        ("results", "GET", "/api/v1/job/result/abc", "download_result", {"reference": "abc"}),
        (
            "results",
            "GET",
            "/api/v1/job/result/ab/c+d=",
            "download_result",
            {"reference": "ab/c+d="},
        ),
        (
            "results",
            "GET",
            f"/api/v1/job/result/{JOB}/3",
            "download_result",
            {"reference": f"{JOB}/3"},
        ),
    ],
)
def test_each_function_routes_its_own_paths(function, method, path, handler, params) -> None:
    found, found_params = Router(FUNCTION_ROUTES[function]).match(method, path)
    assert found.__name__ == handler
    assert found_params == params


@pytest.mark.parametrize(
    ("function", "method", "path", "allowed"),
    [
        ("create_job", "GET", "/api/v1/job", ["PUT"]),
        ("create_job", "POST", f"/api/v1/job/{JOB}", ["DELETE"]),
        ("query_job", "DELETE", f"/api/v1/job/{JOB}", ["GET", "HEAD"]),
        ("results", "PUT", "/api/v1/job/result/abc", ["GET", "HEAD"]),
    ],
)
def test_wrong_method_is_405_with_allow(function, method, path, allowed) -> None:
    with pytest.raises(MethodNotAllowedError) as raised:
        Router(FUNCTION_ROUTES[function]).match(method, path)
    assert raised.value.allowed == allowed


@pytest.mark.parametrize(
    ("function", "path"),
    [
        ("create_job", f"/api/v1/job/{JOB}/phase"),
        ("query_job", f"/api/v1/job/{JOB}/results"),
        ("results", "/api/v1/job"),
        ("query_job", "/api/v2/job"),
        ("query_job", f"/api/v1/job/{JOB}/unknown"),
        ("results", "/"),  # query_job serves the web view there
    ],
)
def test_other_paths_are_404(function, path) -> None:
    with pytest.raises(RouteNotFoundError):
        Router(FUNCTION_ROUTES[function]).match("GET", path)
