"""Phase from a Job's API JSON: the abort annotation against the Job's own conditions."""

from __future__ import annotations

from typing import Any

import pytest

from ocps_jobs.conventions import ANNOTATIONS
from ocps_jobs.models import Phase
from ocps_jobs.phase import job_status

ABORTED_AT = "2026-11-28T10:00:05+00:00"


def job(*conditions: str, aborted: bool = False) -> dict[str, Any]:
    annotations = {ANNOTATIONS.ABORT_REQUESTED: ABORTED_AT} if aborted else {}
    return {
        "metadata": {"annotations": annotations},
        "spec": {"suspend": aborted},
        "status": {
            "startTime": "2026-11-28T10:00:00Z",
            "completionTime": "2026-11-28T10:00:04Z" if "Complete" in conditions else None,
            "conditions": [
                {"type": kind, "status": "True", "lastTransitionTime": "2026-11-28T10:00:04Z"}
                for kind in conditions
            ],
        },
    }


@pytest.mark.parametrize(
    ("conditions", "aborted", "manifest", "phase"),
    [
        ((), True, False, Phase.ABORTED),
        ((), True, True, Phase.ABORTED),
        (("Failed",), True, True, Phase.ABORTED),
        # The command had succeeded when the abort came: its upload finishes the job.
        (("SuccessCriteriaMet",), True, False, Phase.EXECUTING),
        (("SuccessCriteriaMet", "Complete"), True, False, Phase.EXECUTING),
        (("SuccessCriteriaMet", "Complete"), True, True, Phase.COMPLETED),
        (("Complete",), False, True, Phase.COMPLETED),
        ((), False, False, Phase.QUEUED),
    ],
)
def test_an_abort_after_the_command_succeeded_does_not_undo_it(
    conditions: tuple[str, ...], aborted: bool, manifest: bool, phase: Phase
) -> None:
    status = job_status(job(*conditions, aborted=aborted), [], manifest_exists=manifest)
    assert status.phase is phase


def pod(exit_code: int | None) -> dict[str, Any]:
    """A pod whose job container has ended with ``exit_code`` (None: still running), while
    its uploader, a native sidecar, still makes its last pass: the pod is Running."""
    state = {"running": {}} if exit_code is None else {"terminated": {"exitCode": exit_code}}
    return {
        "status": {
            "phase": "Running",
            "containerStatuses": [{"name": "job", "state": state}],
            "initContainerStatuses": [{"name": "uploader", "state": {"running": {}}}],
        }
    }


@pytest.mark.parametrize(
    ("replicas", "pods", "phase"),
    [
        (1, [pod(0)], Phase.EXECUTING),  # the command succeeded: too late to abort
        (1, [pod(None)], Phase.ABORTED),
        (1, [pod(2)], Phase.ABORTED),
        (2, [pod(0), pod(None)], Phase.ABORTED),  # one replica still runs
        (2, [pod(0), pod(0)], Phase.EXECUTING),
    ],
)
def test_an_abort_while_the_uploaders_run_is_too_late_once_every_command_succeeded(
    replicas: int, pods: list[dict[str, Any]], phase: Phase
) -> None:
    aborted = job(aborted=True)
    aborted["spec"]["completions"] = replicas
    assert job_status(aborted, pods, manifest_exists=False).phase is phase
