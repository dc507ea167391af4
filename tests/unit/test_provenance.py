"""What exactly ran, read from a Job's pods: the clone's commit and the job image's ID."""

from __future__ import annotations

from typing import Any

import pytest

from ocps_jobs.backends.kubernetes.record import provenance_of
from ocps_jobs.backends.kubernetes.views import PodView, trim_pod

SHA = "0123456789abcdef0123456789abcdef01234567"


def pod(
    created: str, clone_message: str | None, clone_code: int, image_id: str | None
) -> dict[str, Any]:
    statuses = []
    if clone_message is not None:
        terminated = {"exitCode": clone_code, "message": clone_message}
        statuses.append({"name": "git-clone", "state": {"terminated": terminated}})
    job = {"name": "job", "state": {"running": {}}}
    if image_id is not None:
        job["imageID"] = image_id
    return {
        "metadata": {"name": f"p-{created}", "creationTimestamp": created},
        "status": {"initContainerStatuses": statuses, "containerStatuses": [job]},
    }


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([], ("", "")),
        (
            [pod("1", SHA + "\n", 0, "docker-pullable://repo/img@sha256:" + "a" * 64)],
            (SHA, "repo/img@sha256:" + "a" * 64),
        ),
        # A failed clone's message is not a commit; neither is free text on success.
        ([pod("1", "fatal: not found", 1, None)], ("", "")),
        ([pod("1", "done", 0, None)], ("", "")),
        # A job without a git URL has no clone: the image alone.
        ([pod("1", None, 0, "kwok://busybox")], ("", "kwok://busybox")),
        # The newest pod wins (a retry after the tag moved).
        (
            [pod("2", "b" * 40, 0, "img@sha256:new"), pod("1", SHA, 0, "img@sha256:old")],
            ("b" * 40, "img@sha256:new"),
        ),
    ],
)
def test_provenance_of_pods(pods: list[dict[str, Any]], expected: tuple[str, str]) -> None:
    assert provenance_of([PodView(item) for item in pods]) == expected
    # The watch cache's trimmed copy answers the same.
    assert provenance_of([PodView(trim_pod(item)) for item in pods]) == expected
