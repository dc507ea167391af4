"""The job's files, read beneath its output folder without following any link."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from .names import result_name

__all__ = [
    "FORBIDDEN",
    "GONE",
    "OutputFile",
    "descriptor_path",
    "open_beneath",
    "read_job_file",
    "scan_outputs",
]


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
GONE = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO})
FORBIDDEN = frozenset({errno.EACCES, errno.EPERM})


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


def _folder_name(parts: list[str]) -> str:
    """A folder's result name, ending in ``/``; ``./`` for the output folder itself."""
    return result_name("/".join(parts)) + "/" if parts else "./"


def scan_outputs(
    output_dir: Path,
    unreadable: list[str] | None = None,
    *,
    max_depth: int | None = None,
    too_deep: list[str] | None = None,
    max_entries: int | None = None,
    unread: list[str] | None = None,
) -> Iterator[OutputFile]:
    """Every regular file under ``output_dir``; symbolic links are not followed or uploaded.

    A folder's files come before its subfolders, each in name order. Folders the uploader
    may not list are added to ``unreadable`` (their paths, ending in ``/``) and skipped;
    paths of any depth are read, folder by folder, never by their whole length. With
    ``max_depth``, a folder whose files would be more than that many folders deep is not
    read: its path (ending in ``/``) is added to ``too_deep``. With ``max_entries``, the
    scan reads at most that many entries (files and folders) in all, so a tree of millions
    costs no more than that: the folders it then has not read whole are added to
    ``unread``, and of a folder holding more entries than are left, the first the file
    system lists are taken (in name order among themselves).
    """
    root = str(output_dir)
    pending: list[list[str]] = [[]]
    budget = max_entries
    while pending:
        parts = pending.pop()
        if budget is not None and budget <= 0:
            if unread is not None:
                unread.extend(_folder_name(folder) for folder in [parts, *reversed(pending)])
            return
        try:
            folder = _open_folder(root, parts)
            try:
                with os.scandir(folder) as listing:
                    if budget is None:
                        taken = list(listing)
                    else:
                        taken = list(islice(listing, budget + 1))
                        if len(taken) > budget:
                            del taken[budget:]
                            if unread is not None:
                                unread.append(_folder_name(parts))
                        budget -= len(taken)
                    entries = sorted(taken, key=lambda entry: entry.name)
            except BaseException:
                os.close(folder)
                raise
        except OSError as error:
            if error.errno in GONE:  # gone, or swapped for a link: not the job's folder
                continue
            if error.errno not in FORBIDDEN:
                raise  # EMFILE, EIO...: the pass fails and the next one tries again
            if unreadable is not None:
                unreadable.append("/".join(parts) + "/" if parts else "./")
            continue
        try:
            subfolders: list[list[str]] = []
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        inner = [*parts, entry.name]
                        if max_depth is not None and len(inner) > max_depth:
                            if too_deep is not None:
                                too_deep.append(_folder_name(inner))
                        else:
                            subfolders.append(inner)
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
