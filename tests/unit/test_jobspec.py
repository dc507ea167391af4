"""The Job builder as data: what each container's process sees, after the kubelet's expansion."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ocps_jobs.backends.kubernetes.spec import (
    ANNOTATION_BUDGET,
    GIT_CLONE_SCRIPT,
    RECORD_FILE,
    WRAPPER_SCRIPT,
    build_job,
    from_kubelet_literal,
    kubelet_literal,
)
from ocps_jobs.config import Settings
from ocps_jobs.conventions import ANNOTATIONS
from ocps_jobs.errors import PayloadTooLargeError
from ocps_jobs.models import JobParameters, JobRecord, JobRequest
from tests.helpers import container_view

SECRET = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}
TRICKY = "echo $$ $(JOB_ID) $(AWS_SECRET_ACCESS_KEY) $$(date) $( $"


def record_for(request: JobRequest) -> JobRecord:
    return JobRecord(
        job_id="0123456789abcdef0123456789abcdef",
        run_id=request.run_id or "0123456789abcdef0123456789abcdef",
        owner="ocps-csc",
        creation_time=datetime(2024, 1, 1, tzinfo=UTC),
        parameters=JobParameters.from_request(request),
    )


@pytest.mark.parametrize("text", ["", "plain", "$", "$$", "$(A)", TRICKY, "a$(b$$c)d$"])
def test_kubelet_literal_round_trips(text: str) -> None:
    assert from_kubelet_literal(kubelet_literal(text)) == text


def test_every_container_sees_the_callers_text_byte_for_byte_and_no_secret() -> None:
    request = JobRequest(
        command=TRICKY,
        run_id="run-$(AWS_SECRET_ACCESS_KEY)",
        environment=[
            {"name": "FROM_JOB_ID", "value": "$(JOB_ID)"},
            {"name": "PID_TEXT", "value": "$$ and $$$"},
        ],
        url="https://example.org/$(AWS_SECRET_ACCESS_KEY)/repo.git",
        commit_ref="v$(JOB_ID)",
    )
    record = record_for(request)
    job = build_job(record, Settings(backend="kubernetes"), suspend=False)
    pod = job.spec.template.spec
    uploader, clone = pod.init_containers
    (main,) = pod.containers

    command, env = container_view(main, SECRET)
    assert command == ["/bin/bash", "-c", WRAPPER_SCRIPT, "ocps-job", TRICKY]
    assert env["FROM_JOB_ID"] == "$(JOB_ID)"
    assert env["PID_TEXT"] == "$$ and $$$"
    assert env["SRC_GIT_URL"] == request.url
    assert env["GIT_COMMIT_REF"] == request.commit_ref

    command, env = container_view(clone, SECRET)
    assert command == ["/bin/bash", "-c", GIT_CLONE_SCRIPT]
    assert (env["SRC_GIT_URL"], env["GIT_COMMIT_REF"]) == (request.url, request.commit_ref)

    command, env = container_view(uploader, SECRET)
    seed = json.loads(uploaded_record(job))
    assert seed["run_id"] == "run-$(AWS_SECRET_ACCESS_KEY)"
    assert seed["parameters"]["command"] == TRICKY
    seen = json.dumps([container_view(c, SECRET) for c in (uploader, clone, main)])
    assert "s3cr3t-value" not in seen and "AKIDEXAMPLE" not in seen


def uploaded_record(job: Any) -> str:
    """The file the uploader reads its record from, as the kubelet writes it for the pod."""
    pod = job.spec.template.spec
    (uploader,) = [c for c in pod.init_containers if c.name == "uploader"]
    assert {entry.name: entry.value for entry in uploader.env}[
        "OCPS_JOB_RECORD_FILE"
    ] == RECORD_FILE
    (mount,) = [m for m in uploader.volume_mounts if RECORD_FILE.startswith(m.mount_path + "/")]
    (volume,) = [v for v in pod.volumes if v.name == mount.name]
    (item,) = volume.downward_api.items
    assert f"{mount.mount_path}/{item.path}" == RECORD_FILE
    field = item.field_ref.field_path
    assert field == f"metadata.annotations['{ANNOTATIONS.RECORD}']"
    text: str = job.spec.template.metadata.annotations[ANNOTATIONS.RECORD]
    return text


def test_a_record_travels_to_the_uploader_whole_up_to_the_annotation_budget() -> None:
    # 64 KiB of quotes is a valid command, twice that as JSON: past what one variable could
    # carry (execve's 128 KiB), within what an annotation, read as a file, does.
    record = record_for(JobRequest(command='"' * 65_536))
    job = build_job(record, Settings(backend="kubernetes"), suspend=False)
    assert json.loads(uploaded_record(job))["parameters"]["command"] == '"' * 65_536
    many = [{"name": f"V{n}", "value": "x" * 30_000} for n in range(9)]  # 270 KB
    record = record_for(JobRequest(command="true", environment=many))
    with pytest.raises(PayloadTooLargeError) as refused:
        build_job(record, Settings(backend="kubernetes"), suspend=False)
    assert refused.value.status == 413
    assert str(ANNOTATION_BUDGET) in str(refused.value)


def test_replicas_run_as_an_indexed_job_each_pod_knowing_its_index() -> None:
    request = JobRequest(command="run-part $JOB_REPLICA_INDEX", replicas=3)
    job = build_job(record_for(request), Settings(backend="kubernetes"), suspend=False)
    assert (job.spec.completions, job.spec.parallelism) == (3, 3)
    assert job.spec.completion_mode == "Indexed"
    pod = job.spec.template.spec
    uploader, main = pod.init_containers[0], pod.containers[0]
    for container in (uploader, main):
        (index,) = [entry for entry in container.env if entry.name == "JOB_REPLICA_INDEX"]
        assert index.value_from.field_ref.field_path == (
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        )
    assert {entry.name: entry.value for entry in uploader.env}["OCPS_REPLICAS"] == "3"


def test_one_replica_is_a_plain_job() -> None:
    job = build_job(
        record_for(JobRequest(command="true")), Settings(backend="kubernetes"), suspend=False
    )
    assert job.spec.completion_mode is None
    pod = job.spec.template.spec
    names = {entry.name for c in (*pod.init_containers, *pod.containers) for entry in c.env}
    assert "JOB_REPLICA_INDEX" not in names and "OCPS_REPLICAS" not in names


@pytest.mark.parametrize("replicas", [1, 3])
def test_build_job_leaves_its_record_unchanged(replicas: int) -> None:
    request = JobRequest(
        command="run $X",
        replicas=replicas,
        environment=[{"name": "X", "value": "1"}],
        url="https://example.org/repo.git",
    )
    record = record_for(request)
    before = record.model_copy(deep=True)
    build_job(record, Settings(backend="kubernetes"), suspend=True)
    assert record == before
    assert record.environment == []  # the Job's variables are the Job's, not the record's
