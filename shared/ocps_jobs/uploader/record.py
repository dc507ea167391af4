"""The archived job record (job.json): the creation-time record, completed by the outcome."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..objectstore import ObjectStore
from ..objectstore.history import HistoryIndex
from .contract import UploaderConfig
from .manifest import manifest_files

__all__ = ["final_record", "index_record", "seed_record"]

log = logging.getLogger(__name__)


def final_record(
    seed: dict[str, Any],
    manifest: dict[str, Any],
    exit_code: int | None,
    stderr_tail: str,
    *,
    failure: str = "",
    started: datetime | None = None,
    commit_sha: str = "",
) -> dict[str, Any]:
    """The archived job record (job.json): the creation-time record, completed by the outcome.

    A ``failure`` the pod reported before the command (a failed git clone) is ``error``
    with that message; else exit code 0 is ``completed``, another code ``error`` with the
    stderr tail, and no exit code at all (the pod was stopped: an abort or a deadline)
    ``aborted``. ``started`` fills a start time the seed does not have; ``commit_sha`` is
    the commit the clone checked out.
    """
    record = dict(seed)
    if commit_sha.strip():
        record["commit_sha"] = commit_sha.strip()
    record["end_time"] = datetime.now(UTC).isoformat(timespec="seconds")
    if started is not None and not record.get("start_time"):
        record["start_time"] = started.isoformat(timespec="seconds")
    if failure.strip():
        record["phase"], record["error_message"] = "error", failure.strip()
    elif exit_code == 0:
        record["phase"], record["error_message"] = "completed", ""
    elif exit_code is None:
        record["phase"] = "aborted"
        record["error_message"] = "The job was stopped before its command finished."
    else:
        record["phase"] = "error"
        detail = f": {stderr_tail.strip()}" if stderr_tail.strip() else ""
        record["error_message"] = f"Command exited with code {exit_code}{detail}"
    record["results"] = [
        {
            "key": item.key,
            "size": item.size,
            "content_type": item.content_type,
            "sha256": item.sha256,
        }
        for item in manifest_files(manifest)
    ]
    return record


def seed_record(config: UploaderConfig) -> dict[str, Any] | None:
    """The creation-time record to archive, or None.

    From the file the kubelet writes from the pod's annotation (``job_record_file``), else
    from the inline ``job_record``.
    """
    path = config.job_record_file
    try:
        text = Path(path).read_text() if path else config.job_record or ""
    except OSError as error:
        log.error("no job record to archive: %s", error)
        return None
    seed: dict[str, Any] | None = json.loads(text) if text.strip() else None
    return seed


def index_record(store: ObjectStore, record: dict[str, Any]) -> None:
    """Enter an archived record in the store's history, so lists show it after the TTL."""
    destruction = record.get("destruction")
    HistoryIndex(store).add(
        str(record["job_id"]),
        str(record.get("owner") or ""),
        datetime.fromisoformat(str(record["creation_time"])),
        datetime.fromisoformat(str(destruction)) if destruction else None,
    )
