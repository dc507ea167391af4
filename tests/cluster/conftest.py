"""The real test control plane (scripts/testenv) for cluster tests: one per test session."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from ocps_jobs.composition import build_service
from ocps_jobs.config import Settings
from ocps_jobs.service import JobService
from tests.conftest import REPO_ROOT

TESTENV = REPO_ROOT / "scripts" / "testenv"


class ControlPlane:
    """A running test control plane: its kubeconfig and facts from testenv.json."""

    def __init__(self, run_dir: Path, kubeconfig: Path) -> None:
        self.run_dir = run_dir
        self.kubeconfig = kubeconfig
        self.info = json.loads((run_dir / "testenv.json").read_text())

    def api(self) -> k8s.ApiClient:
        """A fresh Kubernetes API client for assertions."""
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def crds(self, kind: str) -> Path:
        """Folder of CRD YAMLs: ``knative`` or ``gateway_api``."""
        return Path(self.info["crds"][kind])


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """Start etcd, kube-apiserver, controller-manager, scheduler and KWOK on loopback."""
    run_dir = tmp_path_factory.mktemp("testenv") / "run"
    up = subprocess.run(
        [str(TESTENV), "up", "--dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=1800,  # the first run builds the binaries
        check=False,
    )
    if up.returncode != 0:
        pytest.fail(f"scripts/testenv up failed:\n{up.stderr[-4000:]}")
    last = up.stdout.strip().splitlines()[-1]
    assert last.startswith("KUBECONFIG=")
    plane = ControlPlane(run_dir, Path(last.removeprefix("KUBECONFIG=")))
    yield plane
    subprocess.run(
        [str(TESTENV), "down", "--dir", str(run_dir)], capture_output=True, timeout=120, check=False
    )


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test, so that lists see only the test's own Jobs."""
    name = "t-" + uuid.uuid4().hex[:10]
    with control_plane.api() as api:
        core = k8s.CoreV1Api(api)
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        yield name
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def kube(control_plane: ControlPlane) -> Iterator[k8s.ApiClient]:
    """An API client for the test's own checks."""
    with control_plane.api() as api:
        yield api


def cluster_settings(
    control_plane: ControlPlane,
    namespace: str,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
    **overrides: object,
) -> Settings:
    """Kubernetes-backend settings against the test control plane and moto's S3."""
    values: dict[str, object] = {
        "backend": "kubernetes",
        "namespace": namespace,
        "kubeconfig": control_plane.kubeconfig,
        "s3_endpoint": s3_endpoint,
        "bucket": bucket,
        "data_dir": tmp_path / "data",
        "job_ttl_seconds": 3600,
        "auth_required": False,  # authentication has its own tests
    }
    values.update(overrides)
    return Settings.from_env(**values)


@pytest.fixture
def make_cluster_service(
    control_plane: ControlPlane, namespace: str, s3_endpoint: str, bucket: str, tmp_path: Path
) -> Callable[..., JobService]:
    """Build the Kubernetes-backend service with settings overrides, its bucket created."""

    def make(**overrides: object) -> JobService:
        service = build_service(
            cluster_settings(control_plane, namespace, s3_endpoint, bucket, tmp_path, **overrides)
        )
        service.store.ensure_ready()
        return service

    return make


@pytest.fixture
def cluster_service(make_cluster_service: Callable[..., JobService]) -> JobService:
    """The service on the Kubernetes backend with the default test settings."""
    return make_cluster_service()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/cluster is marked ``cluster``."""
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.cluster)
