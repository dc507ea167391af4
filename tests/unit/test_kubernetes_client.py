"""How the Kubernetes backend uses the client library: the Job's JSON and credential refresh."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from ocps_jobs.backends.kubernetes import (
    KubernetesBackend,
    _api_message,
    _Informer,
    _ThrottledRefresh,
)
from ocps_jobs.config import Settings
from ocps_jobs.errors import BackendUnavailableError
from ocps_jobs.jobspec import build_job, job_json
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
    throttle = _ThrottledRefresh(configuration, interval=1.0, clock=lambda: now[0])
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


class UnreachableBackend:
    """The backend as the watches use it, with an API that refuses every call."""

    namespace = "ocps"
    batch = SimpleNamespace(list_namespaced_job=lambda *args, **kwargs: None)
    core = SimpleNamespace(list_namespaced_pod=lambda *args, **kwargs: None)

    def __init__(self) -> None:
        self.calls = 0

    def _raw(self, action: str, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise BackendUnavailableError(f"Kubernetes unavailable ({action})")

    _pages = KubernetesBackend._pages  # the real pagination, over the refusing _raw


def test_lists_do_not_wait_for_watches_that_cannot_list() -> None:
    backend = UnreachableBackend()
    informer = _Informer(backend)  # type: ignore[arg-type]
    try:
        started = time.monotonic()
        assert informer.wait_first_sync(30.0) is False
        assert time.monotonic() - started < 5.0  # not the 30 s: the first listing failed
        assert backend.calls >= 1
    finally:
        informer.stop()


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
    assert _api_message(error) == expected
