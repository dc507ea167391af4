"""The uploader: copies ``$JOB_OUTPUT_DIR`` to the object store, manifest last (stdlib + boto3)."""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import re
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from .conventions import (
    ENV_JOB_ID,
    ENV_JOB_OUTPUT_DIR,
    ENV_JOB_REPLICA_INDEX,
    LOG_RESULT_NAME,
    archive_key,
    manifest_key,
    output_key,
    replica_log_name,
    replica_manifest_key,
)
from .errors import BackendUnavailableError
from .objectstore.base import ObjectStore, guess_content_type
from .observability.logs import configure_logging

__all__ = [
    "OutputFile",
    "Uploader",
    "alternate_name",
    "descriptor_path",
    "final_record",
    "main",
    "merged_manifest",
    "open_beneath",
    "read_job_file",
    "result_name",
    "scan_outputs",
    "store_merged_manifest",
]

log = logging.getLogger("ocps_jobs.sidecar")

# What a result name writes as %XX: the bytes of a file name that are not UTF-8 (which
# Python keeps as lone surrogates, PEP 383), control characters and the backslash.
_ESCAPED = re.compile("[\udc80-\udcff\x00-\x1f\x7f\\\\]")

T = TypeVar("T")


@dataclass(frozen=True)
class OutputFile:
    """A regular file the job left: its result name and where it is."""

    relative_path: str  # the result name
    root: str  # the folder it is opened beneath, following no symbolic link below it
    source: str  # its path under ``root``, as the file system names it
    size: int
    mtime_ns: int

    @property
    def path(self) -> str:
        """The file's path."""
        return os.path.join(self.root, self.source)


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A file or folder that is gone, or is no longer what the scan saw (a link, a socket): not
# a result, and nothing to retry.
_GONE = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO})
_FORBIDDEN = frozenset({errno.EACCES, errno.EPERM})


def _open_folder(root: str, parts: list[str]) -> int:
    """A descriptor of ``root/parts...``; OSError (ELOOP, ENOTDIR) where one is a link.

    ``root`` itself too: the job can replace ``$JOB_OUTPUT_DIR`` with a link (to
    ``/proc/self``, say); only the folders above it are the uploader's own.
    """
    folder = os.open(root, _DIRECTORY_FLAGS)
    try:
        for part in parts:
            inner = os.open(part, _DIRECTORY_FLAGS, dir_fd=folder)
            os.close(folder)
            folder = inner
    except BaseException:
        os.close(folder)
        raise
    return folder


def open_beneath(root: str, source: str) -> int:
    """A read descriptor of the regular file ``root/source``, following no link on the way.

    The job writes where the uploader reads, and may swap a file or a folder for a link
    between the scan and the upload (to ``/proc/self/environ``, say, the uploader's own
    variables): a link anywhere below ``root`` is ELOOP or ENOTDIR here, never followed.
    A file that is no longer regular is ENOENT: it is not a result.
    """
    *folders, name = source.split("/")
    folder = _open_folder(root, folders)
    try:
        # O_NONBLOCK: a FIFO swapped in must not block the uploader; no effect on files.
        descriptor = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder
        )
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise FileNotFoundError(errno.ENOENT, "no longer a regular file", source)
    return descriptor


def descriptor_path(descriptor: int, fallback: str) -> str:
    """A path that opens the very file ``descriptor`` has open (Linux: ``/proc/self/fd/N``).

    Each open of it is a new description of that file, so the store's threads can read
    parts of it at their own offsets, whatever has since been renamed or replaced at
    ``fallback``. Elsewhere (a laptop, where jobs run as the server's own user) the
    file's path.
    """
    magic = f"/proc/self/fd/{descriptor}"
    return magic if os.path.exists(magic) else fallback


def result_name(relative_path: str) -> str:
    """The name a file is kept under: non-UTF-8 bytes, controls and backslashes as ``%XX``.

    Linux names are bytes; Python keeps the ones that are not UTF-8 as lone surrogates,
    which no S3 key or JSON document can hold, so one such file would stop the upload.
    Control characters and backslashes would make result IDs the service refuses to read.
    """
    return _ESCAPED.sub(_escape, relative_path)


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"%{code - 0xDC00 if code >= 0xDC00 else code:02X}"


def alternate_name(name: str, number: int) -> str:
    """``dir/coadd.fits.fz`` as ``dir/coadd~2.fits.fz``: the name with ``~number`` in its stem."""
    folder, base = posixpath.split(name)
    dot = base.find(".", 1)  # a leading dot belongs to the stem (".hidden")
    stem, suffix = (base, "") if dot < 0 else (base[:dot], base[dot:])
    return posixpath.join(folder, f"{stem}~{number}{suffix}")


def scan_outputs(output_dir: Path, unreadable: list[str] | None = None) -> Iterator[OutputFile]:
    """Every regular file under ``output_dir``; symbolic links are not followed or uploaded.

    A folder's files come before its subfolders, each in name order. Folders the uploader
    may not list are added to ``unreadable`` (their paths, ending in ``/``) and skipped;
    paths of any depth are read, folder by folder, never by their whole length.
    """
    root = str(output_dir)
    pending: list[list[str]] = [[]]
    while pending:
        parts = pending.pop()
        try:
            folder = _open_folder(root, parts)
            try:
                with os.scandir(folder) as listing:
                    entries = sorted(listing, key=lambda entry: entry.name)
            except BaseException:
                os.close(folder)
                raise
        except OSError as error:
            if error.errno in _GONE:  # gone, or swapped for a link: not the job's folder
                continue
            if error.errno not in _FORBIDDEN:
                raise  # EMFILE, EIO...: the pass fails and the next one tries again
            if unreadable is not None:
                unreadable.append("/".join(parts) + "/" if parts else "./")
            continue
        try:
            subfolders: list[list[str]] = []
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append([*parts, entry.name])
                    elif entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        source = "/".join([*parts, entry.name])
                        name = result_name(source)
                        yield OutputFile(name, root, source, info.st_size, info.st_mtime_ns)
                except FileNotFoundError:
                    continue
        finally:
            os.close(folder)
        pending.extend(reversed(subfolders))


class Uploader:
    """Uploads one job's outputs, concurrently, with retries; writes the manifest last."""

    def __init__(
        self,
        store: ObjectStore,
        job_id: str,
        output_dir: Path,
        *,
        workers: int = 8,
        attempts: int = 6,
        backoff_seconds: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        manifest: str | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.output_dir = output_dir
        self.workers = workers
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.sleep = sleep
        self.manifest = manifest or manifest_key(job_id)  # where finish() writes it
        # result name -> (source file, size, mtime, sha256) of what the store holds under it
        self._uploaded: dict[str, tuple[str, int, int, str]] = {}
        self._present: set[str] = set()  # result names of the files seen by the latest scan
        self._skipped: dict[str, str] = {}  # files that cannot be kept -> why not
        self._names: dict[str, str] = {}  # source file -> its result name, kept across passes
        self.retries = 0  # store calls retried over the uploader's life (in the manifest)

    def retry(self, action: str, function: Callable[[], T]) -> T:
        """Run ``function``, retrying store outages with exponential backoff."""
        delay = self.backoff_seconds
        for attempt in range(1, self.attempts + 1):
            try:
                return function()
            except (FileNotFoundError, PermissionError):
                raise  # a vanished or forbidden file does not change by retrying at once
            except (BackendUnavailableError, OSError) as error:
                if attempt == self.attempts:
                    raise
                self.retries += 1
                log.warning(
                    "%s failed (attempt %d of %d): %s",
                    action,
                    attempt,
                    self.attempts,
                    error,
                    extra={"job_id": self.job_id},
                )
                self.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def _skip(self, name: str, reason: str) -> None:
        """Keep the other results; the manifest names this one. Later passes try again."""
        if self._skipped.get(name) != reason:  # said once, not every pass
            log.warning("%s is not uploaded: %s", name, reason, extra={"job_id": self.job_id})
        self._skipped[name] = reason

    def _forget(self, name: str) -> None:
        """What an earlier pass uploaded under ``name`` is no longer this file's content."""
        self._uploaded.pop(name, None)

    def _upload_one(self, item: OutputFile) -> None:
        key = output_key(self.job_id, item.relative_path)
        limit = self.store.max_key_bytes
        if limit is not None and len(key.encode()) > limit:
            self._skip(
                item.relative_path, f"its object key would be longer than the store's {limit} bytes"
            )
            return
        unreadable = "the job left it unreadable to the uploader's user"
        try:
            descriptor = open_beneath(item.root, item.source)
        except OSError as error:
            if error.errno in _FORBIDDEN:
                self._forget(item.relative_path)
                self._skip(item.relative_path, unreadable)
            elif error.errno in _GONE:
                log.info("%s disappeared before it could be uploaded", item.relative_path)
                self._present.discard(item.relative_path)
            else:
                raise
            return
        content_type = guess_content_type(item.relative_path)
        path = descriptor_path(descriptor, item.path)
        try:
            checksum = self.retry(
                f"upload of {key}", lambda: self.store.put_file(key, path, content_type)
            )
        except OSError as error:
            if error.errno == errno.ENAMETOOLONG:
                self._forget(item.relative_path)
                self._skip(item.relative_path, "its path is too long for the store")
            elif error.errno in _FORBIDDEN and not os.access(path, os.R_OK):
                self._forget(item.relative_path)  # its mode changed since it was opened
                self._skip(item.relative_path, unreadable)
            else:
                raise  # the store refused it, not the file system
            return
        finally:
            os.close(descriptor)
        self._skipped.pop(item.relative_path, None)
        self._uploaded[item.relative_path] = (item.path, item.size, item.mtime_ns, checksum)

    def _unique_names(self, items: list[OutputFile], extras: int) -> list[OutputFile]:
        r"""Each file under a result name of its own, so that no file overwrites another.

        Two files can claim one: the captured log and a file of that name the job wrote, or
        a name that is not UTF-8 (``caf\xe9.txt``, kept as ``caf%E9.txt``) and a file
        really named so. A file keeps the name it had in an earlier pass; else the job's
        files come before the last ``extras`` items (the captured log) and real names
        before escaped ones, and a later file gets ``~2``, ``~3``... in its stem
        (``ocps-job~2.log``), never another file's name.
        """
        claimed = {item.relative_path for item in items}
        holders: dict[str, str] = {}  # result name -> source file, in this pass
        named: dict[str, OutputFile] = {}
        for item in items:
            name = self._names.get(item.path)
            if name is not None and name not in holders:
                holders[name] = item.path
                named[item.path] = replace(item, relative_path=name)

        def precedence(index: int) -> tuple[bool, bool, int]:
            escaped = items[index].relative_path != items[index].source
            return index >= len(items) - extras, escaped, index

        newcomers = [index for index, item in enumerate(items) if item.path not in named]
        for index in sorted(newcomers, key=precedence):
            item = items[index]
            name, number = item.relative_path, 1
            while name in holders or (number > 1 and name in claimed):
                number += 1
                name = alternate_name(item.relative_path, number)
            if number > 1:
                log.warning(
                    "%s is kept as %s: another file has that name", item.relative_path, name
                )
            holders[name] = item.path
            self._names[item.path] = name
            named[item.path] = replace(item, relative_path=name)
        return [named[item.path] for item in items]

    def upload_changed(self, extra: dict[str, Path] | None = None) -> int:
        """Upload files that are new or changed since the last pass; returns how many."""
        unreadable: list[str] = []
        items = list(scan_outputs(self.output_dir, unreadable))
        outputs = len(items)
        for relative, path in (extra or {}).items():
            try:
                info = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                items.append(
                    OutputFile(
                        relative, str(path.parent), path.name, info.st_size, info.st_mtime_ns
                    )
                )
        items = self._unique_names(items, extras=len(items) - outputs)
        for folder in unreadable:
            self._skip(folder, "the job left this folder unreadable to the uploader's user")
        self._present = {item.relative_path for item in items} | set(unreadable)
        changed = [
            item
            for item in items
            if self._uploaded.get(item.relative_path, (None, None, None))[:3]
            != (item.path, item.size, item.mtime_ns)
        ]
        if not changed:
            return 0
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            # list() re-raises the first failure after every upload has finished or failed.
            list(pool.map(self._upload_one, changed))
        log.info("upload pass", extra={"job_id": self.job_id, "files": len(changed)})
        return len(changed)

    def finish(self, extra: dict[str, Path] | None = None, **details: Any) -> dict[str, Any]:
        """Final pass, then the manifest: its presence means every listed file is in the store.

        Files the job deleted after an earlier pass uploaded them are not results; files
        that cannot be kept (unreadable to the uploader, a key too long for the store) are
        listed under ``skipped``, each with the reason.
        """
        self.upload_changed(extra)
        files = [
            {
                "path": relative,
                "key": output_key(self.job_id, relative),
                "size": size,
                "sha256": checksum,
                "contentType": guess_content_type(relative),
            }
            for relative, (_path, size, _mtime, checksum) in sorted(self._uploaded.items())
            if relative in self._present
        ]
        manifest = {
            "version": 1,
            "jobId": self.job_id,
            "files": files,
            "uploadedAt": datetime.now(UTC).isoformat(timespec="seconds"),
            "retries": self.retries,
            **details,
        }
        skipped = [
            {"path": relative, "reason": reason}
            for relative, reason in sorted(self._skipped.items())
            if relative in self._present
        ]
        if skipped:
            manifest["skipped"] = skipped
        data = json.dumps(manifest, indent=1).encode()
        key = self.manifest
        self.retry(
            "manifest upload",
            lambda: self.store.put_bytes(key, data, "application/json"),
        )
        return manifest


# --- the Kubernetes sidecar process -------------------------------------------------------


def _store_from_environment() -> ObjectStore:
    endpoint = os.environ.get("OCPS_S3_ENDPOINT") or None
    bucket = os.environ.get("OCPS_BUCKET", "ocps-jobs")
    if endpoint is None and os.environ.get("OCPS_STORE_DIR"):
        from .objectstore.filesystem import FilesystemStore

        return FilesystemStore(Path(os.environ["OCPS_STORE_DIR"]))
    from .objectstore.s3 import S3Store

    return S3Store(bucket, endpoint, os.environ.get("OCPS_S3_REGION", "us-east-1"))


def final_record(
    seed: dict[str, Any],
    manifest: dict[str, Any],
    exit_code: int | None,
    stderr_tail: str,
    *,
    failure: str = "",
    started: datetime | None = None,
) -> dict[str, Any]:
    """The archived job record (job.json): the creation-time record, completed by the outcome.

    A ``failure`` the pod reported before the command (a failed git clone) is ``error``
    with that message; else exit code 0 is ``completed``, another code ``error`` with the
    stderr tail, and no exit code at all (the pod was stopped: an abort or a deadline)
    ``aborted``. ``started`` fills a start time the seed does not have.
    """
    record = dict(seed)
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
        {"key": item["key"], "size": item["size"], "content_type": item["contentType"]}
        for item in manifest["files"]
    ]
    return record


def merged_manifest(
    store: ObjectStore, job_id: str, replicas: int, *, missing_stopped: bool = False
) -> dict[str, Any] | None:
    """The job's manifest from every replica's, once each replica has written its own.

    Replicas share one output namespace, as they would share a folder: their files are
    listed together (for a name more than one wrote, the entry the store holds). The exit
    code is the first failure's, none when a replica was stopped, else 0. With
    ``missing_stopped``, a replica without a manifest (one that never started) counts as
    stopped instead of not finished yet.
    """
    parts: list[dict[str, Any]] = []
    for index in range(replicas):
        data = store.get_bytes(replica_manifest_key(job_id, index))
        if data is None:
            if not missing_stopped:
                return None  # not the last replica to finish: that one merges
            parts.append({"files": [], "exitCode": None})
            continue
        parts.append(json.loads(data))
    listed: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, Any] = {}
    for part in parts:
        for item in part["files"]:
            listed.setdefault(item["path"], []).append(item)
        skipped.update((item["path"], item) for item in part.get("skipped", []))
    files = {path: _stored_entry(store, entries) for path, entries in listed.items()}
    codes = [part.get("exitCode") for part in parts]
    # A failure stops the other replicas (their code is None): the failure is the outcome.
    failures = [code for code in codes if code not in (0, None)]
    exit_code = failures[0] if failures else (None if None in codes else 0)
    manifest: dict[str, Any] = {
        "version": 1,
        "jobId": job_id,
        "files": [files[path] for path in sorted(files)],
        "uploadedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "exitCode": exit_code,
        "retries": sum(int(part.get("retries", 0)) for part in parts),
        "replicas": [
            {"index": index, "exitCode": code, "files": len(part["files"])}
            for index, (part, code) in enumerate(zip(parts, codes, strict=True))
        ],
    }
    if skipped:
        manifest["skipped"] = [skipped[path] for path in sorted(skipped)]
    return manifest


def store_merged_manifest(
    store: ObjectStore, job_id: str, replicas: int, *, missing_stopped: bool = False
) -> dict[str, Any] | None:
    """``merged_manifest``, written as the job's manifest.json once it can be made."""
    manifest = merged_manifest(store, job_id, replicas, missing_stopped=missing_stopped)
    if manifest is not None:
        data = json.dumps(manifest, indent=1).encode()
        store.put_bytes(manifest_key(job_id), data, "application/json")
    return manifest


def _stored_entry(store: ObjectStore, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Of replicas' entries for one name, the one the store holds (the last one written)."""
    if len(entries) == 1:
        return entries[0]
    info = store.head(entries[0]["key"])
    matching = [entry for entry in entries if info is not None and entry["size"] == info.size]
    return (matching or entries)[-1]


def read_job_file(path: Path, last_bytes: int) -> str:
    """The last bytes of a file the job's side wrote, as text; "" when it is not a file.

    The job can write there too: a link put in its place (to the uploader's own
    ``/proc/self/environ``) is not followed, and its text never reaches the record.
    """
    try:
        descriptor = open_beneath(str(path.parent), path.name)
    except OSError:
        return ""
    with os.fdopen(descriptor, "rb") as source:
        size = os.fstat(descriptor).st_size
        source.seek(max(0, size - last_bytes))
        return source.read().decode(errors="replace")


def _seed_record() -> dict[str, Any] | None:
    """The creation-time record to archive, or None.

    From the file the kubelet writes from the pod's annotation (``OCPS_JOB_RECORD_FILE``),
    else from ``OCPS_JOB_RECORD`` itself.
    """
    path = os.environ.get("OCPS_JOB_RECORD_FILE")
    try:
        text = Path(path).read_text() if path else os.environ.get("OCPS_JOB_RECORD", "")
    except OSError as error:
        log.error("no job record to archive: %s", error)
        return None
    seed: dict[str, Any] | None = json.loads(text) if text.strip() else None
    return seed


def main(argv: list[str] | None = None) -> int:
    """Run beside the job: upload while it runs, and everything once it has exited.

    The main container's wrapper writes ``$OCPS_EXIT_CODE_FILE`` when the command ends;
    the sidecar then makes its final pass. SIGTERM (the pod ending) triggers the final
    pass too, within the pod's grace period. The manifest is written after every output
    file, and the archived record (job.json) after the manifest.
    """
    started = datetime.now(UTC)  # the pod's start, as near as the uploader knows it
    configure_logging(
        os.environ.get("OCPS_LOG_LEVEL", "INFO"), os.environ.get("OCPS_LOG_FORMAT", "auto")
    )
    job_id = os.environ[ENV_JOB_ID]
    output_dir = Path(os.environ[ENV_JOB_OUTPUT_DIR])
    work = output_dir.parent
    exit_code_file = Path(os.environ.get("OCPS_EXIT_CODE_FILE", str(work / "exit-code")))
    interval = float(os.environ.get("OCPS_UPLOAD_INTERVAL", "10"))
    log_file = os.environ.get("OCPS_LOG_FILE")
    seed = _seed_record()
    stop = threading.Event()
    # Set the event from another thread: the handler runs in the main thread, which may be
    # holding the event's (non-reentrant) lock inside stop.wait(), and would deadlock.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop.set).start())
    store = _store_from_environment()
    replicas = int(os.environ.get("OCPS_REPLICAS", "1"))
    index = int(os.environ.get(ENV_JOB_REPLICA_INDEX, "0")) if replicas > 1 else 0
    uploader = Uploader(
        store,
        job_id,
        output_dir,
        attempts=int(os.environ.get("OCPS_UPLOAD_ATTEMPTS", "6")),
        backoff_seconds=float(os.environ.get("OCPS_UPLOAD_BACKOFF", "0.5")),
        manifest=replica_manifest_key(job_id, index) if replicas > 1 else None,
    )
    while not stop.is_set() and not exit_code_file.exists():
        try:
            uploader.upload_changed()
        except (BackendUnavailableError, OSError) as error:
            log.warning("periodic upload failed, will retry: %s", error, extra={"job_id": job_id})
        stop.wait(interval)
    exit_code = None
    text = read_job_file(exit_code_file, 64).strip()
    if text:
        exit_code = int(text) if text.lstrip("-").isdigit() else None
    log_name = LOG_RESULT_NAME if replicas == 1 else replica_log_name(index)
    extra = {log_name: Path(log_file)} if log_file else None
    own_exit_code = exit_code
    own = uploader.finish(extra, exitCode=exit_code)
    log.info(
        "uploaded %d files for job %s",
        len(own["files"]),
        job_id,
        extra={"job_id": job_id, "files": len(own["files"]), "retries": uploader.retries},
    )
    manifest: dict[str, Any] | None = own
    if replicas > 1:
        # Each replica's manifest is written before it looks, so the last one sees them all.
        manifest = uploader.retry(
            "manifest merge", lambda: store_merged_manifest(store, job_id, replicas)
        )
        if manifest is not None:
            exit_code = manifest["exitCode"]
    if seed is not None and manifest is not None:
        stderr = read_job_file(work / "stderr", 64 * 1024) if exit_code == own_exit_code else ""
        tail = "\n".join(stderr.splitlines()[-20:])
        failure = read_job_file(work / "failure", 4096)
        record = final_record(seed, manifest, exit_code, tail, failure=failure, started=started)
        data = json.dumps(record, indent=1).encode()
        uploader.retry(
            "record upload", lambda: store.put_bytes(archive_key(job_id), data, "application/json")
        )
    if not stop.is_set():
        stop.wait()  # a native sidecar lives until the pod ends
    return 0


if __name__ == "__main__":
    sys.exit(main())
