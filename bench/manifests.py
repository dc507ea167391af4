"""The Jobs the benchmarks create by raw POST: the library's own Job builder, in one place."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ocps_jobs.config import Settings
    from ocps_jobs.models import JobRecord

__all__ = ["KEEP_RUNNING", "csc_record", "job_manifest", "kube_settings"]

# A pod-template annotation the test control plane's fake nodes read (testenv.d/kwok-stages):
# the pod stays Running this many seconds, so a started Job stays ``executing``.
KEEP_RUNNING = {"ocps.test/run-seconds": "3600"}


def job_manifest(record: JobRecord, settings: Settings, *, suspend: bool) -> bytes:
    """The Job JSON the Kubernetes backend POSTs for ``record`` (the one import of the builder)."""
    from ocps_jobs.backends.kubernetes.spec import build_job, job_json

    return job_json(build_job(record, settings, suspend=suspend))


def kube_settings(
    namespace: str, kubeconfig: Path, data_dir: Path, pod_annotations: dict[str, str] | None = None
) -> Settings:
    """The settings of ``ocps-jobs serve --backend kubernetes`` on ``namespace``."""
    from ocps_jobs.config import Settings

    return Settings.from_env(
        backend="kubernetes",
        namespace=namespace,
        kubeconfig=kubeconfig,
        data_dir=data_dir,
        pod_annotations=pod_annotations,
    )


def csc_record(index: int) -> JobRecord:
    """A job as the OCPS CSC's ``PUT /api/v1/job`` makes it (DESIGN section 3), default settings.

    The CSC sends a command that runs a pipeline from a git checkout, the repository and
    commit, a run ID and a few environment variables.
    """
    from ocps_jobs.models import JobParameters, JobRecord, JobRequest, utcnow

    request = JobRequest.model_validate(
        {
            "command": "cd $JOB_SOURCE_DIR && bash bin/pipetask.sh",
            "url": "https://github.com/lsst-dm/ocps-pipelines.git",
            "commit_ref": "tickets/DM-41234",
            "run_id": f"CC_O_20261204_{index:06d}",
            "environment": [
                {"name": "PIPELINE_URL", "value": "$OCPS_PIPELINES_DIR/pipelines/LATISS/isr.yaml"},
                {"name": "BUTLER_REPO", "value": "/repo/LATISS"},
                {"name": "INSTRUMENT", "value": "LATISS"},
                {"name": "DATA_QUERY", "value": f"exposure IN ({2026120400000 + index})"},
                {"name": "OUTPUT_GLOB", "value": "u/ocps/%s"},
            ],
        }
    )
    job_id = uuid.uuid4().hex
    return JobRecord(
        job_id=job_id,
        run_id=request.run_id or job_id,
        owner="",
        creation_time=utcnow(),
        parameters=JobParameters.from_request(request),
    )
