"""The Uploader: a job's files to the object store, concurrently, with retries; manifest last."""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from ..conventions import manifest_key, output_key
from ..errors import BackendUnavailableError
from ..objectstore.base import ObjectStore, guess_content_type
from .contract import (
    DEFAULT_OUTPUT_LIMITS,
    DEFAULT_UPLOAD_ATTEMPTS,
    DEFAULT_UPLOAD_BACKOFF_SECONDS,
    OutputLimits,
)
from .manifest import ManifestFile, build_manifest, store_manifest
from .names import alternate_name
from .scan import FORBIDDEN, GONE, OutputFile, descriptor_path, open_beneath, scan_outputs
from .skips import MAX_SKIPPED_LISTED, SkipTally

__all__ = ["SCAN_MARGIN_ENTRIES", "Uploader", "scan_bound"]

# A pass reads at most twice the output-files limit and this many more entries (files and
# folders): enough for every kept file and its folders, bounded however many the job made.
SCAN_MARGIN_ENTRIES = 100_000


def scan_bound(limits: OutputLimits) -> int:
    """The most entries (files and folders) one pass of the scan reads."""
    return 2 * limits.max_files + SCAN_MARGIN_ENTRIES


log = logging.getLogger(__name__)

T = TypeVar("T")


class Uploader:
    """Uploads one job's outputs, concurrently, with retries; writes the manifest last."""

    def __init__(
        self,
        store: ObjectStore,
        job_id: str,
        output_dir: Path,
        *,
        workers: int = 8,
        attempts: int = DEFAULT_UPLOAD_ATTEMPTS,
        backoff_seconds: float = DEFAULT_UPLOAD_BACKOFF_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        manifest: str | None = None,
        limits: OutputLimits = DEFAULT_OUTPUT_LIMITS,
        scan_entries: int | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.output_dir = output_dir
        self.workers = workers
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.sleep = sleep
        self.manifest = manifest or manifest_key(job_id)  # where finish() writes it
        self.limits = limits
        self.scan_entries = scan_bound(limits) if scan_entries is None else scan_entries
        # result name -> (source file, size, mtime, sha256) of what the store holds under it
        self._uploaded: dict[str, tuple[str, int, int, str]] = {}
        self._present: set[str] = set()  # result names of the files seen by the latest scan
        self._skipped: dict[str, str] = {}  # files that cannot be kept -> why not
        self._pass_skips = SkipTally()  # the latest scan's: folders, files past the limits
        self._said: dict[str, str] = {}  # folders whose skip was logged -> why (bounded)
        self._over_limits = 0  # files the latest scan found past the limits
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

    def _within_limits(self, scan: Iterable[OutputFile], skips: SkipTally) -> list[OutputFile]:
        """The job's first files within its limits, in the scan's order; the rest tallied.

        Past the file count, the rest are skipped (counted, never held: a job's millions of
        files cost the scan's bound in time and nothing in memory); a file whose apparent
        size would take the total past the byte limit is skipped (never opened), and a
        later smaller one may still fit.
        """
        limits = self.limits
        over_files = f"over the job's output-files limit ({_count(limits.max_files, 'file')})"
        over_bytes = f"over the job's output-bytes limit ({_count(limits.max_bytes, 'byte')})"
        kept: list[OutputFile] = []
        over = files = total = 0
        for item in scan:
            if files >= limits.max_files:
                reason = over_files
            elif total + item.size > limits.max_bytes:
                reason = over_bytes
            else:
                files += 1
                total += item.size
                kept.append(item)
                continue
            over += 1
            name = self._names.get(item.path, item.relative_path)
            self._forget(name)
            skips.add(name, reason)
        if over != self._over_limits:  # said when it changes, not every pass
            log.warning(
                "%d files are not uploaded: over the job's output limits",
                over,
                extra={"job_id": self.job_id, "files": over},
            )
        self._over_limits = over
        return kept

    def _skip_folder(self, skips: SkipTally, name: str, reason: str) -> None:
        """A folder this pass does not read: tallied, and logged once (the first few)."""
        named = skips.add(name, reason)
        fresh = self._said.get(name) != reason
        if named and fresh and (name in self._said or len(self._said) < MAX_SKIPPED_LISTED):
            log.warning("%s is not uploaded: %s", name, reason, extra={"job_id": self.job_id})
            self._said[name] = reason

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
            if error.errno in FORBIDDEN:
                self._forget(item.relative_path)
                self._skip(item.relative_path, unreadable)
            elif error.errno in GONE:
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
            elif error.errno in FORBIDDEN and not os.access(path, os.R_OK):
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
        too_deep: list[str] = []
        unread: list[str] = []
        depth = self.limits.max_depth
        scan = scan_outputs(
            self.output_dir,
            unreadable,
            max_depth=depth,
            too_deep=too_deep,
            max_entries=self.scan_entries,
            unread=unread,
        )
        skips = SkipTally()
        items = self._within_limits(scan, skips)
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
        folders = (
            (unreadable, "the job left this folder unreadable to the uploader's user"),
            (too_deep, f"deeper than the job's output-depth limit ({_count(depth, 'folder')})"),
            (unread, f"not read whole: the scan stops after {self.scan_entries} files and folders"),
        )
        for names, reason in folders:
            for folder in names:
                self._skip_folder(skips, folder, reason)
        self._pass_skips = skips
        self._present = {item.relative_path for item in items}
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
        that cannot be kept (unreadable to the uploader, a key too long for the store, past
        the job's output limits) are listed under ``skipped``, each with the reason: the
        first ``MAX_SKIPPED_LISTED``, then how many more for each reason.
        """
        self.upload_changed(extra)
        files = [
            ManifestFile(
                path=relative,
                key=output_key(self.job_id, relative),
                size=size,
                sha256=checksum,
                content_type=guess_content_type(relative),
            )
            for relative, (_path, size, _mtime, checksum) in sorted(self._uploaded.items())
            if relative in self._present
        ]
        failed = SkipTally()  # files within the limits the store could not be given
        for relative, reason in self._skipped.items():
            if relative in self._present:
                failed.add(relative, reason)
        skipped = failed.merged(self._pass_skips)
        manifest = build_manifest(
            self.job_id,
            files,
            skipped.named,
            more_skipped=skipped.more,
            retries=self.retries,
            **details,
        )
        key = self.manifest
        self.retry("manifest upload", lambda: store_manifest(self.store, key, manifest))
        return manifest


def _count(number: int, noun: str) -> str:
    """``1 file``, ``5 files``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
