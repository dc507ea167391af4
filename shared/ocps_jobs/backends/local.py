"""The embedded default: jobs as local process groups, records as JSON files under the data dir.

Destruction: a sweeper thread sleeps until the earliest destruction time and then removes
each expired job with its results exactly as a DELETE does (no ARCHIVED record is kept).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from ..config import Settings
from ..conventions import ENV_JOB_REPLICA_INDEX, LOG_RESULT_NAME, archive_key, job_prefix
from ..errors import BackendUnavailableError, JobNotFoundError
from ..jobenv import job_environment
from ..models import JobRecord, Phase, ResultFile, utcnow
from ..objectstore import ObjectStore
from ..objectstore.trees import make_dirs, remove_tree
from ..observability import metrics
from ..uploader.manifest import manifest_files
from ..uploader.upload import Uploader
from .base import JobUpdate, Unset
from .logs import LogLine, follow_file
from .records import InMemoryRecords, keep_results, queue_pending, snapshot
from .sandbox import Sandbox, exit_status, sandbox_for, signal_inside
from .stderr_tail import cap_message, collect_stderr

__all__ = ["LocalBackend"]

log = logging.getLogger(__name__)

GIT_TIMEOUT_SECONDS = 600
# The sweeper wakes at least this often, and whenever a destruction time is set.
SWEEP_MAX_SLEEP_SECONDS = 3600.0
# A job whose deletion has begun: the next start finishes it.
DELETING_SUFFIX = ".deleting"
# A job whose command succeeded and whose results are uploading: the next start finishes.
UPLOADING_SUFFIX = ".uploading"
# Server settings and credentials never reach a job's environment.
_PRIVATE_ENV_PREFIXES = ("OCPS_", "AWS_")


@dataclass
class _Run:
    """A job being executed: its process groups and whether an abort was asked for."""

    job_id: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    abort_reason: str | None = None
    deleted: bool = False
    timer: threading.Timer | None = None
    succeeded: bool = False  # the command ended 0: an abort now comes too late


def _start_ticks(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (Linux); None when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _own_data_dir(data_dir: Path) -> int:
    """An exclusive lock on the data dir for this process's life; 503 when another has it.

    A second process on the same folder (a second ``serve``) would take the running jobs
    for ones left by a crash: it marked them failed and removed their work.
    """
    path = data_dir / "state" / "owner.lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "another process"
        os.close(descriptor)
        raise BackendUnavailableError(
            f"The data folder {data_dir} is in use by another ocps-jobs process "
            f"(pid {holder}); one process runs a folder's jobs"
        ) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, str(os.getpid()).encode())
    return descriptor


class LocalBackend(InMemoryRecords):
    """Runs each job as ``/bin/bash -c <command>`` in its own process group (and sandbox)."""

    per_replica_logs = False  # the replicas of a job write one log file together

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store
        self.state_dir = settings.data_dir / "state" / "jobs"
        self.work_dir = settings.data_dir / "work"
        make_dirs(self.state_dir)
        make_dirs(self.work_dir)
        self._sandbox_of = sandbox_for(settings)
        self._owner = _own_data_dir(settings.data_dir)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._records: dict[str, JobRecord] = {}
        self._runs: dict[str, _Run] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._closed = False
        self._sweep_wakeup = threading.Event()
        ignored = settings.ignored_by_local_backend()
        if ignored:
            log.info("the embedded backend ignores these job pod settings: %s", ", ".join(ignored))
        self._recover()
        self._workers = [
            threading.Thread(target=self._work, name=f"ocps-job-worker-{n}", daemon=True)
            for n in range(settings.max_concurrent_jobs)
        ]
        for worker in self._workers:
            worker.start()
        self._sweeper = threading.Thread(
            target=self._sweep, name="ocps-destruction-sweeper", daemon=True
        )
        self._sweeper.start()

    # --- persistence -------------------------------------------------------------------

    def _state_path(self, job_id: str) -> Path:
        return self.state_dir / f"{job_id}.json"

    def _save(self, record: JobRecord) -> None:
        """Write the record atomically and wake everyone waiting on a change."""
        data = record.model_dump_json(indent=1)
        handle, temporary = tempfile.mkstemp(dir=self.state_dir, prefix=".tmp-")
        with os.fdopen(handle, "w") as out:
            out.write(data)
        os.replace(temporary, self._state_path(record.job_id))
        self._changed.notify_all()

    def _recover(self) -> None:
        """Load records after a restart: queued jobs queue again, running ones failed.

        One job's trouble (a tree that cannot be removed, a record that cannot be saved) is
        logged and does not stop the start.
        """
        deleted = self._finish_deletions()
        for path in sorted(self.state_dir.glob("*.json")):
            if path.stem in deleted:
                continue
            try:
                record = JobRecord.model_validate_json(path.read_text())
            except (OSError, ValueError) as error:
                log.error("ignoring unreadable job record %s: %s", path, error)
                continue
            self._records[record.job_id] = record
            if record.phase is Phase.EXECUTING:
                self._stop_orphans(record.job_id)  # before its outputs go: no stray writer
                self._end_interrupted(record)
            elif record.phase is Phase.QUEUED:
                self._queue.put(record.job_id)

    def _end_interrupted(self, record: JobRecord) -> None:
        """End a job the last process left running, its outputs uploaded as an abort's are.

        One whose command had succeeded (its results were uploading) completes; any other
        ends in error, with what it had written.
        """
        job_id = record.job_id
        succeeded = self._uploading_path(job_id).exists()
        self._remove_partial_objects(job_id)  # the crashed process's unfinished writes
        results = None
        log_path = self.work_dir / job_id / LOG_RESULT_NAME
        try:
            if self.output_dir(job_id).is_dir():
                extra = {LOG_RESULT_NAME: log_path} if log_path.is_file() else {}
                manifest = Uploader(
                    self.store, job_id, self.output_dir(job_id), limits=self.settings.output_limits
                ).finish(extra)
                results = ResultFile.listed(manifest_files(manifest))
        except Exception:
            log.exception("uploading the outputs of interrupted job %s failed", job_id)
        completed = succeeded and results is not None
        record.phase = Phase.COMPLETED if completed else Phase.ERROR
        record.end_time = utcnow()
        record.error_message = (
            "" if completed else "The job manager restarted while the job was running."
        )
        keep_results(record, results or [])
        try:
            with self._lock:
                self._save(record)
            self._archive(record)
        except Exception:
            log.exception("recording job %s as ended after a restart", job_id)
        self._uploading_path(job_id).unlink(missing_ok=True)
        self._remove_work(job_id)

    def _uploading_path(self, job_id: str) -> Path:
        """Present while the results of a job whose command succeeded are uploading."""
        return self.state_dir / f"{job_id}{UPLOADING_SUFFIX}"

    def _remove_partial_objects(self, job_id: str) -> None:
        """Remove what the job's uploads left unfinished; a failure is logged, never raised."""
        try:
            removed = self.store.remove_partial(job_prefix(job_id))
        except Exception:
            log.exception("removing the partial objects of job %s failed", job_id)
            return
        if removed:
            log.info("removed %d partial objects of job %s", removed, job_id)

    def _remove_work(self, job_id: str) -> None:
        """Remove a job's work folder, however deep; a failure is logged, never raised."""
        try:
            remove_tree(self.work_dir / job_id)
        except Exception:
            log.exception("removing the work folder of job %s failed", job_id)

    # --- the backend interface -----------------------------------------------------------

    def output_dir(self, job_id: str) -> Path:
        """``$JOB_OUTPUT_DIR`` of a job."""
        return self.work_dir / job_id / "out"

    def source_dir(self, job_id: str) -> Path:
        """``$JOB_SOURCE_DIR`` of a job."""
        return self.work_dir / job_id / "src"

    def create(self, record: JobRecord, *, start: bool) -> JobRecord:
        """Store a new job and queue it when asked to."""
        record.environment = job_environment(
            record.job_id,
            record.parameters,
            self.settings,
            output_dir=str(self.output_dir(record.job_id)),
            source_dir=str(self.source_dir(record.job_id)),
        )
        record.phase = Phase.QUEUED if start else Phase.PENDING
        with self._lock:
            self._records[record.job_id] = record
            self._save(record)
            if start:
                self._queue.put(record.job_id)
            if record.destruction is not None:
                self._sweep_wakeup.set()
            return snapshot(record)

    def start(self, job_id: str) -> JobRecord:
        """PENDING -> QUEUED (the service has checked that the job may start)."""
        with self._lock:
            record = self._require(job_id)
            if queue_pending(record):
                self._save(record)
                self._queue.put(job_id)
            return snapshot(record)

    def abort(self, job_id: str, reason: str = "") -> JobRecord:
        """Stop a job; a running one gets SIGTERM, then SIGKILL after the grace period.

        The service has checked that the job may abort; one that ended meanwhile is left
        as it ended.
        """
        with self._lock:
            record = self._require(job_id)
            run = self._runs.get(job_id)
            if run is None and not record.is_final:
                record.phase = Phase.ABORTED
                record.end_time = utcnow()
                record.error_message = reason or "Aborted before it started."
                self._save(record)
                self._archive(record)
            elif run is not None and not run.succeeded:  # else too late: results uploading
                run.abort_reason = reason or "Aborted by request."
                self._signal_run(run)
            return snapshot(record)

    def delete(self, job_id: str) -> None:
        """Stop the job if it runs, forget it and remove its objects.

        The job is marked deleted first: a deletion cut short (a crash, the store failing
        half-way) is finished at the next start instead of leaving a job without some of
        its results.
        """
        with self._lock:
            self._require(job_id)
            self._deleting_path(job_id).touch()
        # Objects first: with the store down this fails (503) and the job is still there
        # (until it is deleted again or the next start finishes the deletion).
        self.store.delete_prefix(job_prefix(job_id))
        with self._lock:
            self._require(job_id)
            del self._records[job_id]
            with contextlib.suppress(FileNotFoundError):
                self._state_path(job_id).unlink()
            run = self._runs.get(job_id)
            if run is not None:
                run.deleted = True
                run.abort_reason = run.abort_reason or "Deleted by request."
                self._signal_run(run)
            self._changed.notify_all()
        if run is None:
            self._remove_work(job_id)
            self.store.delete_prefix(job_prefix(job_id))
            self._deleting_path(job_id).unlink(missing_ok=True)

    def _deleting_path(self, job_id: str) -> Path:
        return self.state_dir / f"{job_id}{DELETING_SUFFIX}"

    def _finish_deletions(self) -> set[str]:
        """Finish the deletions a crash cut short; the ids of the jobs they were of."""
        deleted = set()
        for marker in sorted(self.state_dir.glob(f"*{DELETING_SUFFIX}")):
            job_id = marker.name.removesuffix(DELETING_SUFFIX)
            deleted.add(job_id)
            try:
                self._stop_orphans(job_id)
                self.store.delete_prefix(job_prefix(job_id))
                self._remove_work(job_id)
                self._state_path(job_id).unlink(missing_ok=True)
                marker.unlink()
            except Exception:
                log.exception("finishing the deletion of job %s failed", job_id)
            else:
                log.warning("finished the deletion of job %s, cut short by a crash", job_id)
        return deleted

    def update(self, job_id: str, update: JobUpdate) -> JobRecord:
        """Set execution duration or destruction time, as the service has checked them."""
        with self._lock:
            record = self._require(job_id)
            if not isinstance(update.execution_duration, Unset):
                record.execution_duration = update.execution_duration
            if not isinstance(update.destruction, Unset):
                record.destruction = update.destruction
                self._sweep_wakeup.set()
            self._save(record)
            return snapshot(record)

    def read_log(self, record: JobRecord, until: float | None) -> Iterator[LogLine] | None:
        """The log file the job's processes write (replicas share it); None once it ended."""
        if record.is_final:
            return None

        def finished() -> bool:
            current = self.get(record.job_id)
            return current is None or current.is_final

        return follow_file(self.work_dir / record.job_id / LOG_RESULT_NAME, finished, until)

    def wait_for_change(self, job_id: str, phase: Phase, timeout: float) -> None:
        """Sleep on a condition variable until the phase changes: no polling."""
        with self._changed:
            self._changed.wait_for(
                lambda: (record := self._records.get(job_id)) is None or record.phase != phase,
                timeout=timeout,
            )

    def close(self) -> None:
        """Stop workers and kill running jobs (they are recorded as failed on restart)."""
        with self._lock:
            self._closed = True
            runs = list(self._runs.values())
        self._sweep_wakeup.set()
        for run in runs:
            if run.succeeded:  # uploading: finished below, or by the next start
                continue
            run.abort_reason = run.abort_reason or "The job manager shut down."
            self._signal_run(run, grace=0)
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout=10)
        self._sweeper.join(timeout=10)
        os.close(self._owner)  # another process may take the data dir now

    # --- destruction ---------------------------------------------------------------------

    def _sweep(self) -> None:
        """Remove jobs past their destruction time; sleep until the next one is due."""
        while True:
            self._sweep_wakeup.clear()
            now = datetime.now(UTC)
            with self._lock:
                if self._closed:
                    return
                times = [
                    (record.destruction, job_id)
                    for job_id, record in self._records.items()
                    if record.destruction is not None
                ]
            for when, job_id in times:
                if when <= now:
                    try:
                        self.delete(job_id)
                    except JobNotFoundError:
                        continue
                    except Exception:  # one bad job must not stop the sweeper
                        log.exception("destruction of job %s failed", job_id)
                        continue
                    log.info("job destroyed", extra={"job_id": job_id})
            upcoming = [when for when, _ in times if when > now]
            delay = SWEEP_MAX_SLEEP_SECONDS
            if upcoming:
                delay = min(delay, max(0.0, (min(upcoming) - now).total_seconds()) + 0.01)
            self._sweep_wakeup.wait(delay)

    # --- execution -----------------------------------------------------------------------

    @property
    def _sandbox(self) -> Sandbox | None:
        """The sandbox jobs run in (the start's probe decided it; waits for it once)."""
        return self._sandbox_of()

    def _signal_run(self, run: _Run, grace: float | None = None) -> None:
        for process in run.processes:
            if self._sandbox is None:
                _kill_group(process, signal.SIGTERM)
            else:
                signal_inside(process.pid, signal.SIGTERM)
        delay = self.settings.abort_grace_seconds if grace is None else grace

        def escalate() -> None:
            for process in run.processes:
                _kill_group(process, signal.SIGKILL)

        timer = threading.Timer(delay, escalate)
        timer.daemon = True
        timer.start()

    def _work(self) -> None:
        """A job worker: takes queued jobs one at a time and survives any error of any job."""
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run_queued(job_id)
            except Exception:  # _run_queued handles its errors; this is the last resort
                log.exception("job worker: job %s failed outside its error handling", job_id)

    def _run_queued(self, job_id: str) -> None:
        """Execute one queued job; any error ends the job in ERROR, never the worker."""
        run: _Run | None = None
        try:
            with self._lock:
                record = self._records.get(job_id)
                if self._closed or record is None or record.phase is not Phase.QUEUED:
                    return
                record.phase = Phase.EXECUTING
                record.start_time = utcnow()
                run = _Run(job_id)
                self._runs[job_id] = run
                self._save(record)
                started = snapshot(record)
            self._execute(started, run)
        except Exception as error:
            log.exception("job %s failed in the executor", job_id)
            self._fail(job_id, run, f"Internal error running the job: {error}")

    def _fail(self, job_id: str, run: _Run | None, message: str) -> None:
        """End a job in ERROR after an internal error, as far as the failing parts allow."""
        run = run or _Run(job_id)
        for process in run.processes:
            _kill_group(process, signal.SIGKILL)
        try:
            self._finish(job_id, run, Phase.ERROR, message)
            return
        except Exception:
            log.exception("recording the failure of job %s failed", job_id)
        with self._lock:  # the record in memory at least ends; the file may say otherwise
            self._runs.pop(job_id, None)
            record = self._records.get(job_id)
            if record is not None and not record.is_final:
                record.phase = Phase.ERROR
                record.end_time = utcnow()
                record.error_message = cap_message(message)
            self._changed.notify_all()
        self._remove_work(job_id)

    def _execute(self, record: JobRecord, run: _Run) -> None:
        job_id = record.job_id
        root = self.work_dir / job_id
        output_dir = self.output_dir(job_id)
        make_dirs(output_dir)
        log_path = root / LOG_RESULT_NAME
        environment = _base_environment()
        environment.update({entry.name: entry.value for entry in record.environment})
        if record.execution_duration:
            run.timer = threading.Timer(
                record.execution_duration,
                self._time_out,
                args=(job_id, record.execution_duration),
            )
            run.timer.daemon = True
            run.timer.start()
        with open(log_path, "ab") as log_file:
            message = None
            if record.parameters.url:
                message = self._clone(record, run, environment, log_file)
                if message is None:
                    self._keep_commit(job_id)
            if message is None and run.abort_reason is None:
                message = self._run_command(record, run, environment, root, log_file)
        if run.timer:
            run.timer.cancel()
        with self._lock:
            run.succeeded = message is None and run.abort_reason is None
        if run.succeeded:  # a stop now lets the upload finish, or the next start does
            self._uploading_path(job_id).touch()
        if run.deleted:
            self._finish(job_id, run, Phase.ABORTED, run.abort_reason or "")
            return
        try:
            codes = [process.returncode for process in run.processes]  # the manifest's, as on K8s
            exit_code = next((code for code in codes if code), 0 if codes else None)
            uploader = Uploader(self.store, job_id, output_dir, limits=self.settings.output_limits)
            manifest = uploader.finish({LOG_RESULT_NAME: log_path}, exitCode=exit_code)
        except Exception as error:
            log.exception("upload of job %s outputs failed", job_id)
            self._finish(job_id, run, Phase.ERROR, f"Upload of the job's results failed: {error}")
            return
        results = ResultFile.listed(manifest_files(manifest))
        if run.abort_reason is not None:
            self._finish(job_id, run, Phase.ABORTED, run.abort_reason, results)
        elif message is not None:
            self._finish(job_id, run, Phase.ERROR, message, results)
        else:
            self._finish(job_id, run, Phase.COMPLETED, "", results)

    def _spawn(
        self,
        run: _Run,
        argv: list[str],
        environment: dict[str, str],
        cwd: Path,
        log_file: IO[bytes],
    ) -> subprocess.Popen[bytes]:
        sandbox = self._sandbox  # outside the lock: the first job may wait for the probe
        with self._lock:
            if run.abort_reason is not None:
                raise _Aborted
            if sandbox is not None:
                argv = sandbox.wrap(argv, self.work_dir / run.job_id, cwd)
            process = subprocess.Popen(
                argv,
                env=environment,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            run.processes.append(process)
            self._mark_process(run, process.pid)
            return process

    def _clone(
        self, record: JobRecord, run: _Run, environment: dict[str, str], log_file: IO[bytes]
    ) -> str | None:
        """Clone and check out the job's repository; the git message on failure."""
        url = record.parameters.url or ""
        source = self.source_dir(record.job_id)
        git_environment = {**environment, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true"}
        steps = [
            ["git", "-c", "protocol.ext.allow=never", "clone", "--quiet", "--", url, str(source)]
        ]
        if record.parameters.commit_ref:
            steps.append(
                [
                    "git",
                    "-C",
                    str(source),
                    "checkout",
                    "--quiet",
                    record.parameters.commit_ref,
                    "--",
                ]
            )
        for argv in steps:
            try:
                process = self._spawn(
                    run, argv, git_environment, self.work_dir / record.job_id, log_file
                )
            except _Aborted:
                return None
            tail = collect_stderr(process, log_file)
            try:
                code = process.wait(timeout=GIT_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                _kill_group(process, signal.SIGKILL)
                code = process.wait()
                tail.note(f"timed out after {GIT_TIMEOUT_SECONDS} s")
            tail.join()
            if code != 0:
                action = "clone of" if argv[3] == "clone" else "checkout in"
                what = url if argv[3] == "clone" else f"{url} of {record.parameters.commit_ref!r}"
                detail = tail.text() or f"git exited with code {code}"
                return f"git {action} {what} failed: {detail}"
        return None

    def _keep_commit(self, job_id: str) -> None:
        """The commit the clone checked out, in the record (what exactly ran)."""
        try:
            done = subprocess.run(
                ["git", "-C", str(self.source_dir(job_id)), "rev-parse", "--verify", "HEAD"],
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("no commit SHA for job %s: %s", job_id, error)
            return
        if done.returncode != 0:
            return
        with self._lock:
            record = self._records.get(job_id)
            if record is not None:
                record.commit_sha = done.stdout.strip()
                self._save(record)

    def _run_command(
        self,
        record: JobRecord,
        run: _Run,
        environment: dict[str, str],
        cwd: Path,
        log_file: IO[bytes],
    ) -> str | None:
        """Run every replica; the error summary of the first that failed, or None."""
        argv = ["/bin/bash", "-c", record.parameters.command]
        replicas = []
        for index in range(record.parameters.replicas):
            replica_environment = {**environment, ENV_JOB_REPLICA_INDEX: str(index)}
            try:
                process = self._spawn(run, argv, replica_environment, cwd, log_file)
            except _Aborted:
                break
            replicas.append((process, collect_stderr(process, log_file)))
        failures = []
        for process, tail in replicas:
            code = process.wait()
            if self._sandbox is not None:
                code = exit_status(code)
            # What the command left behind ends with it, as in a container: otherwise a
            # bash killed from outside leaves children holding stderr and the job running.
            _kill_group(process, signal.SIGKILL)
            tail.join()
            if code != 0:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                stderr = tail.text()
                failures.append(f"Command {how}" + (f": {stderr}" if stderr else ""))
        return failures[0] if failures else None

    def _time_out(self, job_id: str, seconds: int) -> None:
        with self._lock:
            run = self._runs.get(job_id)
            if run is None or run.abort_reason is not None:
                return
            run.abort_reason = f"The job ran over its execution duration of {seconds} s."
            self._signal_run(run)

    # --- process marks: what a crashed server's successor must stop --------------------

    def _marks_path(self, job_id: str) -> Path:
        return self.state_dir / f"{job_id}.processes"

    def _mark_process(self, run: _Run, pid: int) -> None:
        """Note a job's process group with its start time, which tells it from a reused pid."""
        started = _start_ticks(pid)
        if started is None:
            return
        with open(self._marks_path(run.job_id), "a") as marks:
            marks.write(f"{pid} {started}\n")

    def _stop_orphans(self, job_id: str) -> None:
        """Kill the process groups a crashed server left running for this job."""
        path = self._marks_path(job_id)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            pid, _, started = line.partition(" ")
            if pid.isdigit() and started.isdigit() and _start_ticks(int(pid)) == int(started):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(pid), signal.SIGKILL)
                    log.warning("stopped process group %s of job %s, left by a crash", pid, job_id)
        path.unlink(missing_ok=True)

    def _finish(
        self,
        job_id: str,
        run: _Run,
        phase: Phase,
        message: str,
        results: list[ResultFile] | None = None,
    ) -> None:
        self._marks_path(job_id).unlink(missing_ok=True)
        with self._lock:
            self._runs.pop(job_id, None)
            record = self._records.get(job_id)
            if record is not None and not run.deleted:
                record.phase = phase
                record.end_time = utcnow()
                record.error_message = cap_message(message)
                keep_results(record, results or [])
                self._save(record)
                self._archive(record)
            self._changed.notify_all()
        self._uploading_path(job_id).unlink(missing_ok=True)  # after the final record
        self._remove_work(job_id)
        if run.deleted:
            self.store.delete_prefix(job_prefix(job_id))
            self._deleting_path(job_id).unlink(missing_ok=True)

    def _archive(self, record: JobRecord) -> None:
        """Keep the final record beside the outputs (DESIGN section 6)."""
        try:
            self.store.put_bytes(
                archive_key(record.job_id),
                record.model_dump_json(indent=1).encode(),
                "application/json",
            )
        except Exception as error:  # the local record stays authoritative
            metrics.ARCHIVE_WRITES.labels("failed").inc()
            log.warning("archiving job %s failed: %s", record.job_id, error)
            return
        metrics.ARCHIVE_WRITES.labels("ok").inc()
        log.info("job archived", extra={"job_id": record.job_id, "phase": record.phase.value})

    def check_ready(self) -> dict[str, object]:
        """Readiness: the embedded executor runs in this process, so it is up while it is."""
        return {"kind": "local"}


class _Aborted(Exception):
    """The job was aborted before this process could start."""


def _base_environment() -> dict[str, str]:
    """The server's own environment, less its settings and credentials."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_PRIVATE_ENV_PREFIXES)
    }


def _kill_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the whole process group, children the command left behind included."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
