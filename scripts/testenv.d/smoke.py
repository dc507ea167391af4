#!/usr/bin/env python3
"""End-to-end smoke check of the test control plane started by `scripts/testenv up`.

Usage: KUBECONFIG=... python3 scripts/testenv.d/smoke.py   (needs the `kubernetes` client)

Checks: Job pods are scheduled onto the fake KWOK node and go Pending -> Running ->
Succeeded (with a native sidecar); the ocps.test/exit-code annotation fails a Job with
that exit code; ocps.test/init-exit-code fails the init container; the TTL controller
deletes finished Jobs; deleting a Job (Background) removes its pods; the Knative Serving
and Gateway API CRDs apply and accept a server-side dry-run of a Service / HTTPRoute.
"""
import glob
import json
import os
import sys
import time
import uuid

import yaml
from kubernetes import client, config, utils
from kubernetes.client.rest import ApiException

NS = os.environ.get("OCPS_TEST_NAMESPACE", "ocps-test")
RESULTS = []


def log(msg):
    print("[%6.2fs] %s" % (time.monotonic() - T0, msg), flush=True)


def check(name, ok, detail=""):
    RESULTS.append((name, bool(ok)))
    log("%s %s%s" % ("PASS" if ok else "FAIL", name, (": " + detail) if detail else ""))
    return ok


def wait(pred, timeout, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


def make_job(name, annotations=None, ttl=5, sidecar=True, init=False):
    init_containers = []
    if init:
        init_containers.append(client.V1Container(name="git-clone", image="example.invalid/git:1", command=["true"]))
    if sidecar:
        init_containers.append(client.V1Container(
            name="uploader", image="example.invalid/uploader:1", restart_policy="Always",
            command=["sleep", "infinity"]))
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name, labels={"app.kubernetes.io/managed-by": "ocps-smoke"}),
        spec=client.V1JobSpec(
            backoff_limit=0,
            ttl_seconds_after_finished=ttl,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(annotations=annotations or {}),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    init_containers=init_containers or None,
                    containers=[client.V1Container(
                        name="main", image="example.invalid/main:1", command=["run"],
                        resources=client.V1ResourceRequirements(requests={"cpu": "1", "memory": "1Gi"}))],
                ),
            ),
        ),
    )


def job_condition(batch, name):
    try:
        j = batch.read_namespaced_job(name, NS)
    except ApiException as e:
        if e.status == 404:
            return "Deleted"
        raise
    for c in j.status.conditions or []:
        if c.type in ("Complete", "Failed") and c.status == "True":
            return c.type
    return None


def pods_of(core, job):
    return core.list_namespaced_pod(NS, label_selector="job-name=%s" % job).items


def state_str(st):
    if st is None:
        return "-"
    if st.running:
        return "running"
    if st.waiting:
        return "waiting(%s)" % st.waiting.reason
    if st.terminated:
        t = st.terminated
        return "terminated(exit=%s reason=%s msg=%r)" % (t.exit_code, t.reason, t.message)
    return "?"


def describe_pod(p):
    ics = ", ".join("%s=%s" % (s.name, state_str(s.state)) for s in (p.status.init_container_statuses or []))
    cs = ", ".join("%s=%s" % (s.name, state_str(s.state)) for s in (p.status.container_statuses or []))
    return "pod %s node=%s phase=%s init[%s] containers[%s]" % (
        p.metadata.name, p.spec.node_name, p.status.phase, ics, cs)


def crd_dirs():
    """CRD folders from testenv.json beside the kubeconfig (written by `testenv up`)."""
    kc = os.environ.get("KUBECONFIG", "")
    info = os.path.join(os.path.dirname(kc), "testenv.json")
    if kc and os.path.exists(info):
        with open(info) as f:
            c = json.load(f)["crds"]
        return c["knative"], c["gateway_api"]
    return None, None


def apply_manifest_dir(api_client, path):
    """Create every object of every YAML file in path (409 AlreadyExists is fine)."""
    created = 0
    for fn in sorted(glob.glob(os.path.join(path, "*.yaml"))):
        with open(fn) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for d in docs:
            try:
                utils.create_from_dict(api_client, d)
                created += 1
            except utils.FailToCreateError as e:
                if not all(getattr(x, "status", None) == 409 for x in e.api_exceptions):
                    raise
    return created


def wait_established(ext, names, timeout=30):
    def ok():
        for n in names:
            crd = ext.read_custom_resource_definition(n)
            if not any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                return False
        return True
    return wait(ok, timeout, step=0.2)


def crd_checks(core):
    kdir, gdir = crd_dirs()
    if not kdir:
        log("SKIP CRD checks: no testenv.json beside KUBECONFIG")
        return
    api_client = client.ApiClient()
    ext = client.ApiextensionsV1Api()
    co = client.CustomObjectsApi()
    t0 = time.monotonic()
    n = apply_manifest_dir(api_client, kdir)
    names = [c.metadata.name for c in ext.list_custom_resource_definition().items if c.spec.group.endswith("knative.dev")]
    check("Knative CRDs applied + Established", wait_established(ext, names),
          "%d objects, %d CRDs (%s) in %.2fs" % (n, len(names), ", ".join(sorted(names)), time.monotonic() - t0))
    ksvc = {
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": NS},
        "spec": {"template": {
            "metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "0"}},
            "spec": {"containerConcurrency": 10, "timeoutSeconds": 300,
                     "containers": [{"image": "example.invalid/ocps:1", "ports": [{"containerPort": 8080}],
                                     "env": [{"name": "A", "value": "b"}],
                                     "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}},
    }
    try:
        out = co.create_namespaced_custom_object("serving.knative.dev", "v1", NS, "services", ksvc,
                                                 dry_run="All", field_validation="Strict")
        check("Knative Service server-side dry-run (fieldValidation=Strict)", out["metadata"].get("uid"),
              "uid=%s" % out["metadata"].get("uid"))
    except ApiException as e:
        check("Knative Service server-side dry-run (fieldValidation=Strict)", False, "%s %s" % (e.status, e.body))
    bad = json.loads(json.dumps(ksvc))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    try:
        co.create_namespaced_custom_object("serving.knative.dev", "v1", NS, "services", bad,
                                           dry_run="All", field_validation="Strict")
        check("dry-run rejects unknown field (Strict)", False, "accepted")
    except ApiException as e:
        check("dry-run rejects unknown field (Strict)", e.status in (400, 422) and "imagePullPolcy" in e.body,
              "%s %s" % (e.status, json.loads(e.body).get("message", "")[:160]))
    listed = co.list_namespaced_custom_object("serving.knative.dev", "v1", NS, "services")["items"]
    check("dry-run persisted nothing", not listed)

    t0 = time.monotonic()
    n = apply_manifest_dir(api_client, gdir)
    names = [c.metadata.name for c in ext.list_custom_resource_definition().items
             if c.spec.group == "gateway.networking.k8s.io"]
    check("Gateway API CRDs applied + Established", wait_established(ext, names),
          "%d objects, %d CRDs in %.2fs" % (n, len(names), time.monotonic() - t0))
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "ocps", "namespace": NS},
        "spec": {"parentRefs": [{"name": "gw"}],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                            "backendRefs": [{"name": "ocps", "port": 80}]}]},
    }
    try:
        co.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", NS, "httproutes", route,
                                           dry_run="All", field_validation="Strict")
        check("HTTPRoute server-side dry-run", True)
    except ApiException as e:
        check("HTTPRoute server-side dry-run", False, "%s %s" % (e.status, e.body))


def main():
    global T0
    T0 = time.monotonic()
    config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    core, batch = client.CoreV1Api(), client.BatchV1Api()
    sfx = uuid.uuid4().hex[:6]

    nodes = core.list_node().items
    check("fake KWOK node present", any((n.metadata.annotations or {}).get("kwok.x-k8s.io/node") == "fake"
                                        for n in nodes), ", ".join(n.metadata.name for n in nodes))

    # 1. success path with native sidecar and a regular init container
    ok_name = "smoke-ok-" + sfx
    t_create = time.monotonic()
    batch.create_namespaced_job(NS, make_job(ok_name, init=True))
    log("created job %s" % ok_name)
    seen = {}

    def observe():
        for p in pods_of(core, ok_name):
            ph = p.status.phase
            if p.spec.node_name and "scheduled" not in seen:
                seen["scheduled"] = (time.monotonic() - t_create, p.spec.node_name)
            if ph not in seen:
                seen[ph] = (time.monotonic() - t_create, describe_pod(p))
        return job_condition(batch, ok_name)

    cond = wait(observe, 60, step=0.05)
    for k, v in seen.items():
        log("  observed %-9s at +%.2fs  %s" % (k, v[0], v[1]))
    check("pod scheduled to fake node", "scheduled" in seen and seen["scheduled"][1].startswith("kwok-node"))
    check("pod observed Running", "Running" in seen)
    check("running pod has sidecar running + init completed",
          "Running" in seen and "uploader=running" in seen["Running"][1]
          and "git-clone=terminated(exit=0" in seen["Running"][1])
    check("job Complete", cond == "Complete", "%s after %.2fs" % (cond, time.monotonic() - t_create))
    t_done = time.monotonic()
    pods = pods_of(core, ok_name)
    for p in pods:
        log("  final " + describe_pod(p))
    check("pod Succeeded, main exit 0, sidecar terminated",
          pods and pods[0].status.phase == "Succeeded"
          and pods[0].status.container_statuses[0].state.terminated.exit_code == 0
          and any(s.name == "uploader" and s.state.terminated for s in pods[0].status.init_container_statuses))

    # 2. failure path via ocps.test/exit-code
    fail_name = "smoke-fail-" + sfx
    t0 = time.monotonic()
    batch.create_namespaced_job(NS, make_job(fail_name, annotations={
        "ocps.test/exit-code": "3", "ocps.test/exit-message": "boom: simulated failure"}))
    cond = wait(lambda: job_condition(batch, fail_name), 60)
    j = batch.read_namespaced_job(fail_name, NS) if cond != "Deleted" else None
    reason = [c.reason for c in (j.status.conditions or []) if c.type == "Failed"] if j else []
    check("exit-code job Failed", cond == "Failed", "%s %s after %.2fs" % (cond, reason, time.monotonic() - t0))
    pods = pods_of(core, fail_name)
    for p in pods:
        log("  final " + describe_pod(p))
    main_st = pods[0].status.container_statuses[0].state.terminated if pods else None
    check("failed pod: main terminated exitCode 3 with message",
          pods and pods[0].status.phase == "Failed" and main_st and main_st.exit_code == 3
          and main_st.message == "boom: simulated failure")

    # 3. init container failure via ocps.test/init-exit-code
    init_name = "smoke-initfail-" + sfx
    t0 = time.monotonic()
    batch.create_namespaced_job(NS, make_job(init_name, init=True, annotations={
        "ocps.test/init-exit-code": "128", "ocps.test/exit-message": "fatal: repository not found"}))
    cond = wait(lambda: job_condition(batch, init_name), 60)
    check("init-exit-code job Failed", cond == "Failed", "%s after %.2fs" % (cond, time.monotonic() - t0))
    pods = pods_of(core, init_name)
    for p in pods:
        log("  final " + describe_pod(p))
    ist = [s for s in (pods[0].status.init_container_statuses or []) if s.name == "git-clone"] if pods else []
    check("init container terminated exitCode 128 with message",
          ist and ist[0].state.terminated and ist[0].state.terminated.exit_code == 128
          and ist[0].state.terminated.message == "fatal: repository not found")

    # 4. TTL controller deletes the finished job (ttlSecondsAfterFinished: 5)
    gone = wait(lambda: job_condition(batch, ok_name) == "Deleted", 60, step=0.2)
    check("TTL deleted finished job", gone, "%.2fs after completion" % (time.monotonic() - t_done))
    pods_gone = wait(lambda: not pods_of(core, ok_name), 30, step=0.2)
    check("TTL-deleted job's pods removed", pods_gone, "%.2fs after completion" % (time.monotonic() - t_done))

    # 5. deleting a running Job with propagationPolicy=Background removes its pods
    del_name = "smoke-del-" + sfx
    batch.create_namespaced_job(NS, make_job(del_name, ttl=None, annotations={"ocps.test/run-seconds": "300"}))
    running = wait(lambda: any(p.status.phase == "Running" for p in pods_of(core, del_name)), 60)
    check("long job pod Running", running)
    t0 = time.monotonic()
    batch.delete_namespaced_job(del_name, NS, propagation_policy="Background")
    job_gone = wait(lambda: job_condition(batch, del_name) == "Deleted", 30)
    pods_gone = wait(lambda: not pods_of(core, del_name), 60, step=0.2)
    check("Background delete removes job and pods", job_gone and pods_gone,
          "pods gone %.2fs after delete" % (time.monotonic() - t0))

    # 6. Knative Serving + Gateway API CRDs: apply, then server-side dry-run custom objects
    crd_checks(core)

    # cleanup (the failed jobs also have a 5 s TTL; delete explicitly anyway)
    for n in (fail_name, init_name):
        try:
            batch.delete_namespaced_job(n, NS, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise

    passed = sum(1 for _, ok in RESULTS if ok)
    failed = len(RESULTS) - passed
    print("smoke: %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
