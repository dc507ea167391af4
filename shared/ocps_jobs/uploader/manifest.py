"""The upload manifest, defined once: its entries, building, reading and merging replicas'."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..conventions import manifest_key, replica_manifest_key
from ..objectstore.base import ObjectStore
from .skips import skipped_entries

__all__ = [
    "MANIFEST_CONTENT_TYPE",
    "MANIFEST_VERSION",
    "ManifestError",
    "ManifestFile",
    "build_manifest",
    "encode_manifest",
    "manifest_entries",
    "manifest_exit_code",
    "manifest_files",
    "manifest_skipped",
    "manifest_skipped_more",
    "merged_manifest",
    "parse_manifest",
    "read_manifest_files",
    "store_manifest",
    "store_merged_manifest",
]

MANIFEST_VERSION = 1
MANIFEST_CONTENT_TYPE = "application/json"


class ManifestError(ValueError):
    """A stored manifest that is not one: not JSON, or without the fields an entry has."""


@dataclass(frozen=True)
class ManifestFile:
    """One uploaded file as the manifest lists it: its result name, object and checksum."""

    path: str
    key: str
    size: int
    sha256: str
    content_type: str

    def to_json(self) -> dict[str, Any]:
        """The entry as the manifest document holds it."""
        return {
            "path": self.path,
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "contentType": self.content_type,
        }

    @classmethod
    def from_json(cls, item: Any) -> ManifestFile:
        """The entry of a manifest document; ManifestError when it is malformed."""
        try:
            entry = cls(
                path=item["path"],
                key=item["key"],
                size=item["size"],
                sha256=item.get("sha256", ""),
                content_type=item["contentType"],
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ManifestError(f"malformed manifest entry {item!r}") from error
        text = (entry.path, entry.key, entry.sha256, entry.content_type)
        if not all(isinstance(value, str) for value in text) or not _is_size(entry.size):
            raise ManifestError(f"malformed manifest entry {item!r}")
        return entry


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def build_manifest(
    job_id: str,
    files: Iterable[ManifestFile],
    skipped: Mapping[str, str] | None = None,
    *,
    more_skipped: Mapping[str, int] | None = None,
    **details: Any,
) -> dict[str, Any]:
    """The manifest document: the files, then ``details`` (``exitCode``...), then the skipped.

    ``skipped`` maps a result name that could not be kept to why, listed in name order up
    to ``MAX_SKIPPED_LISTED``; the rest, and ``more_skipped`` (reason -> how many), are
    counted in one ``{"more": n, "reason": ...}`` entry per reason.
    """
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "jobId": job_id,
        "files": [item.to_json() for item in files],
        "uploadedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        **details,
    }
    entries = skipped_entries(skipped or {}, more_skipped)
    if entries:
        manifest["skipped"] = entries
    return manifest


def encode_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The manifest document as stored."""
    return json.dumps(manifest, indent=1).encode()


def _document(data: bytes) -> dict[str, Any]:
    """A stored manifest document, its entries unchecked; ManifestError when it is not one."""
    try:
        manifest = json.loads(data)
    except ValueError as error:
        raise ManifestError(f"a manifest that is not JSON: {error}") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise ManifestError("a manifest without a list of files")
    return manifest


def parse_manifest(data: bytes) -> dict[str, Any]:
    """A stored manifest document, its entries checked; ManifestError when it is not one."""
    manifest = _document(data)
    manifest_files(manifest)
    return manifest


def manifest_entries(data: bytes) -> list[Any]:
    """A stored manifest's file entries as stored, each for ``ManifestFile.from_json``.

    For reading a few of a long list: none is checked (ManifestError only when the document
    is not a manifest).
    """
    files: list[Any] = _document(data)["files"]
    return files


def manifest_files(manifest: Mapping[str, Any]) -> list[ManifestFile]:
    """The files a manifest document lists; ManifestError when it is malformed."""
    files = manifest.get("files")
    if not isinstance(files, list):
        raise ManifestError("a manifest without a list of files")
    return [ManifestFile.from_json(item) for item in files]


def read_manifest_files(data: bytes) -> list[ManifestFile]:
    """The files a stored manifest lists; ManifestError when it is malformed."""
    return manifest_files(_document(data))


def manifest_skipped(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The result names a manifest says could not be kept, each with the reason."""
    return {item["path"]: item["reason"] for item in manifest.get("skipped", []) if "path" in item}


def manifest_skipped_more(manifest: Mapping[str, Any]) -> dict[str, int]:
    """How many more skipped files a manifest counts without naming them, by reason."""
    more: dict[str, int] = {}
    for item in manifest.get("skipped", []):
        if "path" not in item and isinstance(item.get("more"), int):
            more[item["reason"]] = more.get(item["reason"], 0) + item["more"]
    return more


def manifest_exit_code(manifest: Mapping[str, Any]) -> int | None:
    """The command's exit code the manifest records; None when the command was stopped."""
    code = manifest.get("exitCode")
    return code if isinstance(code, int) else None


def store_manifest(store: ObjectStore, key: str, manifest: Mapping[str, Any]) -> None:
    """Write the manifest document under ``key``."""
    store.put_bytes(key, encode_manifest(manifest), MANIFEST_CONTENT_TYPE)


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
        parts.append(parse_manifest(data))
    listed: dict[str, list[ManifestFile]] = {}
    skipped: dict[str, str] = {}
    more: dict[str, int] = {}
    for part in parts:
        for item in manifest_files(part):
            listed.setdefault(item.path, []).append(item)
        skipped.update(manifest_skipped(part))
        for reason, count in manifest_skipped_more(part).items():
            more[reason] = more.get(reason, 0) + count
    files = {path: _stored_entry(store, entries) for path, entries in listed.items()}
    codes = [manifest_exit_code(part) for part in parts]
    # A failure stops the other replicas (their code is None): the failure is the outcome.
    failures = [code for code in codes if code not in (0, None)]
    exit_code = failures[0] if failures else (None if None in codes else 0)
    summaries = [
        {"index": index, "exitCode": code, "files": len(part["files"])}
        for index, (part, code) in enumerate(zip(parts, codes, strict=True))
    ]
    return build_manifest(
        job_id,
        [files[path] for path in sorted(files)],
        skipped,
        more_skipped=more,
        exitCode=exit_code,
        retries=sum(int(part.get("retries", 0)) for part in parts),
        replicas=summaries,
    )


def store_merged_manifest(
    store: ObjectStore, job_id: str, replicas: int, *, missing_stopped: bool = False
) -> dict[str, Any] | None:
    """``merged_manifest``, written as the job's manifest.json once it can be made."""
    manifest = merged_manifest(store, job_id, replicas, missing_stopped=missing_stopped)
    if manifest is not None:
        store_manifest(store, manifest_key(job_id), manifest)
    return manifest


def _stored_entry(store: ObjectStore, entries: list[ManifestFile]) -> ManifestFile:
    """Of replicas' entries for one name, the one the store holds (the last one written)."""
    if len(entries) == 1:
        return entries[0]
    info = store.head(entries[0].key)
    matching = [entry for entry in entries if info is not None and entry.size == info.size]
    return (matching or entries)[-1]
