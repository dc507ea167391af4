"""The object-store interface shared by the S3 and filesystem stores (stdlib only)."""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

__all__ = ["HashingReader", "ObjectInfo", "ObjectStore", "ObjectStream", "guess_content_type"]

# Types mimetypes does not know but pipelines write.
_EXTRA_TYPES = {
    ".fits": "application/fits",
    ".fit": "application/fits",
    ".fz": "application/fits",
    ".log": "text/plain",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".parq": "application/vnd.apache.parquet",
    ".parquet": "application/vnd.apache.parquet",
    ".ecsv": "text/plain",
}


def guess_content_type(name: str) -> str:
    """A content type for a file name; ``application/octet-stream`` when unknown."""
    lowered = name.lower()
    for suffix, content_type in _EXTRA_TYPES.items():
        if lowered.endswith(suffix):
            return content_type
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


class HashingReader:
    """A file read front to back whose SHA-256 is that of exactly the bytes read.

    Where a store copies or sends what it reads, the checksum in the manifest is of the
    bytes stored, computed in the same pass rather than in a second read of the file.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative), added to the digest."""
        data = self._source.read(size)
        self._digest.update(data)
        return data

    def readable(self) -> bool:
        """Always: this is a reader."""
        return True

    def seekable(self) -> bool:
        """Never: a seek would make the digest differ from the bytes stored."""
        return False

    def hexdigest(self) -> str:
        """The SHA-256 of the bytes read so far, in hex."""
        return self._digest.hexdigest()


@dataclass(frozen=True)
class ObjectInfo:
    """An object's key, size in bytes and content type."""

    key: str
    size: int
    content_type: str


@dataclass
class ObjectStream:
    """An open byte range of one object, read in bounded chunks."""

    info: ObjectInfo
    start: int
    end: int  # inclusive
    chunks: Iterator[bytes]
    close: Callable[[], None]  # releases the underlying connection or file

    @property
    def length(self) -> int:
        """Number of bytes the stream yields."""
        return self.end - self.start + 1 if self.info.size else 0


class ObjectStore(Protocol):
    """Where job outputs, manifests and archived records live."""

    # The longest key the store accepts, in UTF-8 bytes (None: no limit of its own).
    max_key_bytes: int | None

    def ensure_ready(self) -> None:
        """Create the bucket or folder if it does not exist."""

    def put_file(self, key: str, path: str, content_type: str) -> str:
        """Upload a local file to ``key``, reading it once; the SHA-256 of what was stored."""

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` at ``key``."""

    def put_if_absent(self, key: str, data: bytes, content_type: str) -> bool:
        """Store ``data`` at ``key`` unless it exists; whether this call wrote it."""

    def check_reachable(self) -> None:
        """Raise BackendUnavailableError unless the bucket or folder answers (readiness)."""

    def get_bytes(self, key: str) -> bytes | None:
        """The whole object, or None when it does not exist."""

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size and type, or None when it does not exist."""

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix``, in key order."""

    def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        """At most ``limit`` keys under ``prefix`` after ``start_after``, in key order."""

    def open(self, key: str, start: int = 0, end: int | None = None) -> ObjectStream | None:
        """Stream bytes ``start..end`` (inclusive) of the object, or None when missing."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix``."""

    def remove_partial(self, prefix: str) -> int:
        """Remove what uploads under ``prefix`` left unfinished (a crash); how many."""

    def uri(self, key: str) -> str:
        """Where an operator finds the object with their own tools."""

    def presign(self, key: str, seconds: int, *, content_type: str, disposition: str) -> str | None:
        """A URL that GETs the object without credentials for ``seconds``; None if unsupported.

        The store answers it with ``content_type`` and ``disposition`` as those headers.
        """
