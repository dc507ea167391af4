"""The uploader's process beside the job (``python -m ocps_jobs.uploader``)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..conventions import LOG_RESULT_NAME, archive_key, replica_log_name, replica_manifest_key
from ..errors import BackendUnavailableError
from ..objectstore import open_store
from ..observability.logs import configure_logging
from .contract import COMMIT_FILE_NAME, FAILURE_FILE_NAME, STDERR_FILE_NAME, UploaderConfig
from .manifest import manifest_exit_code, store_merged_manifest
from .record import final_record, index_record, seed_record
from .scan import read_job_file
from .upload import Uploader

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(env: Mapping[str, str] | None = None) -> int:
    """Run beside the job: upload while it runs, and everything once it has exited.

    The configuration is ``env`` (``os.environ`` by default), read once. The main
    container's wrapper writes the exit-code file when the command ends; the uploader then
    makes its final pass. SIGTERM (the pod ending) triggers the final pass too, within the
    pod's grace period. The manifest is written after every output file, and the archived
    record (job.json) after the manifest.
    """
    started = datetime.now(UTC)  # the pod's start, as near as the uploader knows it
    config = UploaderConfig.from_environment(os.environ if env is None else env)
    configure_logging(config.log_level, config.log_format)
    job_id = config.job_id
    exit_code_file = Path(config.exit_code_path)
    seed = seed_record(config)
    stop = threading.Event()
    # Set the event from another thread: the handler runs in the main thread, which may be
    # holding the event's (non-reentrant) lock inside stop.wait(), and would deadlock.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop.set).start())
    store = open_store(
        bucket=config.bucket,
        endpoint=config.s3_endpoint,
        region=config.s3_region,
        folder=Path(config.store_dir) if config.store_dir else None,
    )
    replicated = config.replicas > 1
    uploader = Uploader(
        store,
        job_id,
        Path(config.output_dir),
        attempts=config.upload_attempts,
        backoff_seconds=config.upload_backoff_seconds,
        manifest=replica_manifest_key(job_id, config.index) if replicated else None,
        limits=config.limits,
    )
    while not stop.is_set() and not exit_code_file.exists():
        try:
            uploader.upload_changed()
        except (BackendUnavailableError, OSError) as error:
            log.warning("periodic upload failed, will retry: %s", error, extra={"job_id": job_id})
        stop.wait(config.upload_interval_seconds)
    exit_code = None
    text = read_job_file(exit_code_file, 64).strip()
    if text:
        exit_code = int(text) if text.lstrip("-").isdigit() else None
    log_name = replica_log_name(config.index) if replicated else LOG_RESULT_NAME
    extra = {log_name: Path(config.log_file)} if config.log_file else None
    own_exit_code = exit_code
    own = uploader.finish(extra, exitCode=exit_code)
    log.info(
        "uploaded %d files for job %s",
        len(own["files"]),
        job_id,
        extra={"job_id": job_id, "files": len(own["files"]), "retries": uploader.retries},
    )
    manifest: dict[str, Any] | None = own
    if replicated:
        # Each replica's manifest is written before it looks, so the last one sees them all.
        manifest = uploader.retry(
            "manifest merge", lambda: store_merged_manifest(store, job_id, config.replicas)
        )
        if manifest is not None:
            exit_code = manifest_exit_code(manifest)
    if seed is not None and manifest is not None:
        work = Path(config.work_dir)
        own_stderr = exit_code == own_exit_code
        stderr = read_job_file(work / STDERR_FILE_NAME, 64 * 1024) if own_stderr else ""
        tail = "\n".join(stderr.splitlines()[-20:])
        failure = read_job_file(work / FAILURE_FILE_NAME, 4096)
        commit = read_job_file(work / COMMIT_FILE_NAME, 256)
        record = final_record(
            seed, manifest, exit_code, tail, failure=failure, started=started, commit_sha=commit
        )
        data = json.dumps(record, indent=1).encode()
        uploader.retry(
            "record upload", lambda: store.put_bytes(archive_key(job_id), data, "application/json")
        )
        try:
            uploader.retry("history entry", lambda: index_record(store, record))
        except (KeyError, ValueError) as error:
            log.error("job %s not entered in the history: %s", job_id, error)
    if not stop.is_set():
        stop.wait()  # a native sidecar lives until the pod ends
    return 0
