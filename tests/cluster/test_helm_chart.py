"""charts/ocps-jobs: knative/ is its default rendering; lint, template, dry-run of both topologies.

Helm is the test environment's (scripts/testenv helm, built from helm.sh/helm/v4 into its
cache). Every rendered manifest is server-side dry-run on the test control plane with the
real CRDs: Knative Serving and Gateway API from the testenv cache, GafaelfawrIngress and
VaultSecret from the reference folder beside the repository (../shared/reference/crds, or
``$OCPS_REFERENCE_DIR/crds``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from ocps_jobs.service import JobService
from tests.cluster import test_knative_manifests
from tests.cluster.conftest import ControlPlane
from tests.cluster.test_knative_manifests import (
    EXPECTED_RULES,
    JOB_RUNNER,
    Doc,
    assert_subset,
    create,
    discover,
    exists,
    load_yaml,
    role_rules,
)
from tests.cluster.test_kubernetes_backend import act_as_sidecar, job_condition
from tests.conftest import REPO_ROOT, S3_ACCESS_KEY, S3_SECRET_KEY
from tests.helpers import wait_until

CHART = REPO_ROOT / "charts" / "ocps-jobs"
KNATIVE = REPO_ROOT / "knative"
RENDER_KNATIVE = REPO_ROOT / "scripts" / "render-knative"
TESTENV = REPO_ROOT / "scripts" / "testenv"
# The reference folder beside the repository, like the UWS schema's (tests/test_uws.py).
REFERENCE = Path(os.environ.get("OCPS_REFERENCE_DIR") or REPO_ROOT.parent / "shared" / "reference")
PLATFORM_CRDS = REFERENCE / "crds"
# The Knative and Gateway API CRDs on the test control plane (a module-scoped fixture).
crds = test_knative_manifests.crds
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
PYPROJECT_VERSION = next(
    line.split("=", 1)[1].strip().strip('"')
    for line in (REPO_ROOT / "pyproject.toml").read_text().splitlines()
    if line.startswith("version = ")
)
HOST = ["--set", "global.host=ocps.example.org", "--set", "global.baseUrl=https://ocps.example.org"]
DEPLOYMENT = ["--set", "topology=deployment", *HOST]
VAULT = ["--set", "secrets.vault.enabled=true", "--set", "global.vaultSecretsPath=secret/phalanx/t"]

# Values of every rendering checked: both topologies, each edge, Vault, the summit example.
CASES: dict[str, list[str]] = {
    "knative": [],
    "knative-vault": [*VAULT, "--set", "secrets.vault.jobFiles=true"],
    "deployment-gafaelfawr": DEPLOYMENT,
    "deployment-ingress": [*DEPLOYMENT, "--set", "deployment.ingress.type=ingress"],
    "deployment-bare": [
        *DEPLOYMENT,
        "--set",
        "deployment.ingress.type=none",
        "--set",
        "networkPolicy.enabled=false",
    ],
    "summit": ["-f", str(CHART / "values-summit.yaml")],
}
KINDS: dict[str, set[tuple[str, str]]] = {
    "knative": {
        ("v1", "ConfigMap"),
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("serving.knative.dev/v1", "Service"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("batch/v1", "CronJob"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
    },
    "deployment": {
        ("v1", "ConfigMap"),
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("batch/v1", "CronJob"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
    },
}
VAULT_SECRET = ("ricoberger.de/v1alpha1", "VaultSecret")
GAFAELFAWR_INGRESS = ("gafaelfawr.lsst.io/v1alpha1", "GafaelfawrIngress")
INGRESS = ("networking.k8s.io/v1", "Ingress")


def run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    # The first call may build helm (about 3 minutes on 2 cores).
    return run([str(TESTENV), "helm", *args], timeout=1800)


def template(values: list[str], namespace: str = "ocps") -> list[Doc]:
    """``helm template`` of the chart with these values, as objects in ``namespace``."""
    done = helm("template", "ocps-jobs", str(CHART), "--namespace", namespace, *values)
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    for doc in docs:
        doc["metadata"].setdefault("namespace", namespace)  # as helm install sets it
    return docs


def kinds(docs: list[Doc]) -> set[tuple[str, str]]:
    return {(doc["apiVersion"], doc["kind"]) for doc in docs}


def one(docs: list[Doc], api_version: str, kind: str) -> Doc:
    (found,) = [d for d in docs if d["apiVersion"] == api_version and d["kind"] == kind]
    return found


def pod_templates(docs: list[Doc]) -> dict[str, Doc]:
    """The pod template of every workload, by its kind and name."""
    found = {}
    for doc in docs:
        if doc["kind"] == "CronJob":
            found[f"CronJob/{doc['metadata']['name']}"] = doc["spec"]["jobTemplate"]["spec"][
                "template"
            ]
        elif doc["kind"] == "Deployment":
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc["spec"]["template"]
    return found


def render_knative(*args: str) -> subprocess.CompletedProcess[str]:
    # The first call may build helm (about 3 minutes on 2 cores).
    return run([sys.executable, str(RENDER_KNATIVE), *args], timeout=1800)


# --- knative/ is the chart's default rendering -------------------------------------------


def test_knative_folder_is_the_default_rendering_of_the_chart(tmp_path: Path) -> None:
    done = render_knative("--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rendered = {path.name: path.read_text() for path in tmp_path.glob("*.yaml")}
    assert {"kustomization.yaml", "httproute.yaml", "rbac.yaml", "configmap.yaml"} <= set(rendered)
    for name, text in rendered.items():
        assert (KNATIVE / name).read_text() == text, f"knative/{name}: run scripts/render-knative"
    # Every manifest of knative/ but the hand-written Secret template comes from the chart.
    on_disk = {path.name for path in KNATIVE.glob("*.yaml")}
    assert on_disk - set(rendered) == {"secret.example.yaml"}
    check = render_knative("--check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_render_check_reports_a_knative_folder_out_of_step() -> None:
    done = render_knative("--check", "--", "--set", "knative.functions.queryJob.maxScale=11")
    assert done.returncode == 1
    assert '-        autoscaling.knative.dev/max-scale: "10"' in done.stdout
    assert '+        autoscaling.knative.dev/max-scale: "11"' in done.stdout


# --- lint and template ------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_helm_lint_strict(case: str) -> None:
    done = helm("lint", "--strict", str(CHART), *CASES[case])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "topology=deployment"], "global.baseUrl must be set"),
        (
            [*DEPLOYMENT, "--set", "deployment.ingress.type=traefik"],
            "deployment.ingress.type must be gafaelfawr, ingress or none",
        ),
        (["--set", "secrets.vault.enabled=true"], "global.vaultSecretsPath must be set"),
    ],
)
def test_incomplete_values_are_refused_with_the_value_named(
    values: list[str], message: str
) -> None:
    done = helm("template", "ocps-jobs", str(CHART), *values)
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_topology_renders_its_objects_only(case: str) -> None:
    docs = template(CASES[case])
    topology = "knative" if case.startswith("knative") else "deployment"
    expected = set(KINDS[topology])
    if case == "deployment-gafaelfawr" or case == "summit":
        expected.add(GAFAELFAWR_INGRESS)
    if case == "deployment-ingress":
        expected.add(INGRESS)
    if case == "deployment-bare":
        expected.discard(("networking.k8s.io/v1", "NetworkPolicy"))
    if case in ("knative-vault", "summit"):
        expected.add(VAULT_SECRET)
    assert kinds(docs) == expected
    assert not [d for d in docs if d["kind"] in ("Secret", "ClusterRole", "ClusterRoleBinding")]
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names))


def test_one_version_for_package_chart_and_images() -> None:
    assert CHART_META["appVersion"] == CHART_META["version"] == PYPROJECT_VERSION
    for case, values in CASES.items():
        docs = template(values)
        images = [
            container["image"]
            for pod in pod_templates(docs).values()
            for container in pod["spec"]["containers"]
        ]
        images += [
            container["image"]
            for doc in docs
            if doc["apiVersion"] == "serving.knative.dev/v1"
            for container in doc["spec"]["template"]["spec"]["containers"]
        ]
        assert images, case
        for image in images:
            assert image == f"ghcr.io/lsst-dm/ocps-jobs-functions:{PYPROJECT_VERSION}", case
        data = one(docs, "v1", "ConfigMap")["data"]
        assert (
            data["OCPS_SIDECAR_IMAGE"] == f"ghcr.io/lsst-dm/ocps-jobs-sidecar:{PYPROJECT_VERSION}"
        )
    # image.tag and uploader.image.tag override it, each on its own.
    docs = template(["--set", "image.tag=1.2.3-rc1", "--set", "uploader.image.tag=9.9.9"])
    for doc in docs:
        if doc["apiVersion"] == "serving.knative.dev/v1":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            assert container["image"].endswith(":1.2.3-rc1")
    assert one(docs, "v1", "ConfigMap")["data"]["OCPS_SIDECAR_IMAGE"].endswith(":9.9.9")


def checksums(docs: list[Doc]) -> dict[str, str]:
    """The checksum/config annotation of every pod template (Knative revisions included)."""
    found = {
        name: pod["metadata"]["annotations"]["checksum/config"]
        for name, pod in pod_templates(docs).items()
    }
    for doc in docs:
        if doc["apiVersion"] == "serving.knative.dev/v1":
            annotations = doc["spec"]["template"]["metadata"]["annotations"]
            found[f"ksvc/{doc['metadata']['name']}"] = annotations["checksum/config"]
    return found


@pytest.mark.parametrize("topology", ["knative", "deployment"])
def test_a_changed_configmap_changes_every_pod_templates_checksum(topology: str) -> None:
    values = [] if topology == "knative" else DEPLOYMENT
    before = checksums(template(values))
    after = checksums(template([*values, "--set", "config.job.ttlSeconds=7200"]))
    assert len(before) == (4 if topology == "knative" else 2)
    assert set(before) == set(after)
    for name in before:
        assert before[name] != after[name], name
        assert len(before[name]) == len(hashlib.sha256().hexdigest())
    assert checksums(template(values)) == before  # stable


def test_deployment_topology_objects_fit_together() -> None:
    docs = template(DEPLOYMENT)
    deployment = one(docs, "apps/v1", "Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    assert container["command"][:4] == ["ocps-jobs", "serve", "--backend", "kubernetes"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    service = one(docs, "v1", "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert ports[port["targetPort"]] == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # RBAC: the one server account has create_job's rules and query_job's pod logs (it
    # serves every route).
    account = pod["spec"]["serviceAccountName"]
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == account)
    assert role_rules(role) == {
        **EXPECTED_RULES["create_job"],
        ("", "pods/log"): EXPECTED_RULES["query_job"][("", "pods/log")],
    }
    binding = one(docs, "rbac.authorization.k8s.io/v1", "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "ocps"}]
    runner = next(d for d in docs if d["metadata"]["name"] == JOB_RUNNER)
    assert runner["automountServiceAccountToken"] is False
    sweep = one(docs, "batch/v1", "CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    assert sweep["spec"]["serviceAccountName"] == account
    # The edge: Gafaelfawr reaches the Service; the NetworkPolicy admits only its pods.
    ingress = one(docs, *GAFAELFAWR_INGRESS)
    backends = [
        path["backend"]["service"]
        for rule in ingress["template"]["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert {(b["name"], b["port"]["name"]) for b in backends} == {
        (service["metadata"]["name"], port["name"])
    }
    assert [
        p["path"] for r in ingress["template"]["spec"]["rules"] for p in r["http"]["paths"]
    ] == [
        "/api/v1",
        "/uws",
    ]
    policy = one(docs, "networking.k8s.io/v1", "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    (rule,) = policy["spec"]["ingress"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert rule["from"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"gafaelfawr.lsst.io/ingress": "true"}},
        },
        *values["networkPolicy"]["clients"],  # the CSCs' pods (tests/cluster/test_csc_workload)
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    # Behind Gafaelfawr the service trusts its user header; behind a plain Ingress it does not.
    assert one(docs, "v1", "ConfigMap")["data"]["OCPS_AUTH_HEADER"] == "X-Auth-Request-User"
    plain = template([*DEPLOYMENT, "--set", "deployment.ingress.type=ingress"])
    assert "OCPS_AUTH_HEADER" not in one(plain, "v1", "ConfigMap")["data"]


def test_knative_network_policy_selects_the_three_functions_only() -> None:
    docs = template([])
    policy = one(docs, "networking.k8s.io/v1", "NetworkPolicy")
    (expression,) = policy["spec"]["podSelector"]["matchExpressions"]
    functions = {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        for d in docs
        if d["apiVersion"] == "serving.knative.dev/v1"
    }
    assert expression["key"] == "app.kubernetes.io/name" and expression["operator"] == "In"
    assert set(expression["values"]) == functions


def test_vault_secrets_one_per_purpose() -> None:
    docs = template(CASES["knative-vault"])
    secrets = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "VaultSecret"}
    assert set(secrets) == {"ocps-jobs-s3", "ocps-jobs-tokens", "ocps-jobs-job-files"}
    assert set(secrets["ocps-jobs-s3"]["templates"]) == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    assert set(secrets["ocps-jobs-tokens"]["templates"]) == {"tokens"}
    assert all(spec["path"].startswith("secret/phalanx/t/") for spec in secrets.values())
    # Every Vault key a template reads is declared in the chart's secrets.yaml.
    declared = yaml.safe_load((CHART / "secrets.yaml").read_text())
    for spec in secrets.values():
        for text in spec.get("templates", {}).values():
            key = text.split('"')[1]
            assert key in declared, key


# --- every rendered manifest against the real schemas -----------------------------------


@pytest.fixture(scope="module")
def platform_crds(request: pytest.FixtureRequest) -> k8s.ApiClient:
    """Knative and Gateway API (``crds``), then GafaelfawrIngress and VaultSecret."""
    api: k8s.ApiClient = request.getfixturevalue("crds")
    if not PLATFORM_CRDS.is_dir():
        pytest.fail(
            f"The platform CRDs are not at {PLATFORM_CRDS}: clone next to shared/, or set "
            "OCPS_REFERENCE_DIR to the folder holding crds/.",
            pytrace=False,
        )
    extensions = k8s.ApiextensionsV1Api(api)
    names = []
    for path in sorted(PLATFORM_CRDS.glob("*.yaml")):
        for doc in load_yaml(path):
            names.append(doc["metadata"]["name"])
            try:
                create(api, doc, dry_run=False, strict=False)
            except ApiException as error:
                if error.status != 409:
                    raise
    assert len(names) == 2

    def served() -> bool:
        for name in names:
            conditions = extensions.read_custom_resource_definition(name).status.conditions
            if not any(c.type == "Established" and c.status == "True" for c in conditions or []):
                return False
        try:
            discover(api, *GAFAELFAWR_INGRESS)
            discover(api, *VAULT_SECRET)
        except (ApiException, KeyError):
            test_knative_manifests._DISCOVERY.clear()
            return False
        return True

    wait_until(served, timeout=60, interval=0.2)
    return api


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rendered_manifest_passes_a_strict_server_side_dry_run(
    platform_crds: k8s.ApiClient, namespace: str, case: str
) -> None:
    docs = template(CASES[case], namespace)
    for doc in docs:
        label = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            stored = create(platform_crds, doc, dry_run=True)
        except ApiException as error:
            pytest.fail(f"{case}: dry-run of {label} failed: {error.status} {error.body}")
        assert stored["metadata"]["namespace"] == namespace, label
        assert stored["metadata"].get("uid"), label
        for field in ("spec", "data", "rules", "roleRef", "subjects", "config", "template"):
            if field in doc:
                assert_subset(doc[field], stored[field], f"{case}: {label}.{field}")
    assert not any(exists(platform_crds, doc) for doc in docs)


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        (
            GAFAELFAWR_INGRESS,
            lambda d: d["template"]["spec"]["rules"][0]["http"]["paths"][0].update(
                pathType="Regex"
            ),
            "pathType",
        ),
        (GAFAELFAWR_INGRESS, lambda d: d["config"].update(scopes={"every": ["x"]}), "every"),
        (VAULT_SECRET, lambda d: d["spec"].pop("type"), "type"),
    ],
)
def test_the_platform_crds_reject_a_broken_copy(
    platform_crds: k8s.ApiClient, namespace: str, kind: tuple[str, str], mutate, expected: str
) -> None:
    doc = (
        one(template(CASES["summit"], namespace), *kind)
        if kind != VAULT_SECRET
        else next(d for d in template(CASES["summit"], namespace) if d["kind"] == "VaultSecret")
    )
    create(platform_crds, doc, dry_run=True)  # the original is fine...
    broken = copy.deepcopy(doc)
    mutate(broken)
    with pytest.raises(ApiException) as raised:
        create(platform_crds, broken, dry_run=True)
    assert raised.value.status in (400, 422), raised.value.body
    assert expected in json.loads(raised.value.body)["message"]


# --- the deployment topology runs a CSC-style job on the test control plane ----------------


def container_environment(
    container: Doc, config: dict[str, str], namespace: str, secrets: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The environment the kubelet gives the container: envFrom the ConfigMap, then env."""
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == "ocps-jobs-config"
    environment = dict(config)
    for entry in container["env"]:
        if "value" in entry:
            environment[entry["name"]] = entry["value"]
        elif "fieldRef" in entry["valueFrom"]:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
            environment[entry["name"]] = namespace
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            environment[entry["name"]] = secrets[ref["name"]][ref["key"]]
    return environment


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def make_service_for_uploads(make_cluster_service) -> JobService:  # type: ignore[no-untyped-def]
    """The library on the same namespace and bucket: creates the bucket, acts as the uploader."""
    service: JobService = make_cluster_service()
    return service


def test_deployment_topology_completes_a_csc_style_job(
    control_plane: ControlPlane,
    kube: k8s.ApiClient,
    namespace: str,
    s3_endpoint: str,
    bucket: str,
    make_service_for_uploads: JobService,
    tmp_path: Path,
) -> None:
    """The rendered Deployment's command line, run here against the test apiserver."""
    values = [
        "--set",
        "topology=deployment",
        "--set",
        "deployment.ingress.type=ingress",
        "--set",
        f"config.s3.endpoint={s3_endpoint}",
        "--set",
        f"config.s3.bucket={bucket}",
    ]
    docs = template(values, namespace)
    pod = one(docs, "apps/v1", "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = one(docs, "v1", "ConfigMap")["data"]
    secrets = {
        "ocps-jobs-s3": {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    }
    environment = container_environment(container, config, namespace, secrets)
    # The container's mounts, here: the tokens Secret's folder (one client: the CSC).
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "auth-tokens"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "auth-tokens"]
    assert volume["secret"]["secretName"] == "ocps-jobs-tokens"
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "tokens").write_text("csc-token ocps-csc\n")
    tokens_file = environment["OCPS_AUTH_TOKENS_FILE"]
    assert tokens_file.startswith(mount["mountPath"] + "/")
    environment["OCPS_AUTH_TOKENS_FILE"] = str(tokens / Path(tokens_file).name)
    # In place of the in-cluster configuration: the test apiserver's kubeconfig.
    environment["OCPS_KUBECONFIG"] = str(control_plane.kubeconfig)
    environment.update(PATH=os.environ["PATH"], HOME="/nonexistent", AWS_DEFAULT_REGION="us-east-1")
    command = list(container["command"])
    assert command[0] == "ocps-jobs"
    command[0] = str(Path(sys.executable).parent / "ocps-jobs")
    port = free_port()
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    probe = container["readinessProbe"]["httpGet"]["path"]
    try:

        def ready() -> bool:
            assert server.poll() is None, log.read_text()
            try:
                return requests.get(base + probe, timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, timeout=60, interval=0.2)
        # The CSC's calls (lsst/dm_OCPS): PUT {url}/job, GET {url}/job/{id}, DELETE.
        session = requests.Session()
        session.headers["Authorization"] = "Bearer csc-token"
        url = f"{base}/api/v1"
        created = session.put(
            f"{url}/job",
            json={
                "command": "echo hi > $JOB_OUTPUT_DIR/out.txt",
                "run_id": "csc-run",
                "environment": [{"name": "PIPE_ARGS", "value": "-j 4"}],
            },
            timeout=10,
        )
        assert created.status_code == 200, created.text
        job = created.json()
        job_id = job["jobId"]
        assert job["runId"] == "csc-run" and job["ownerId"] == "ocps-csc"
        # A Job in the namespace, run by the job pods' account, with the versioned uploader.
        batch = k8s.BatchV1Api(kube)
        (kube_job,) = batch.list_namespaced_job(namespace).items
        pod_spec = kube_job.spec.template.spec
        assert pod_spec.service_account_name == JOB_RUNNER
        assert pod_spec.init_containers[0].image == config["OCPS_SIDECAR_IMAGE"]
        wait_until(lambda: job_condition(kube, namespace, job_id, "Complete"), timeout=60)
        act_as_sidecar(make_service_for_uploads, job_id, tmp_path)

        def phase() -> str:
            answer = session.get(f"{url}/job/{job_id}", timeout=10)
            assert answer.status_code == 200, answer.text
            return str(answer.json()["phase"])

        wait_until(lambda: phase() == "completed", timeout=30)
        results = session.get(f"{url}/job/{job_id}/results", timeout=10).json()
        names = sorted(item["uri"].split("/out/")[1] for item in results)
        assert names == ["result.txt", "sub/table.csv"]
        first = next(item for item in results if item["uri"].endswith("result.txt"))
        download = session.get(f"{url}/job/result/{first['id']}", timeout=10)
        assert download.content == f"result of {job_id}\n".encode()
        # Without the token: refused.
        assert requests.get(f"{url}/job/{job_id}", timeout=10).status_code == 401
        deleted = session.delete(f"{url}/job/{job_id}", timeout=10)
        assert deleted.status_code == 200 and deleted.json()["status"] == "ok"
        assert session.get(f"{url}/job/{job_id}", timeout=10).status_code == 404
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_links_are_built_from_the_base_url_or_the_trusted_hosts() -> None:
    def settings(values: list[str]) -> dict[str, str]:
        return dict(one(template(values), "v1", "ConfigMap")["data"])

    # Phalanx sets global.baseUrl: UWS links name it, whatever Host a request came with.
    phalanx = settings([*DEPLOYMENT, "--set", "global.baseUrl=https://ocps.example.org"])
    assert phalanx["OCPS_PUBLIC_URL"] == "https://ocps.example.org"
    chosen = settings(
        ["--set", "global.baseUrl=https://a.example.org", "--set", "config.publicUrl=https://b.org"]
    )
    assert chosen["OCPS_PUBLIC_URL"] == "https://b.org"
    trusted = settings(["--set-json", 'config.trustedHosts=[".example.org", "ocps.lsst.org"]'])
    assert "OCPS_PUBLIC_URL" not in trusted
    assert json.loads(trusted["OCPS_TRUSTED_HOSTS"]) == [".example.org", "ocps.lsst.org"]
