"""A job's results as its record and its upload manifest hold them: previews, pages, lookups.

A record lists every result, or (``result_count`` set) only the first; then the manifest
lists them all, and a page or a lookup builds only the entries it answers with.
"""

from __future__ import annotations

import logging
from typing import Any

from ..conventions import manifest_key
from ..models import FINAL_PHASES, MAX_JOB_OBJECT_RESULTS, JobRecord, ResultFile
from ..objectstore import ObjectStore
from ..uploader.manifest import ManifestError, ManifestFile, manifest_entries

__all__ = ["JobResults"]

log = logging.getLogger(__name__)


class JobResults:
    """The results of jobs, from their records and, where those hold only some, the store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def _entries(self, record: JobRecord) -> list[Any] | None:
        """The manifest's entries, as stored; None when the record's list is the whole list.

        An unreadable or missing manifest is an empty list (logged when unreadable).
        """
        if record.results is not None and record.result_count is None:
            return None
        if record.phase not in FINAL_PHASES:
            return []
        data = self.store.get_bytes(manifest_key(record.job_id))
        if data is None:
            return []
        try:
            return manifest_entries(data)
        except ManifestError as error:
            _unreadable(record, error)
            return []

    def _listed(self, record: JobRecord, entries: list[Any]) -> list[ResultFile]:
        """Results of manifest entries; none when one is malformed (logged)."""
        try:
            return ResultFile.listed([ManifestFile.from_json(item) for item in entries])
        except ManifestError as error:
            _unreadable(record, error)
            return []

    def _one(self, record: JobRecord, entry: Any) -> ResultFile | None:
        """The result of one manifest entry; None when it is malformed (logged)."""
        found = self._listed(record, [entry])
        return found[0] if found else None

    def every(self, record: JobRecord) -> list[ResultFile]:
        """Every result of the job: known once its outputs are uploaded (manifest written)."""
        entries = self._entries(record)
        if entries is None:
            return record.results or []
        return self._listed(record, entries) or (record.results or [])

    def preview(self, record: JobRecord) -> tuple[list[ResultFile], int]:
        """The first ``MAX_JOB_OBJECT_RESULTS`` results and how many in all.

        From the record alone when it counts them: a job of a hundred thousand results is
        shown as fast as one of ten.
        """
        if record.result_count is not None and record.results is not None:
            return record.results[:MAX_JOB_OBJECT_RESULTS], record.result_count
        results = self.every(record)
        return results[:MAX_JOB_OBJECT_RESULTS], len(results)

    def page(self, record: JobRecord, start: int, count: int) -> tuple[list[ResultFile], int]:
        """``count`` results from position ``start`` and how many there are in all."""
        entries = self._entries(record)
        if entries is None:
            results = record.results or []
            return results[start : start + count], len(results)
        return self._listed(record, entries[start : start + count]), len(entries)

    def by_key(self, record: JobRecord, key: str) -> ResultFile | None:
        """The result stored at ``key``, if it is one of the job's."""
        for result in record.results or []:
            if result.key == key:
                return result
        entries = self._entries(record)
        for item in entries or []:
            if isinstance(item, dict) and item.get("key") == key:
                return self._one(record, item)
        return None

    def by_index(self, record: JobRecord, index: int) -> ResultFile | None:
        """The ``index``-th result (from 0), if there is one."""
        kept = record.results or []
        if 0 <= index < len(kept):
            return kept[index]
        entries = self._entries(record)
        if entries is None or not 0 <= index < len(entries):
            return None
        return self._one(record, entries[index])


def _unreadable(record: JobRecord, error: ManifestError) -> None:
    log.error("unreadable manifest for job %s: %s", record.job_id, error)
