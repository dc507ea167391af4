"""Job events: the log lines and counters of what happens to jobs, each once.

The service calls ``observe`` with every record it reads. A job seen executing is logged
``job started`` (once per instance). A job seen final is *ended*: the first instance that
writes the job's end marker (a conditional write to the object store, so exactly one
instance wins even when several read the job, and even when it ended while no instance
was watching) logs ``job ended`` and counts it, with its queue and execution times and
what its manifest says of the upload. Marker writes run on a background thread, so that
reads and lists never wait for the store.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import OrderedDict
from typing import Any, Protocol

from ..conventions import ended_marker_key, manifest_key
from ..errors import OCPSError
from ..models import JobRecord, Phase
from . import metrics

__all__ = ["JobEvents", "MarkerStore"]

log = logging.getLogger("ocps_jobs.events")

_REMEMBERED = 100_000  # job ids kept per set: enough to make re-observation rare and cheap
_STOP = object()


class MarkerStore(Protocol):
    """What the events need of the object store."""

    def put_if_absent(self, key: str, data: bytes, content_type: str) -> bool:
        """Store ``data`` unless ``key`` exists; whether this call wrote it."""

    def get_bytes(self, key: str) -> bytes | None:
        """The whole object, or None."""


class _Seen:
    """A bounded set of job ids, oldest forgotten first."""

    def __init__(self) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job_id: str) -> bool:
        """Remember ``job_id``; False when it was already remembered."""
        with self._lock:
            if job_id in self._ids:
                return False
            self._ids[job_id] = None
            if len(self._ids) > _REMEMBERED:
                self._ids.popitem(last=False)
            return True

    def __contains__(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._ids

    def discard(self, job_id: str) -> None:
        """Forget ``job_id`` (its end could not be recorded: try again on the next read)."""
        with self._lock:
            self._ids.pop(job_id, None)


class JobEvents:
    """Logs and counts job events for one service; see the module's docstring."""

    def __init__(self, store: MarkerStore) -> None:
        self.store = store
        self._executing = _Seen()
        self._ended = _Seen()
        self._deleted = _Seen()
        # Held while a marker is written: a job being deleted gets no marker after its objects go.
        self._claims = threading.Lock()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0

    def created(self, record: JobRecord, by: str) -> None:
        """A job was created."""
        metrics.JOBS_CREATED.inc()
        log.info(
            "job created",
            extra={
                "job_id": record.job_id,
                "run_id": record.run_id,
                "user": by or None,
                "phase": record.phase.value,
                "replicas": record.parameters.replicas,
            },
        )

    def user_action(self, action: str, record: JobRecord, by: str) -> None:
        """A caller aborted, deleted or queued the job (``action``: aborted, deleted...)."""
        log.info(
            f"job {action}",
            extra={"job_id": record.job_id, "user": by or None, "phase": record.phase.value},
        )

    def destroyed(self, job_id: str) -> None:
        """A job past its destruction time was removed."""
        log.info("job destroyed", extra={"job_id": job_id})

    def observe(self, record: JobRecord) -> None:
        """A record the service read: log a start, queue an end (cheap when already seen)."""
        if record.phase is Phase.EXECUTING and self._executing.add(record.job_id):
            log.info("job started", extra={"job_id": record.job_id, "start_time": _iso(record)})
        elif record.is_final and self._ended.add(record.job_id):
            with self._lock:
                self._pending += 1
                if self._worker is None:
                    self._worker = threading.Thread(
                        target=self._run, name="ocps-job-events", daemon=True
                    )
                    self._worker.start()
            self._queue.put(record)

    def end_before_delete(self, record: JobRecord) -> None:
        """A job about to be removed: record its end now, as aborted if it had not ended.

        Synchronous, and the background thread skips the job from now on: its marker is
        written before the deletion removes the job's objects, never after.
        """
        with self._claims:
            self._deleted.add(record.job_id)
            first = self._ended.add(record.job_id)
            if record.is_final:
                self._claim(record)  # a no-op when this or another instance already has
            elif first:
                self._ended_now(record.model_copy(update={"phase": Phase.ABORTED}), None)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued end is recorded; whether that happened in time (tests)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the background thread, once it has recorded the ends queued (for a while)."""
        if self._worker is not None:
            self._queue.put(_STOP)
            self._worker.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, JobRecord)
            try:
                with self._claims:
                    if item.job_id not in self._deleted:
                        self._claim(item)
            except Exception:
                log.exception("recording the end of job %s failed", item.job_id)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _claim(self, record: JobRecord) -> None:
        marker = json.dumps({"jobId": record.job_id, "phase": record.phase.value}).encode()
        try:
            won = self.store.put_if_absent(
                ended_marker_key(record.job_id), marker, "application/json"
            )
        except OCPSError:
            self._ended.discard(record.job_id)  # the store is down: the next read tries again
            return
        if won:
            self._ended_now(record, self._manifest(record.job_id))

    def _manifest(self, job_id: str) -> dict[str, Any] | None:
        try:
            data = self.store.get_bytes(manifest_key(job_id))
            manifest = json.loads(data) if data is not None else None
        except (OCPSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def _ended_now(self, record: JobRecord, manifest: dict[str, Any] | None) -> None:
        phase = record.phase.value
        metrics.JOBS_ENDED.labels(phase).inc()
        if record.start_time is not None:
            queued = (record.start_time - record.creation_time).total_seconds()
            metrics.JOB_QUEUED_SECONDS.observe(max(0.0, queued))
            if record.end_time is not None:
                executing = (record.end_time - record.start_time).total_seconds()
                metrics.JOB_EXECUTING_SECONDS.labels(phase).observe(max(0.0, executing))
        fields: dict[str, Any] = {"job_id": record.job_id, "run_id": record.run_id, "phase": phase}
        if record.error_message:
            fields["error_summary"] = record.error_message[:500]
        if manifest is not None:
            files = [item for item in manifest.get("files", []) if isinstance(item, dict)]
            skipped = manifest.get("skipped", [])
            retries = manifest.get("retries", 0)
            uploaded = sum(int(item.get("size", 0)) for item in files)
            metrics.RESULT_FILES.inc(len(files))
            metrics.RESULT_BYTES.inc(uploaded)
            metrics.UPLOAD_SKIPPED.inc(_skipped_count(skipped))
            metrics.UPLOAD_RETRIES.inc(retries if isinstance(retries, int) else 0)
            fields.update(exit_code=manifest.get("exitCode"), files=len(files), bytes=uploaded)
        log.info("job ended", extra=fields)


def _skipped_count(skipped: Any) -> int:
    """The files a manifest's ``skipped`` list names or counts (``{"more": n}``)."""
    if not isinstance(skipped, list):
        return 0
    counts = [item.get("more", 1) if isinstance(item, dict) else 1 for item in skipped]
    return sum(count for count in counts if isinstance(count, int))


def _iso(record: JobRecord) -> str | None:
    return record.start_time.isoformat() if record.start_time is not None else None
