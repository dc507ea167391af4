"""An object store in a local folder, with the same key layout as the S3 bucket."""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import BackendUnavailableError
from ..resultids import MAX_KEY_BYTES
from .base import HashingReader, ObjectInfo, ObjectStream, guess_content_type
from .trees import make_dirs, remove_tree, walk_files

__all__ = ["FilesystemStore"]

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
# The name of a file being written before it is renamed into place: never an object.
PARTIAL_PREFIX = ".upload-"


def _path_limit(folder: Path) -> int:
    """The longest path the system takes under ``folder``, with its NUL (PATH_MAX)."""
    try:
        return os.pathconf(folder if folder.exists() else "/", "PC_PATH_MAX")
    except (OSError, ValueError):
        return MAX_KEY_BYTES


class FilesystemStore:
    """Objects are files under ``root``; keys are relative paths."""

    max_key_bytes: int | None

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        # A key is a file's path under the root: the whole path must fit the system's limit
        # (which counts its final NUL), so a longer key could be neither written nor read.
        path_limit = _path_limit(self.root) - 1 - len(os.fsencode(self.root)) - len(b"/")
        self.max_key_bytes = min(MAX_KEY_BYTES, path_limit)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"object key escapes the store: {key!r}")
        return path

    def ensure_ready(self) -> None:
        """Create the root folder."""
        make_dirs(self.root)

    def _write_atomically(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        target = self._path(key)
        make_dirs(target.parent)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=PARTIAL_PREFIX)
        try:
            with os.fdopen(handle, "wb") as out:
                write(out)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def put_if_absent(self, key: str, data: bytes, content_type: str) -> bool:
        """Write bytes unless the object exists (atomically: a hard link never replaces)."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=PARTIAL_PREFIX)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.link(temporary, target)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        return True

    def check_reachable(self) -> None:
        """Raise BackendUnavailableError unless the folder exists and can be written."""
        if not (self.root.is_dir() and os.access(self.root, os.W_OK)):
            raise BackendUnavailableError(f"Object store folder {self.root} is not writable")

    def put_file(self, key: str, path: str, content_type: str) -> str:
        """Copy a file in, atomically; the SHA-256 of the bytes copied."""
        with open(path, "rb") as source:
            reader = HashingReader(source)
            self._write_atomically(key, lambda out: shutil.copyfileobj(reader, out, CHUNK_SIZE))
        return reader.hexdigest()

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Write bytes, atomically."""
        self._write_atomically(key, lambda out: out.write(data))

    def get_bytes(self, key: str) -> bytes | None:
        """Read a whole object."""
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def head(self, key: str) -> ObjectInfo | None:
        """Size and type of one object."""
        path = self._path(key)
        if not path.is_file():
            return None
        return ObjectInfo(key, path.stat().st_size, guess_content_type(key))

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Objects under a prefix (a folder in this store)."""
        base = self.root / prefix
        if not base.is_dir():
            return []
        found = []
        for path in walk_files(base):
            if path.name.startswith(PARTIAL_PREFIX):
                continue
            key = path.relative_to(self.root).as_posix()
            with contextlib.suppress(FileNotFoundError):
                found.append(ObjectInfo(key, path.stat().st_size, guess_content_type(key)))
        return sorted(found, key=lambda info: info.key)

    def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        """Keys in one folder (``prefix`` ends with ``/``) after ``start_after``, sorted."""
        folder = self.root / prefix
        try:
            names = sorted(
                entry.name
                for entry in os.scandir(folder)
                if entry.is_file() and not entry.name.startswith(PARTIAL_PREFIX)
            )
        except (FileNotFoundError, NotADirectoryError):
            return []
        first = bisect.bisect_right(names, start_after.removeprefix(prefix))
        return [prefix + name for name in names[first : first + max(0, limit)]]

    def open(self, key: str, start: int = 0, end: int | None = None) -> ObjectStream | None:
        """Stream a byte range of a file without reading it whole."""
        info = self.head(key)
        if info is None:
            return None
        last = info.size - 1 if end is None else min(end, info.size - 1)
        handle = open(self._path(key), "rb")  # noqa: SIM115 - closed by the stream
        handle.seek(start)

        def chunks() -> Iterator[bytes]:
            remaining = last - start + 1
            while remaining > 0:
                chunk = handle.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    raise OSError(f"{key} was truncated while being read")
                remaining -= len(chunk)
                yield chunk

        return ObjectStream(info, start, last, chunks(), handle.close)

    def delete_prefix(self, prefix: str) -> None:
        """Remove a folder of objects, or the one object the prefix names."""
        path = self._path(prefix.rstrip("/"))
        try:
            if path.is_file():
                path.unlink(missing_ok=True)
                return
            remove_tree(path)
        except OSError as error:
            log.warning("removing objects under %s failed: %s", prefix, error)

    def remove_partial(self, prefix: str) -> int:
        """Remove the temporary files of writes under ``prefix`` that a crash cut short."""
        removed = 0
        for path in walk_files(self._path(prefix.rstrip("/"))):
            if path.name.startswith(PARTIAL_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def uri(self, key: str) -> str:
        """A ``file://`` URI of the object."""
        return (self.root / key).as_uri()

    def presign(self, key: str, seconds: int, *, content_type: str, disposition: str) -> str | None:
        """None: a folder has no URL of its own (downloads go through the service)."""
        return None
