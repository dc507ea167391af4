"""knative/ and deploy/: every manifest dry-run on the real control plane, RBAC, routing, images.

The Knative Serving and Gateway API CRDs (from the Go modules testenv built) are applied to
the test kube-apiserver, and ``knative/`` rendered the way ``kubectl apply -k`` would is
server-side dry-run object by object with strict field validation. RBAC is checked by
reading the Roles and by asking the real RBAC authorizer. The HTTPRoute is evaluated with
the Gateway API matching rules against the functions' own route tables.
"""

from __future__ import annotations

import ast
import base64
import copy
import functools
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from ocps_jobs.backends.kubernetes.spec import build_job
from ocps_jobs.config import Settings
from ocps_jobs.errors import MethodNotAllowedError, RouteNotFoundError
from ocps_jobs.http.app import FUNCTION_ROUTES
from ocps_jobs.http.routing import Router
from ocps_jobs.models import JobParameters, JobRecord
from ocps_jobs.observability.routes import LIVENESS_PATH, METRICS_PATH, READINESS_PATH
from tests.cluster.conftest import ControlPlane
from tests.conftest import REPO_ROOT
from tests.helpers import wait_until

KNATIVE = REPO_ROOT / "knative"
DEPLOY = REPO_ROOT / "deploy"
SECRET_TEMPLATE = "secret.example.yaml"
JOB_ID = "0123456789abcdef0123456789abcdef"
RESULT_ID = base64.urlsafe_b64encode(f"jobs/{JOB_ID}/out/a/b.txt".encode()).decode().rstrip("=")

Doc = dict[str, Any]

# Exactly what each function's Kubernetes calls need (ocps_jobs.backends.kubernetes).
# create_job also watches: a UWS PHASE=ABORT waits for the job's end (wait_for_change).
EXPECTED_RULES: dict[str, dict[tuple[str, str], set[str]]] = {
    "create_job": {
        ("batch", "jobs"): {"create", "delete", "get", "list", "patch", "watch"},
        ("", "pods"): {"get", "list", "watch"},
    },
    "query_job": {
        ("batch", "jobs"): {"get", "list", "watch"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},  # GET /api/v1/job/{jobId}/log
    },
    "results": {
        ("batch", "jobs"): {"get", "list", "watch"},
        ("", "pods"): {"get", "list", "watch"},
    },
}
JOB_RUNNER = "ocps-job-runner"


# --- rendering: the subset of `kustomize build` that knative/kustomization.yaml uses ------


def load_yaml(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization() -> Doc:
    return yaml.safe_load((KNATIVE / "kustomization.yaml").read_text())


def render(namespace: str | None = None) -> list[Doc]:
    """``kustomize build knative/`` (resources + namespace), optionally into another namespace.

    Like kustomize (its namespace transformer's default, ``setRoleBindingSubjects:
    defaultOnly``), the namespace is set on every object and on RoleBinding subjects that
    name a ServiceAccount of the same build in no namespace or ``default`` (the chart's
    rendering, scripts/render-knative, names ``default``).
    """
    config = kustomization()
    unsupported = set(config) - {"apiVersion", "kind", "namespace", "resources"}
    assert not unsupported, f"render() does not implement kustomize's {sorted(unsupported)}"
    target = namespace or config["namespace"]
    docs = [doc for name in config["resources"] for doc in load_yaml(KNATIVE / name)]
    accounts = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "ServiceAccount"}
    for doc in docs:
        doc["metadata"]["namespace"] = target
        if doc["kind"] == "RoleBinding":
            for subject in doc.get("subjects", []):
                if (
                    subject["kind"] == "ServiceAccount"
                    and subject["name"] in accounts
                    and subject.get("namespace") in (None, "default")
                ):
                    subject["namespace"] = target
    return docs


def of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def knative_services(docs: list[Doc]) -> dict[str, Doc]:
    """The Knative Services by the functions-framework target they run."""
    services = {}
    for doc in docs:
        if doc["apiVersion"] == "serving.knative.dev/v1" and doc["kind"] == "Service":
            args = container(doc)["args"]
            services[args[args.index("--target") + 1]] = doc
    return services


def container(ksvc: Doc) -> Doc:
    (only,) = ksvc["spec"]["template"]["spec"]["containers"]
    return only


def config_map(docs: list[Doc]) -> dict[str, str]:
    return of_kind(docs, "ConfigMap")["ocps-jobs-config"]["data"]


def seconds(duration: str) -> float:
    """A Gateway API duration such as ``1m30s``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+)(ms|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


# --- the real apiserver: discovery, create / dry-run ----------------------------------------

_DISCOVERY: dict[tuple[str, str], tuple[str, str, bool]] = {}


def request(
    api: k8s.ApiClient,
    method: str,
    path: str,
    query: list[tuple[str, str]] | None = None,
    body: Doc | None = None,
) -> Any:
    """One raw API request; the JSON answer, or ApiException."""
    _, url, headers, payload, _ = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=query or [],
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, body=payload)
    response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(
            http_resp=response, body=response.data.decode(errors="replace"), data=None
        )
    return json.loads(response.data)


def discover(api: k8s.ApiClient, api_version: str, kind: str) -> tuple[str, str, bool]:
    """(group-version path, plural, namespaced) of a kind, from the apiserver's discovery."""
    key = (api_version, kind)
    if key not in _DISCOVERY:
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        for resource in request(api, "GET", base)["resources"]:
            if "/" not in resource["name"]:
                _DISCOVERY[(api_version, resource["kind"])] = (
                    base,
                    resource["name"],
                    resource["namespaced"],
                )
    return _DISCOVERY[key]


def create(api: k8s.ApiClient, doc: Doc, *, dry_run: bool, strict: bool = True) -> Doc:
    """POST one object; ``dryRun=All`` runs admission and validation but stores nothing."""
    base, plural, namespaced = discover(api, doc["apiVersion"], doc["kind"])
    if namespaced:
        path = f"{base}/namespaces/{doc['metadata']['namespace']}/{plural}"
    else:
        path = f"{base}/{plural}"
    query = [("fieldValidation", "Strict")] if strict else []
    if dry_run:
        query.append(("dryRun", "All"))
    return request(api, "POST", path, query, doc)


def exists(api: k8s.ApiClient, doc: Doc) -> bool:
    base, plural, _ = discover(api, doc["apiVersion"], doc["kind"])
    meta = doc["metadata"]
    try:
        request(api, "GET", f"{base}/namespaces/{meta['namespace']}/{plural}/{meta['name']}")
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def assert_subset(sent: Any, stored: Any, where: str = "") -> None:
    """Everything sent came back (the server may add defaults, never drop or change)."""
    if isinstance(sent, dict):
        assert isinstance(stored, dict), where
        for key, value in sent.items():
            assert key in stored, f"{where}.{key} was dropped"
            assert_subset(value, stored[key], f"{where}.{key}")
    elif isinstance(sent, list):
        assert isinstance(stored, list) and len(stored) == len(sent), where
        for index, (a, b) in enumerate(zip(sent, stored, strict=True)):
            assert_subset(a, b, f"{where}[{index}]")
    else:
        assert sent == stored, f"{where}: sent {sent!r}, stored {stored!r}"


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> Iterator[k8s.ApiClient]:
    """The Knative Serving and Gateway API CRDs, applied if absent and Established."""
    with control_plane.api() as api:
        names = []
        for folder in (control_plane.crds("knative"), control_plane.crds("gateway_api")):
            for path in sorted(folder.glob("*.yaml")):
                for doc in load_yaml(path):
                    if doc["kind"] == "CustomResourceDefinition":
                        names.append(doc["metadata"]["name"])
                    try:
                        create(api, doc, dry_run=False, strict=False)
                    except ApiException as error:
                        if error.status != 409:  # another test of the session applied it
                            raise
        extensions = k8s.ApiextensionsV1Api(api)

        def established() -> bool:
            for name in names:
                conditions = extensions.read_custom_resource_definition(name).status.conditions
                if not any(
                    c.type == "Established" and c.status == "True" for c in conditions or []
                ):
                    return False
            return True

        wait_until(established, timeout=60, interval=0.2)

        def served() -> bool:
            try:
                discover(api, "serving.knative.dev/v1", "Service")
                discover(api, "gateway.networking.k8s.io/v1", "HTTPRoute")
            except (ApiException, KeyError):
                _DISCOVERY.clear()
                return False
            return True

        wait_until(served, timeout=30, interval=0.2)
        yield api


# --- the manifests against the real apiserver ----------------------------------------------


def test_every_manifest_passes_a_strict_server_side_dry_run(
    crds: k8s.ApiClient, namespace: str
) -> None:
    docs = render(namespace)
    secret = load_yaml(KNATIVE / SECRET_TEMPLATE)
    for doc in secret:
        doc["metadata"]["namespace"] = namespace
    for doc in docs + secret:
        label = f"{doc['kind']}/{doc['metadata']['name']}"
        _, _, namespaced = discover(crds, doc["apiVersion"], doc["kind"])
        assert namespaced, f"{label} is cluster-scoped; knative/ must stay in its namespace"
        try:
            stored = create(crds, doc, dry_run=True)
        except ApiException as error:
            pytest.fail(f"dry-run of {label} failed: {error.status} {error.body}")
        assert stored["kind"] == doc["kind"]
        assert stored["metadata"]["name"] == doc["metadata"]["name"]
        assert stored["metadata"]["namespace"] == namespace
        assert stored["metadata"].get("uid"), label
        for field in ("spec", "data", "rules", "roleRef", "subjects"):
            if field in doc and doc["kind"] != "Secret":
                assert_subset(doc[field], stored[field], f"{label}.{field}")
    # A dry run stores nothing.
    assert not any(exists(crds, doc) for doc in docs + secret)


def test_the_job_built_from_the_configmap_settings_passes_a_dry_run(
    crds: k8s.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_of_deployment(monkeypatch, namespace)
    record = JobRecord(
        job_id=JOB_ID,
        run_id="run-1",
        owner="ocps",
        creation_time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        parameters=JobParameters(command="echo hi", url="https://example.invalid/repo.git"),
    )
    job = crds.sanitize_for_serialization(build_job(record, settings, suspend=True))
    stored = create(crds, job, dry_run=True)
    pod = stored["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == JOB_RUNNER
    assert pod["initContainers"][0]["image"] == settings.sidecar_image
    assert pod["containers"][0]["image"] == f"{settings.job_image}:{settings.job_image_tag}"


BREAKAGES: dict[str, tuple[str, str, Callable[[Doc], None], str]] = {
    "knative service field typo": (
        "service-query-job.yaml",
        "Service",
        lambda d: d["spec"]["template"]["spec"].update(containerConcurency=100),
        "containerConcurency",
    ),
    "container field typo": (
        "service-results.yaml",
        "Service",
        lambda d: container(d).update(imagePullPolcy="Always"),
        "imagePullPolcy",
    ),
    "httproute unknown method": (
        "httproute.yaml",
        "HTTPRoute",
        lambda d: d["spec"]["rules"][0]["matches"][0].update(method="FETCH"),
        "FETCH",
    ),
    "httproute relative path prefix": (
        "httproute.yaml",
        "HTTPRoute",
        lambda d: d["spec"]["rules"][0]["matches"][0]["path"].update(value="api/v1/job"),
        "absolute path",
    ),
    "role field typo": (
        "rbac.yaml",
        "Role",
        lambda d: d["rules"][0].update(verb=["get"]),
        "verb",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_copy_of_a_manifest_is_rejected(
    crds: k8s.ApiClient, namespace: str, breakage: str
) -> None:
    filename, kind, mutate, expected = BREAKAGES[breakage]
    doc = next(d for d in load_yaml_in(filename, namespace) if d["kind"] == kind)
    create(crds, doc, dry_run=True)  # the original is fine...
    broken = copy.deepcopy(doc)
    mutate(broken)
    with pytest.raises(ApiException) as raised:
        create(crds, broken, dry_run=True)
    assert raised.value.status in (400, 422), raised.value.body
    assert expected in json.loads(raised.value.body)["message"]


def load_yaml_in(filename: str, namespace: str) -> list[Doc]:
    """The rendered objects that come from one file of knative/."""
    names = {(d["kind"], d["metadata"]["name"]) for d in load_yaml(KNATIVE / filename)}
    return [d for d in render(namespace) if (d["kind"], d["metadata"]["name"]) in names]


# --- RBAC --------------------------------------------------------------------------------


def role_rules(role: Doc) -> dict[tuple[str, str], set[str]]:
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no nonResourceURLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def test_rbac_is_least_privilege_and_namespaced() -> None:
    docs = render()
    kinds = {doc["kind"] for doc in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Namespace"}
    assert "*" not in json.dumps([d for d in docs if d["kind"] in ("Role", "RoleBinding")])
    roles, bindings = of_kind(docs, "Role"), of_kind(docs, "RoleBinding")
    accounts = of_kind(docs, "ServiceAccount")
    services = knative_services(docs)
    assert set(services) == set(FUNCTION_ROUTES) == set(EXPECTED_RULES)
    bound: dict[str, str] = {}  # service account -> role
    for binding in bindings.values():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": binding["roleRef"]["name"],
        }
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["name"] in accounts
            assert subject["namespace"] == kustomization()["namespace"]
            assert subject["name"] not in bound, f"{subject['name']} has two bindings"
            bound[subject["name"]] = binding["roleRef"]["name"]
    used = []
    for function, ksvc in services.items():
        account = ksvc["spec"]["template"]["spec"]["serviceAccountName"]
        assert account in accounts
        assert role_rules(roles[bound[account]]) == EXPECTED_RULES[function], function
        used.append(account)
    assert len(set(used)) == len(roles) == len(bindings) == 3, "one account and Role each"
    # The job pods' account: no Role, no token; the functions hand it to every Job.
    assert accounts[JOB_RUNNER]["automountServiceAccountToken"] is False
    assert JOB_RUNNER not in bound
    assert config_map(docs)["OCPS_JOB_SERVICE_ACCOUNT"] == JOB_RUNNER


def test_the_real_authorizer_grants_each_function_exactly_its_rules(
    kube: k8s.ApiClient, namespace: str
) -> None:
    docs = render(namespace)
    for doc in docs:
        if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            create(kube, doc, dry_run=False)
    authz = k8s.AuthorizationV1Api(kube)

    def allowed(account: str, verb: str, group: str, resource: str, ns: str = namespace) -> bool:
        review = k8s.V1SubjectAccessReview(
            spec=k8s.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{namespace}:{account}",
                groups=[
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{namespace}",
                    "system:authenticated",
                ],
                resource_attributes=k8s.V1ResourceAttributes(
                    namespace=ns, verb=verb, group=group, resource=resource
                ),
            )
        )
        return bool(authz.create_subject_access_review(review).status.allowed)

    services = knative_services(docs)
    first = services["query_job"]["spec"]["template"]["spec"]["serviceAccountName"]
    wait_until(lambda: allowed(first, "get", "batch", "jobs"), timeout=15, interval=0.1)

    verbs = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
    resources = [
        ("batch", "jobs"),
        ("", "pods"),
        ("", "pods/log"),
        ("", "pods/exec"),
        ("", "secrets"),
        ("", "configmaps"),
        ("batch", "cronjobs"),
        ("rbac.authorization.k8s.io", "roles"),
    ]
    accounts = {f: s["spec"]["template"]["spec"]["serviceAccountName"] for f, s in services.items()}
    for function, account in [*accounts.items(), ("job runner", JOB_RUNNER)]:
        expected = EXPECTED_RULES.get(function, {})
        granted = {
            (group, resource, verb)
            for group, resource in resources
            for verb in verbs
            if allowed(account, verb, group, resource)
        }
        assert granted == {(g, r, v) for (g, r), vs in expected.items() for v in vs}, function
        # Nothing outside the namespace.
        assert not allowed(account, "list", "batch", "jobs", ns="default")
        assert not allowed(account, "list", "batch", "jobs", ns="")


def test_each_function_runs_its_backend_as_its_own_service_account(
    kube: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """The backend's own calls, watches included, under each function's Role: no 403."""
    from ocps_jobs.backends.kubernetes import KubernetesBackend
    from ocps_jobs.objectstore.filesystem import FilesystemStore

    docs = render(namespace)
    for doc in docs:
        if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            create(kube, doc, dry_run=False)
    accounts = {
        function: ksvc["spec"]["template"]["spec"]["serviceAccountName"]
        for function, ksvc in knative_services(docs).items()
    }
    settings = Settings(backend="kubernetes", namespace=namespace)
    store = FilesystemStore(tmp_path / "store")

    def backend_of(function: str) -> KubernetesBackend:
        impersonating = k8s.ApiClient(copy.deepcopy(kube.configuration))
        user = f"system:serviceaccount:{namespace}:{accounts[function]}"
        impersonating.set_default_header("Impersonate-User", user)
        return KubernetesBackend(settings, store, api_client=impersonating)

    creator = backend_of("create_job")
    record = JobRecord(
        job_id="0123456789abcdef0123456789abcdef",
        run_id="rbac",
        creation_time=datetime.now(UTC),
        parameters=JobParameters(command="true"),
    )
    creator.create(record, start=False)
    try:
        for function in ("create_job", "query_job", "results"):
            backend = creator if function == "create_job" else backend_of(function)
            try:
                found = backend.get(record.job_id)
                assert found is not None and found.run_id == "rbac", function
                assert [r.job_id for r in backend.list_records()] == [record.job_id], function
                # The watched copy of Jobs and Pods, which reads and WAITs answer from.
                wait_until(lambda b=backend: b._informed().synced, timeout=15)
            finally:
                if backend is not creator:
                    backend.close()
        creator.delete(record.job_id)
        assert creator.get(record.job_id) is None
    finally:
        creator.close()


# --- settings and Services ---------------------------------------------------------------


def literal_env(ksvc: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(ksvc).get("env", []) if "value" in e}


def settings_of_deployment(monkeypatch: pytest.MonkeyPatch, namespace: str) -> Settings:
    """The Settings a deployed function reads: ConfigMap, then its own env, in-cluster."""
    docs = render(namespace)
    environment = dict(config_map(docs))
    environment.update(literal_env(knative_services(docs)["create_job"]))
    environment["OCPS_NAMESPACE"] = namespace  # the downward API's metadata.namespace
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


def test_configmap_keys_are_settings_and_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    data = config_map(render())
    for key, value in data.items():
        assert isinstance(value, str), key
        assert key.startswith("OCPS_") and key[5:].lower() in Settings.model_fields, key
    settings = settings_of_deployment(monkeypatch, "ocps-test")
    assert settings.backend == "kubernetes"
    assert settings.namespace == "ocps-test"
    assert settings.kubeconfig is None  # in-cluster configuration
    for key, value in data.items():
        parsed = getattr(settings, key[5:].lower())
        if isinstance(parsed, dict):
            assert parsed == json.loads(value), key
        else:
            assert str(parsed) == value, key
    secret = load_yaml(KNATIVE / SECRET_TEMPLATE)[0]
    assert settings.s3_credentials_secret == secret["metadata"]["name"]
    assert settings.s3_endpoint and settings.bucket


def test_knative_services_run_each_function_from_one_image() -> None:
    docs = render()
    services = knative_services(docs)
    data = config_map(docs)
    secret = load_yaml(KNATIVE / SECRET_TEMPLATE)[0]
    route_timeouts = {
        rule["backendRefs"][0]["name"]: seconds(rule["timeouts"]["request"])
        for rule in of_kind(docs, "HTTPRoute")["ocps-jobs"]["spec"]["rules"]
    }
    assert len({container(s)["image"] for s in services.values()}) == 1
    for function, ksvc in services.items():
        spec, main = ksvc["spec"]["template"]["spec"], container(ksvc)
        args = main["args"]
        assert args == ["--source", f"/app/functions/{function}/main.py", "--target", function]
        assert defines_function(REPO_ROOT / "functions" / function / "main.py", function)
        assert main["ports"] == [{"name": "http1", "containerPort": 8080}]
        env = {e["name"]: e for e in main["env"]}
        assert env["OCPS_BACKEND"]["value"] == "kubernetes"
        assert env["OCPS_NAMESPACE"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.namespace"}
        }
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key]["valueFrom"]["secretKeyRef"] == {
                "name": data["OCPS_S3_CREDENTIALS_SECRET"],
                "key": key,
            }
            assert key in secret["stringData"]
        assert main["envFrom"] == [{"configMapRef": {"name": "ocps-jobs-config"}}]
        assert not set(env) & set(data), "env would shadow the ConfigMap"
        # Concurrency: enough gunicorn threads; query_job holds many blocking WAITs.
        concurrency = spec["containerConcurrency"]
        assert 0 < concurrency <= int(env["THREADS"]["value"])
        assert spec["timeoutSeconds"] >= 60
        if function == "query_job":
            assert concurrency >= 100
            assert spec["timeoutSeconds"] > int(data["OCPS_WAIT_MAX_SECONDS"]) + 5
        assert route_timeouts[ksvc["metadata"]["name"]] >= spec["timeoutSeconds"]
        annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
        low = int(annotations["autoscaling.knative.dev/min-scale"])
        assert 0 <= low <= int(annotations["autoscaling.knative.dev/max-scale"])
        assert {"cpu", "memory"} <= set(main["resources"]["requests"])
        assert "memory" in main["resources"]["limits"]
        # Probes: HTTP only on a path the function itself answers, else TCP on the port.
        for probe in (main.get("readinessProbe"), main.get("livenessProbe")):
            if probe is None:
                continue
            if "httpGet" in probe:
                Router(FUNCTION_ROUTES[function]).match("GET", probe["httpGet"]["path"])
            else:
                assert probe["tcpSocket"]["port"] == 8080
        assert main["securityContext"]["runAsNonRoot"] is True
        assert main["securityContext"]["allowPrivilegeEscalation"] is False


def defines_function(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {p.name for p in KNATIVE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk - {SECRET_TEMPLATE}
    assert not of_kind(render(), "Secret"), "credentials are never committed"
    (secret,) = load_yaml(KNATIVE / SECRET_TEMPLATE)
    assert set(secret["stringData"].values()) == {"replace-me"}


# --- routing: the HTTPRoute against the functions' route tables --------------------------


def owners(method: str, path: str) -> set[str]:
    """The functions whose own router answers this request (not 404/405)."""
    found = set()
    for function, routes in FUNCTION_ROUTES.items():
        try:
            Router(routes).match(method, path)
        except (RouteNotFoundError, MethodNotAllowedError):
            continue
        found.add(function)
    return found


def path_matches(match: Doc, path: str) -> bool:
    spec = match.get("path", {"type": "PathPrefix", "value": "/"})
    kind, value = spec.get("type", "PathPrefix"), spec["value"]
    if kind == "Exact":
        return path == value
    if kind == "PathPrefix":  # element-wise: /abc matches /abc and /abc/d, not /abcd
        prefix = value.rstrip("/")
        return prefix == "" or path == prefix or path.startswith(prefix + "/")
    assert kind == "RegularExpression", kind
    return re.fullmatch(value, path) is not None


def precedence(match: Doc, regex_first: bool) -> tuple[int, int, bool, int, int]:
    """Gateway API: Exact, then the longest PathPrefix, then a method match, headers, query.

    Where RegularExpression matches rank is implementation-specific: above every prefix
    (Envoy Gateway, Contour, NGINX) or below (Istio).
    """
    spec = match.get("path", {"type": "PathPrefix", "value": "/"})
    kind, value = spec.get("type", "PathPrefix"), spec["value"]
    if kind == "Exact":
        rank = (3, len(value))
    elif kind == "PathPrefix":
        rank = (1, len(value.rstrip("/")))
    else:
        rank = (2, 0) if regex_first else (0, 0)
    return (
        *rank,
        "method" in match,
        len(match.get("headers", [])),
        len(match.get("queryParams", [])),
    )


def gateway_backend(route: Doc, method: str, path: str, *, regex_first: bool) -> str | None:
    """The backend the HTTPRoute sends a request to; ties go to the first rule in order."""
    candidates = []
    for rule_index, rule in enumerate(route["spec"]["rules"]):
        for match in rule.get("matches") or [{}]:
            assert not match.get("headers") and not match.get("queryParams")
            if match.get("method", method) == method and path_matches(match, path):
                candidates.append(
                    (precedence(match, regex_first), -rule_index, rule["backendRefs"][0]["name"])
                )
    return max(candidates)[2] if candidates else None


@functools.cache
def route_table() -> tuple[Doc, dict[str, str]]:
    """The rendered HTTPRoute and the function behind each Knative Service name."""
    docs = render()
    by_name = {ksvc["metadata"]["name"]: f for f, ksvc in knative_services(docs).items()}
    return of_kind(docs, "HTTPRoute")["ocps-jobs"], by_name


def routed_function(method: str, path: str) -> dict[bool, str | None]:
    """The function the HTTPRoute picks, under both RegularExpression precedences."""
    route, by_name = route_table()
    result = {}
    for regex_first in (True, False):
        backend = gateway_backend(route, method, path, regex_first=regex_first)
        result[regex_first] = by_name[backend] if backend else None
    return result


def test_httproute_backends_and_parent() -> None:
    docs = render()
    route = of_kind(docs, "HTTPRoute")["ocps-jobs"]
    assert route["spec"]["parentRefs"] == [{"name": "ocps-gateway"}]
    names = {ksvc["metadata"]["name"] for ksvc in knative_services(docs).values()}
    used = set()
    for rule in route["spec"]["rules"]:
        (backend,) = rule["backendRefs"]
        assert set(backend) == {"name", "port"} and backend["port"] == 80
        used.add(backend["name"])
        for match in rule["matches"]:
            if match["path"]["type"] == "RegularExpression":
                pattern = match["path"]["value"]  # anchored: full-match and search agree
                re.compile(pattern)
                assert pattern.startswith("^") and pattern.endswith("$"), pattern
    assert used == names


SAMPLES = [
    # The OCPS JSON interface (DESIGN §3), as the CSC sends it.
    ("PUT", "/api/v1/job"),
    ("GET", "/api/v1/job"),
    ("GET", f"/api/v1/job/{JOB_ID}"),
    ("GET", f"/api/v1/job/{JOB_ID}/phase"),
    ("GET", f"/api/v1/job/{JOB_ID}/parameters"),
    ("GET", f"/api/v1/job/{JOB_ID}/results"),
    ("HEAD", f"/api/v1/job/{JOB_ID}"),
    ("DELETE", f"/api/v1/job/{JOB_ID}"),
    ("GET", f"/api/v1/job/result/{RESULT_ID}"),
    ("HEAD", f"/api/v1/job/result/{RESULT_ID}"),
    ("GET", f"/api/v1/job/result/{JOB_ID}/0"),
    ("GET", "/api/v1/openapi.json"),
    # The UWS 1.1 interface (DESIGN §4), as pyvo sends it.
    ("POST", "/uws/async"),
    ("GET", "/uws/async"),
    ("GET", f"/uws/async/{JOB_ID}"),
    ("POST", f"/uws/async/{JOB_ID}"),
    ("DELETE", f"/uws/async/{JOB_ID}"),
    ("GET", f"/uws/async/{JOB_ID}/phase"),
    ("POST", f"/uws/async/{JOB_ID}/phase"),
    ("GET", f"/uws/async/{JOB_ID}/executionduration"),
    ("POST", f"/uws/async/{JOB_ID}/executionduration"),
    ("GET", f"/uws/async/{JOB_ID}/destruction"),
    ("POST", f"/uws/async/{JOB_ID}/destruction"),
    ("GET", f"/uws/async/{JOB_ID}/error"),
    ("GET", f"/uws/async/{JOB_ID}/quote"),
    ("GET", f"/uws/async/{JOB_ID}/owner"),
    ("GET", f"/uws/async/{JOB_ID}/parameters"),
    ("GET", f"/uws/async/{JOB_ID}/results"),
]


@pytest.mark.parametrize(("method", "path"), SAMPLES)
def test_httproute_sends_each_request_to_the_function_that_serves_it(
    method: str, path: str
) -> None:
    owner = owners(method, path)
    if not owner and path.startswith("/uws"):
        pytest.skip("the functions do not serve this UWS route (yet)")
    assert len(owner) == 1, f"{method} {path} is served by {owner or 'no function'}"
    routed = routed_function(method, path)
    assert routed == {True: owner.pop(), False: routed[True]}, f"{method} {path}: {routed}"


POD_ONLY_PATHS = {LIVENESS_PATH, READINESS_PATH, METRICS_PATH}


def test_httproute_reaches_every_route_of_every_function() -> None:
    """Every route in the functions' tables, with HEAD beside GET, reaches its function."""
    for function, routes in FUNCTION_ROUTES.items():
        for route in routes:
            if route.template in POD_ONLY_PATHS:
                continue  # every function's own probes and scrapes, on its pods
            path = route.template.replace("{reference:path}", RESULT_ID)
            path = re.sub(r"\{\w+\}", JOB_ID, path)
            for method in [route.method] + (["HEAD"] if route.method == "GET" else []):
                assert owners(method, path) == {function}, (method, path)
                assert routed_function(method, path) == {True: function, False: function}, (
                    method,
                    path,
                )


# --- deploy/: the Dockerfiles, parsed ----------------------------------------------------


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in (DEPLOY / name).read_text().splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        lines.append(current)
        current = ""
    assert not current, "dangling continuation"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in lines]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def image_files(name: str) -> dict[PurePosixPath, Path]:
    """Image path -> repository path for every COPY from the build context (repo root)."""
    copied: dict[PurePosixPath, Path] = {}
    workdir = PurePosixPath("/")
    for instruction, arguments in dockerfile(name):
        if instruction == "WORKDIR":
            workdir = workdir / arguments
        elif instruction in ("COPY", "ADD"):
            assert instruction == "COPY", "use COPY"
            parts = exec_form(arguments) if arguments.startswith("[") else shlex.split(arguments)
            assert not any(p.startswith("--from") for p in parts), "single-stage build"
            parts = [p for p in parts if not p.startswith("--")]
            *sources, destination = parts
            for source in sources:
                assert not source.startswith("/") and ".." not in source, source
                assert (REPO_ROOT / source).exists(), f"{name}: COPY {source}: not in the repo"
                target = workdir / destination
                if destination.endswith("/") and (REPO_ROOT / source).is_file():
                    target = target / PurePosixPath(source).name
                copied[target] = REPO_ROOT / source
    return copied


def in_image(copied: dict[PurePosixPath, Path], path: str) -> Path | None:
    """The repository file that ends up at ``path`` in the image, if one does."""
    wanted = PurePosixPath(path)
    for target, source in copied.items():
        if wanted == target and source.is_file():
            return source
        if source.is_dir() and wanted.is_relative_to(target):
            candidate = source / wanted.relative_to(target)
            if candidate.is_file():
                return candidate
    return None


def common_dockerfile_checks(name: str) -> list[tuple[str, str]]:
    instructions = dockerfile(name)
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert [i for i, _ in instructions].count("FROM") == 1
    users = [index for index, (i, _) in enumerate(instructions) if i == "USER"]
    assert users, f"{name} runs as root"
    user = instructions[users[-1]][1]
    assert user.isdigit() and int(user) != 0, "a numeric non-root USER (runAsNonRoot)"
    last_start = max(i for i, (inst, _) in enumerate(instructions) if inst in ("CMD", "ENTRYPOINT"))
    assert users[-1] < last_start
    image_files(name)  # every COPY source exists
    return instructions


def test_functions_dockerfile() -> None:
    instructions = common_dockerfile_checks("Dockerfile.functions")
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert "pip install /tmp/src" in runs
    copied = image_files("Dockerfile.functions")
    assert in_image(copied, "/tmp/src/pyproject.toml") == REPO_ROOT / "pyproject.toml"
    assert in_image(copied, "/tmp/src/shared/ocps_jobs/__init__.py")
    (entrypoint,) = [exec_form(a) for i, a in instructions if i == "ENTRYPOINT"]
    assert entrypoint == ["functions-framework"]
    assert (Path(sys.executable).parent / "functions-framework").exists()
    (default,) = [exec_form(a) for i, a in instructions if i == "CMD"]
    # The default and every Knative Service's args name a main.py the image holds.
    for args in [default] + [container(k)["args"] for k in knative_services(render()).values()]:
        source = in_image(copied, args[args.index("--source") + 1])
        assert source is not None, args
        assert defines_function(source, args[args.index("--target") + 1]), args


def test_sidecar_dockerfile_installs_only_boto3_the_log_formatter_and_the_package() -> None:
    instructions = common_dockerfile_checks("Dockerfile.sidecar")
    commands = [
        shlex.split(command)
        for i, arguments in instructions
        if i == "RUN"
        for command in arguments.split("&&")
    ]
    installs = [command[2:] for command in commands if command[:2] == ["pip", "install"]]
    assert installs == [["boto3>=1.34,<2", "python-json-logger>=3.2,<5"], ["--no-deps", "/tmp/src"]]
    (command,) = [exec_form(a) for i, a in instructions if i == "CMD"]
    assert command == ["python", "-m", "ocps_jobs.uploader"]
    # The command the Job spec gives the uploader is the image's own.
    settings = Settings(backend="kubernetes")
    record = JobRecord(
        job_id=JOB_ID,
        run_id=JOB_ID,
        creation_time=datetime(2024, 1, 1, tzinfo=UTC),
        parameters=JobParameters(command="true"),
    )
    pod = build_job(record, settings, suspend=True).spec.template.spec
    assert pod.init_containers[0].command == command
    # Without the package's dependencies the sidecar still imports (and runs its S3 store).
    blocked = sorted(
        {"flask", "werkzeug", "kubernetes", "pydantic", "pydantic_settings", "functions_framework"}
        | {"httpx", "rich", "waitress", "yaml", "click", "gunicorn"}
    )
    script = (
        "import sys\n"
        f"BLOCKED = {blocked!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError('not in the sidecar image: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import ocps_jobs.uploader.main, ocps_jobs.objectstore.s3\n"
        "import ocps_jobs.objectstore.filesystem\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
