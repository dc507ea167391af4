"""The views of a Job and a Pod: the watch cache's trim keeps every field they read."""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import pytest

from ocps_jobs.backends.kubernetes import record_from_job
from ocps_jobs.backends.kubernetes.spec import build_job, job_json
from ocps_jobs.backends.kubernetes.views import (
    JobView,
    PodView,
    View,
    job_id_of,
    newer,
    pack_job,
    pack_pod,
    trim_job,
    trim_pod,
    unpack,
)
from ocps_jobs.config import Settings
from ocps_jobs.conventions import ANNOTATIONS
from ocps_jobs.models import EnvironmentVariable, JobParameters, JobRecord

JOB_ID = "0123456789abcdef0123456789abcdef"


def api_job(replicas: int) -> dict[str, Any]:
    """A Job from the spec builder as the API returns it, with status and server fields."""
    record = JobRecord(
        job_id=JOB_ID,
        run_id="run-1",
        owner="ocps-csc",
        creation_time=datetime(2026, 11, 28, tzinfo=UTC),
        execution_duration=600,
        parameters=JobParameters(
            command="run-part $JOB_REPLICA_INDEX",
            replicas=replicas,
            environment=[EnvironmentVariable(name="COST", value="$5")],
            url="https://example.org/repo.git",
        ),
    )
    job: dict[str, Any] = json.loads(
        job_json(build_job(record, Settings(backend="kubernetes"), suspend=False))
    )
    job["metadata"].update(
        resourceVersion="812",
        creationTimestamp="2026-11-28T10:00:00Z",
        uid="5c1f",
        managedFields=[{"manager": "kube-controller-manager", "fieldsV1": {"f:status": {}}}],
    )
    job["metadata"]["annotations"][ANNOTATIONS.ABORT_REQUESTED] = "2026-11-28T10:00:09+00:00"
    job["status"] = {
        "startTime": "2026-11-28T10:00:01Z",
        "completionTime": "2026-11-28T10:00:08Z",
        "active": replicas - 1,
        "terminating": 1,
        "ready": 0,
        "succeeded": 1,
        "uncountedTerminatedPods": {},
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline",
                "lastTransitionTime": "2026-11-28T10:00:08Z",
                "lastProbeTime": "2026-11-28T10:00:08Z",
            },
            {"type": "Suspended", "status": "False", "lastTransitionTime": "2026-11-28T10:00:02Z"},
        ],
    }
    return job


def api_pod(index: int, exit_code: int | None) -> dict[str, Any]:
    """A pod as the kubelet reports it: the job container ended or running, the sidecar on."""
    state: dict[str, Any] = (
        {"running": {"startedAt": "2026-11-28T10:00:01Z"}, "terminated": None}
        if exit_code is None
        else {"terminated": {"exitCode": exit_code, "reason": "Error", "message": "boom\n"}}
    )
    return {
        "metadata": {
            "name": f"ocps-job-{index}",
            "resourceVersion": str(900 + index),
            "labels": {"ocps.lsst.io/job-id": JOB_ID, "batch.kubernetes.io/job-name": "x"},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
            "ownerReferences": [{"kind": "Job", "name": "x"}],
        },
        "spec": {"containers": [{"name": "job", "image": "centos"}]},
        "status": {
            "phase": "Running" if exit_code is None else "Failed",
            "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "job", "image": "centos", "state": state}],
            "initContainerStatuses": [
                {"name": "uploader", "state": {"terminated": {"exitCode": 2}}},
                {"name": "git-clone", "state": {"terminated": {"exitCode": 0}}},
            ],
        },
    }


def read_all(view: View) -> dict[str, Any]:
    """What every declared accessor of ``view`` answers (the smaller views' too)."""
    answers: dict[str, Any] = {}
    for name in view.accessors():
        value = getattr(view, name)
        if isinstance(value, list) and value and isinstance(value[0], View):
            value = [read_all(item) for item in value]
        answers[name] = value
    return answers


@pytest.mark.parametrize("replicas", [1, 3])
def test_every_accessor_answers_the_same_on_the_trimmed_copy(replicas: int) -> None:
    job = api_job(replicas)
    pods = [api_pod(0, 3), *[api_pod(index, None) for index in range(1, replicas)]]
    trimmed_job, trimmed_pods = trim_job(job), [trim_pod(pod) for pod in pods]

    assert read_all(JobView(trimmed_job)) == read_all(JobView(job))
    for trimmed, whole in zip(trimmed_pods, pods, strict=True):
        assert read_all(PodView(trimmed)) == read_all(PodView(whole))
    assert JobView(trimmed_job).completions == replicas
    assert record_from_job(trimmed_job, trimmed_pods, None) == record_from_job(job, pods, None)
    # What no view reads is left out: the cache keeps a fraction of each object.
    assert "managedFields" not in trimmed_job["metadata"]
    assert "initContainers" not in trimmed_job["spec"]["template"]["spec"]
    assert "podIP" not in trimmed_pods[0]["status"]
    assert len(json.dumps(trimmed_job)) < len(json.dumps(job)) / 2


def test_the_trim_leaves_its_input_unchanged_and_keeps_absent_fields_absent() -> None:
    job = api_job(3)
    before = json.dumps(job, sort_keys=True)
    trim_job(job)
    assert json.dumps(job, sort_keys=True) == before
    assert trim_job({"metadata": {"name": "a"}}) == {"metadata": {"name": "a"}}
    assert trim_pod({"status": None}) == {"status": None}


def test_the_packed_copy_is_the_trim_in_bytes_of_its_own_exact_size() -> None:
    job, pod = api_job(3), api_pod(0, 3)
    assert unpack(pack_job(job)) == trim_job(job)
    assert unpack(pack_pod(pod)) == trim_pod(pod)
    assert unpack(pack_job(job)) is not unpack(pack_job(job))  # a new object each time
    # The watch cache keeps thousands: each holds its JSON, not the encoder's whole buffer.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [pack_job(job) for _ in range(50)]
        held = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert held < 1.5 * len(kept[0]) + 100


def test_job_ids_and_versions_are_read_from_the_metadata() -> None:
    pod = api_pod(1, None)
    assert job_id_of(pod) == JOB_ID
    assert job_id_of({}) is None
    older = {"metadata": {"resourceVersion": "5"}}
    assert newer(pod, older) and not newer(older, pod) and newer(older, None)
    assert newer({"metadata": {}}, pod)  # no version: taken as newer
