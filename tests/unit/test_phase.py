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
