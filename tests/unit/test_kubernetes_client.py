"""How the Kubernetes backend uses the client library: the Job's JSON, credentials, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from ocps_jobs.backends.kubernetes.client import (
    REQUEST_TIMEOUT,
    KubernetesApi,
    Missing,
    api_message,
)
from ocps_jobs.backends.kubernetes.credentials import ThrottledRefresh
from ocps_jobs.backends.kubernetes.spec import build_job, job_json
from ocps_jobs.config import Settings
from ocps_jobs.errors import BackendUnavailableError, InvalidRequestError, PayloadTooLargeError
from ocps_jobs.models import EnvironmentVariable, JobParameters, JobRecord, utcnow


@pytest.mark.parametrize(
    "parameters",
    [
        JobParameters(command="true"),
        JobParameters(
            command="run.sh --visit 12",
            environment=[EnvironmentVariable(name="BUTLER", value="s3://repo")],
            url="https://github.com/lsst-dm/example.git",
            commit_ref="v1.2",
        ),
    ],
    ids=["plain", "git-and-environment"],
)
@pytest.mark.parametrize("suspend", [True, False])
def test_job_json_is_the_clients_own_serialization(
    parameters: JobParameters, suspend: bool, tmp_path: Path
) -> None:
    settings = Settings.from_env(backend="kubernetes", namespace="ocps", data_dir=tmp_path)
    record = JobRecord(
        job_id="0123abcd",
        run_id="run-7",
        owner="csc",
        creation_time=utcnow(),
        parameters=parameters,
    )
    job = build_job(record, settings, suspend=suspend)

    assert json.loads(job_json(job)) == ApiClient().sanitize_for_serialization(job)


class LoaderConfiguration:
    """Stands in for the client's Configuration as the kubeconfig loader leaves it."""

    def __init__(self) -> None:
        self.refreshes = 0
        self.refresh_api_key_hook: Any = self.loader_hook

    def loader_hook(self, configuration: LoaderConfiguration) -> None:
        # The real loader re-applies its configuration, which sets its hook anew.
        self.refreshes += 1
        configuration.refresh_api_key_hook = self.loader_hook


def test_credentials_refresh_at_most_once_per_interval() -> None:
    now = [100.0]
    configuration = LoaderConfiguration()
    throttle = ThrottledRefresh(configuration, interval=1.0, clock=lambda: now[0])
    assert configuration.refresh_api_key_hook is throttle

    for _ in range(50):  # fifty requests within the same second
        configuration.refresh_api_key_hook(configuration)
    assert configuration.refreshes == 1
    assert configuration.refresh_api_key_hook is throttle  # still wrapped after the loader ran

    now[0] += 0.5
    configuration.refresh_api_key_hook(configuration)
    assert configuration.refreshes == 1
    now[0] += 0.6
    configuration.refresh_api_key_hook(configuration)
    assert configuration.refreshes == 2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"kind":"Status","message":"spec.template: Invalid value"}',
            "spec.template: Invalid value",
        ),
        (b'["not", "a", "Status"]', "Unprocessable Entity"),
        (b'"a string"', "Unprocessable Entity"),
        (b"<html>proxy error</html>", "Unprocessable Entity"),
        (b'{"kind":"Status"}', "Unprocessable Entity"),
        (None, "Unprocessable Entity"),
    ],
    ids=["status", "list", "string", "not-json", "no-message", "no-body"],
)
def test_api_error_message_comes_from_a_status_body_only(body: bytes | None, expected: str) -> None:
    error = ApiException(status=422, reason="Unprocessable Entity")
    error.body = body
    assert api_message(error) == expected


def refusing(error: Exception) -> Callable[..., Any]:
    """A client method that fails with ``error``, after checking it got the timeout."""

    def call(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        assert _request_timeout == REQUEST_TIMEOUT
        raise error

    return call


def api_error(status: int, body: bytes = b"") -> ApiException:
    error = ApiException(status=status, reason="Reason")
    error.body = body
    return error


@pytest.mark.parametrize(
    ("error", "raised", "message"),
    [
        (api_error(404), Missing, ""),
        (api_error(413), PayloadTooLargeError, "too large"),
        (api_error(422, b'{"message":"spec: bad"}'), InvalidRequestError, "spec: bad"),
        (api_error(400), InvalidRequestError, "Reason"),
        (api_error(503), BackendUnavailableError, "create job: 503 Reason"),
        (ConnectionRefusedError(), BackendUnavailableError, "create job"),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "slow"), BackendUnavailableError, ""),
    ],
    ids=["404", "413", "422", "400", "503", "refused", "timeout"],
)
def test_api_failures_arrive_as_the_projects_errors(
    error: Exception, raised: type[Exception], message: str
) -> None:
    api = KubernetesApi(ApiClient(), "ocps")
    with pytest.raises(raised) as caught:
        api.call("create job", refusing(error))
    assert message in str(caught.value)
