"""Today's OCPS workload on the test control plane: the CSC as it is, and the summit's job pods.

The CSC (lsst/dm_OCPS) sends no credentials; it is replayed against the Kubernetes backend
with the settings knative/ ships. The summit example (charts/ocps-jobs/values-summit.yaml)
is rendered with Helm, read as the deployed service reads its ConfigMap, and the Job it
builds for a CSC job is dry-run, then created, on the real apiserver.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from ocps_jobs.backends.kubernetes.spec import build_job
from ocps_jobs.composition import build_service
from ocps_jobs.config import Settings
from ocps_jobs.http import create_embedded_app
from ocps_jobs.models import EnvironmentVariable, JobParameters, JobRecord
from tests.cluster.conftest import ControlPlane
from tests.cluster.test_helm_chart import CHART, DEPLOYMENT, one, template
from tests.cluster.test_knative_manifests import create, settings_of_deployment
from tests.cluster.test_kubernetes_backend import act_as_sidecar, job_condition

CSC_POD_ADDRESS = "10.244.3.17"
FINISHED = {"completed", "error", "aborted", "unknown"}  # what the CSC stops waiting at
# The CSC's execute command, as ocps_csc.py sends it (values of a LATISS run).
CSC_BODY: dict[str, Any] = {
    "command": "cd $JOB_SOURCE_DIR && bash bin/pipetask.sh",
    "url": "https://github.com/lsst-dm/uws_scripts.git",
    "commit_ref": "main",
    "run_id": "csc-2024-01-02",
    "environment": [
        {"name": "BUTLER_REPO", "value": "/repo/LATISS"},
        {"name": "RUN_OPTIONS", "value": "-i LATISS/raw/all -p pipeline.yaml"},
        {"name": "OUTPUT_GLOB", "value": "*.log"},
        {"name": "IMAGE_TAG", "value": "d_latest"},
    ],
}


def shipped_settings(
    monkeypatch: pytest.MonkeyPatch,
    control_plane: ControlPlane,
    namespace: str,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
) -> Settings:
    """knative/'s settings, with the test apiserver and object store in place of the site's."""
    settings_of_deployment(monkeypatch, namespace)
    return Settings.from_env(
        kubeconfig=control_plane.kubeconfig,
        s3_endpoint=s3_endpoint,
        bucket=bucket,
        data_dir=tmp_path / "data",
    )


def test_the_csc_without_credentials_gets_the_answers_it_expects(
    monkeypatch: pytest.MonkeyPatch,
    control_plane: ControlPlane,
    kube: k8s.ApiClient,
    namespace: str,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
) -> None:
    settings = shipped_settings(
        monkeypatch, control_plane, namespace, s3_endpoint, bucket, tmp_path
    )
    assert settings.authentication_required and settings.anonymous_identity == "ocps-csc"
    service = build_service(settings)
    service.store.ensure_ready()
    # A plain requests.Session(): no Authorization header, from a pod of the cluster.
    csc = create_embedded_app(service).test_client()
    csc.environ_base["REMOTE_ADDR"] = CSC_POD_ADDRESS
    url = "/api/v1"

    created = csc.put(f"{url}/job", json=CSC_BODY)
    assert created.status_code == 200, created.data
    job = created.get_json()
    job_id = job["jobId"]
    assert job["ownerId"] == "ocps-csc" and job["runId"] == CSC_BODY["run_id"]
    assert job["phase"] in {"pending", "queued", "executing"}

    # The CSC's wait: GET every 0.5 s until a final phase; never "unknown" on the way.
    seen = []
    sidecar_done = False
    deadline = time.monotonic() + 90
    while True:
        answer = csc.get(f"{url}/job/{job_id}")
        assert answer.status_code == 200, answer.data
        phase = answer.get_json()["phase"]
        seen.append(phase)
        if phase in FINISHED:
            break
        if not sidecar_done and job_condition(kube, namespace, job_id, "Complete"):
            act_as_sidecar(service, job_id, tmp_path)  # KWOK runs no containers
            sidecar_done = True
        assert time.monotonic() < deadline, seen
        time.sleep(0.5)
    assert phase == "completed", seen
    assert "unknown" not in seen
    results = csc.get(f"{url}/job/{job_id}/results").get_json()
    assert sorted(item["uri"].rsplit("/out/", 1)[1] for item in results) == [
        "result.txt",
        "sub/table.csv",
    ]

    # Prerequisite polling: a job that is gone is a 404, the CSC's signal to stop waiting.
    gone = csc.get(f"{url}/job/{'f' * 32}")
    assert gone.status_code == 404 and gone.get_json()["error"] == "job_not_found"

    # Abort: DELETE of a running job answers as the seed did, and the job is gone.
    second = csc.put(f"{url}/job", json=CSC_BODY).get_json()["jobId"]
    deleted = csc.delete(f"{url}/job/{second}")
    assert deleted.status_code == 200, deleted.data
    assert deleted.get_json()["status"] == "ok"
    assert csc.get(f"{url}/job/{second}").status_code == 404

    # A bearer token that is not valid is refused, from anywhere; no Job is created.
    before = len(k8s.BatchV1Api(kube).list_namespaced_job(namespace).items)
    forged = csc.put(f"{url}/job", json=CSC_BODY, headers={"Authorization": "Bearer guess"})
    assert forged.status_code == 401
    assert len(k8s.BatchV1Api(kube).list_namespaced_job(namespace).items) == before


def test_behind_a_named_ingress_outside_callers_need_credentials(
    monkeypatch: pytest.MonkeyPatch,
    control_plane: ControlPlane,
    kube: k8s.ApiClient,
    namespace: str,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
) -> None:
    """The shipped settings with the ingress's network named: who is let in, and as whom."""
    monkeypatch.setenv("OCPS_AUTH_HEADER", "X-Auth-Request-User")
    monkeypatch.setenv("OCPS_AUTH_HEADER_SOURCES", '["10.96.0.0/24"]')
    settings = shipped_settings(
        monkeypatch, control_plane, namespace, s3_endpoint, bucket, tmp_path
    )
    service = build_service(settings)
    service.store.ensure_ready()
    app = create_embedded_app(service)
    ingress = app.test_client()
    ingress.environ_base["REMOTE_ADDR"] = "10.96.0.12"
    csc = app.test_client()
    csc.environ_base["REMOTE_ADDR"] = CSC_POD_ADDRESS

    assert ingress.put("/api/v1/job", json=CSC_BODY).status_code == 401
    alice = ingress.put("/api/v1/job", json=CSC_BODY, headers={"X-Auth-Request-User": "alice"})
    assert alice.status_code == 200 and alice.get_json()["ownerId"] == "alice"
    # The header from a CSC pod is not believed: the job is the CSC's, not bob's.
    claimed = csc.put("/api/v1/job", json=CSC_BODY, headers={"X-Auth-Request-User": "bob"})
    assert claimed.status_code == 200 and claimed.get_json()["ownerId"] == "ocps-csc"
    owners = {
        job.metadata.annotations["ocps.lsst.io/owner"]
        for job in k8s.BatchV1Api(kube).list_namespaced_job(namespace).items
    }
    assert owners == {"alice", "ocps-csc"}


# --- the NetworkPolicy's selectors ----------------------------------------------------------


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def admitted(policy: dict[str, Any], namespace: dict[str, str], pod: dict[str, str]) -> bool:
    """Whether a pod (its namespace's labels and its own) is a peer the policy admits."""
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            in_namespace = "namespaceSelector" not in peer or selector_matches(
                peer["namespaceSelector"], namespace
            )
            # A peer with only a podSelector means pods of the policy's own namespace.
            if "namespaceSelector" not in peer:
                in_namespace = namespace.get("kubernetes.io/metadata.name") == "ocps"
            if in_namespace and selector_matches(peer.get("podSelector", {}), pod):
                return True
    return False


def ns(name: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name}


@pytest.mark.parametrize("case", ["knative", "deployment", "summit"])
def test_the_policy_admits_the_ingress_and_the_cscs_and_no_other_pod(case: str) -> None:
    values = {
        "knative": [],
        "deployment": DEPLOYMENT,
        "summit": ["-f", str(CHART / "values-summit.yaml")],
    }[case]
    policy = one(template(values), "networking.k8s.io/v1", "NetworkPolicy")
    csc_namespace = ns("uws")
    for csc in ("atocps", "ccocps", "mtocps", "raocps"):
        pod = {"app.kubernetes.io/instance": csc, "app.kubernetes.io/name": "csc"}
        assert admitted(policy, csc_namespace, pod), csc
    if case == "knative":
        assert admitted(policy, ns("knative-serving"), {"app": "activator"})
        assert admitted(policy, ns("kourier-system"), {"app": "3scale-kourier-gateway"})
    else:
        gafaelfawr = {"gafaelfawr.lsst.io/ingress": "true", "app.kubernetes.io/name": "nginx"}
        assert admitted(policy, ns("ingress-nginx"), gafaelfawr)
    for namespace, pod in [
        (csc_namespace, {"app.kubernetes.io/instance": "atheader"}),  # another pod of uws
        (ns("default"), {"app": "anything"}),
        (ns("ocps"), {"ocps.lsst.io/job-id": "0" * 32}),  # a job pod
        (ns("uws"), {}),
    ]:
        assert not admitted(policy, namespace, pod), (namespace, pod)
    # The summit's CSCs only from their namespace.
    if case == "summit":
        assert not admitted(policy, ns("elsewhere"), {"app.kubernetes.io/instance": "atocps"})


# --- the summit example: its Job built and created ------------------------------------------


def summit_settings(monkeypatch: pytest.MonkeyPatch, namespace: str) -> Settings:
    """The settings a server deployed with values-summit.yaml reads from its ConfigMap."""
    docs = template(["-f", str(CHART / "values-summit.yaml")], namespace)
    for name, value in one(docs, "v1", "ConfigMap")["data"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OCPS_BACKEND", "kubernetes")
    monkeypatch.setenv("OCPS_NAMESPACE", namespace)
    return Settings.from_env()


def csc_record(repository: str, **parameters: Any) -> JobRecord:
    environment = [EnvironmentVariable(**entry) for entry in CSC_BODY["environment"]]
    environment[0] = EnvironmentVariable(name="BUTLER_REPO", value=repository)
    return JobRecord(
        job_id="0123456789abcdef0123456789abcdef",
        run_id="csc-run",
        owner="ocps-csc",
        creation_time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        parameters=JobParameters(
            command=CSC_BODY["command"],
            url=CSC_BODY["url"],
            commit_ref=CSC_BODY["commit_ref"],
            environment=environment,
            **parameters,
        ),
    )


def test_the_summit_example_builds_a_job_the_apiserver_creates(
    monkeypatch: pytest.MonkeyPatch, kube: k8s.ApiClient, namespace: str
) -> None:
    settings = summit_settings(monkeypatch, namespace)
    job = kube.sanitize_for_serialization(
        build_job(csc_record("/repo/LSSTCam", memory="48Gi"), settings, suspend=True)
    )
    create(kube, job, dry_run=True)
    stored = k8s.BatchV1Api(kube).create_namespaced_job(namespace, job)
    pod = stored.spec.template.spec
    (main,) = pod.containers
    assert main.image == "ghcr.io/lsst/scipipe:d_latest"
    assert stored.spec.ttl_seconds_after_finished == 7200
    # Volumes: read-write and read-only NFS, each where the summit mounts it.
    mounts = {m.mount_path: m for m in main.volume_mounts}
    assert mounts["/project"].read_only is not True
    assert mounts["/repo/LATISS"].read_only is not True and mounts["/repo/LATISS"].sub_path
    assert mounts["/data/lsstdata/base/auxtel"].read_only is True
    volumes = {v.name: v for v in pod.volumes}
    assert volumes[mounts["/project"].name].nfs.read_only is not True
    assert volumes[mounts["/data/lsstdata/base/auxtel"].name].nfs.read_only is True
    # Secret files of the job's user: mode 0400, the fsGroup 202 as their group.
    secret = volumes[mounts["/home/lsst/.lsst"].name].secret
    assert secret.secret_name == "ocps-jobs-job-files" and secret.default_mode == 0o400
    assert {item.path for item in secret.items} == {
        "postgres-credentials.txt",
        "aws-credentials.ini",
    }
    context = pod.security_context
    assert (context.run_as_user, context.run_as_group, context.fs_group) == (1000, 202, 202)
    environment = {e.name: e.value for e in main.env}
    assert environment["PGPASSFILE"] == "/home/lsst/.lsst/postgres-credentials.txt"
    assert environment["DAF_BUTLER_REPOSITORY_INDEX"] == "/project/data-repos.yaml"
    assert environment["DATA_DIR_LATISS"] == "/repo/LATISS"
    # Placement and the work folder's bound.
    assert pod.node_selector == {"kubernetes.io/arch": "amd64"}
    assert [t.key for t in pod.tolerations] == ["dedicated"]
    assert pod.priority_class_name == "ocps-jobs"
    work = next(v for v in pod.volumes if v.empty_dir is not None)
    assert work.empty_dir.size_limit == "50Gi"
    # The LSSTCam profile, by BUTLER_REPO, with the job's own memory request within the max.
    assert main.resources.requests == {"cpu": "4", "memory": "48Gi"}
    assert main.resources.limits == {"cpu": "16", "memory": "64Gi"}
    # Argo CD's label and annotations on the Job and its pods.
    for meta in (stored.metadata, stored.spec.template.metadata):
        assert meta.labels["argocd.argoproj.io/instance"] == "ocps-uws-job"
        assert meta.annotations["argocd.argoproj.io/sync-options"] == "Prune=false"
        assert meta.annotations["argocd.argoproj.io/compare-options"] == "IgnoreExtraneous"
    # LATISS gets its own profile; an unknown repository the defaults.
    latiss = build_job(csc_record("/repo/LATISS"), settings, suspend=True)
    assert latiss.spec.template.spec.containers[0].resources.limits == {
        "cpu": "8",
        "memory": "32Gi",
    }


def test_the_summit_example_refuses_what_it_does_not_allow(
    monkeypatch: pytest.MonkeyPatch,
    control_plane: ControlPlane,
    kube: k8s.ApiClient,
    namespace: str,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
) -> None:
    """Through the CSC's interface: a 400 naming the limit, and no Job created."""
    settings = summit_settings(monkeypatch, namespace)
    service = build_service(
        settings.model_copy(
            update={
                "kubeconfig": control_plane.kubeconfig,
                "s3_endpoint": s3_endpoint,
                "bucket": bucket,
                "data_dir": tmp_path / "data",
            }
        )
    )
    service.store.ensure_ready()
    csc = create_embedded_app(service).test_client()
    csc.environ_base["REMOTE_ADDR"] = CSC_POD_ADDRESS
    environment = [e for e in CSC_BODY["environment"] if e["name"] != "IMAGE_TAG"]
    refused = {
        "OCPS_JOB_MAX_MEMORY": {**CSC_BODY, "memory": "65Gi"},
        "OCPS_JOB_MAX_CPU": {**CSC_BODY, "cpu": "17"},
        "OCPS_JOB_IMAGE_TAG_PATTERN": {
            **CSC_BODY,
            "environment": [*environment, {"name": "IMAGE_TAG", "value": "latest"}],
        },
    }
    for named, body in refused.items():
        answer = csc.put("/api/v1/job", json=body)
        assert answer.status_code == 400, (named, answer.data)
        assert named in answer.get_json()["message"]
    # A malformed request field is refused by the request's own validation.
    assert csc.put("/api/v1/job", json={**CSC_BODY, "cpu": "lots"}).status_code == 400
    assert k8s.BatchV1Api(kube).list_namespaced_job(namespace).items == []
    # A weekly tag the pattern allows is the job's image.
    weekly = {
        **CSC_BODY,
        "environment": [*environment, {"name": "IMAGE_TAG", "value": "w_2025_10"}],
    }
    created = csc.put("/api/v1/job", json=weekly)
    assert created.status_code == 200, created.data
    (job,) = k8s.BatchV1Api(kube).list_namespaced_job(namespace).items
    assert job.spec.template.spec.containers[0].image == "ghcr.io/lsst/scipipe:w_2025_10"
