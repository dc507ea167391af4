"""Folder trees of any depth created, walked and removed without recursion, one level at a time.

A job may leave a tree deeper than Python's recursion limit (``shutil.rmtree``,
``os.walk`` and ``Path.mkdir(parents=True)`` recurse on Python 3.11); these helpers keep
their state in lists instead, and ``remove_tree`` holds one folder open at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["make_dirs", "remove_tree", "walk_files"]

_OPEN_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_dirs(path: Path) -> None:
    """``mkdir -p``: create ``path`` and its missing parents, shallowest first."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))


def walk_files(base: Path) -> Iterator[Path]:
    """Every regular file under ``base`` (symbolic links neither followed nor listed)."""
    pending = [base]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                yield Path(entry.path)


@dataclass
class _Level:
    """A folder on the way down: its name in its parent, identity, and subfolders still to do."""

    name: str
    device: int
    inode: int
    subfolders: list[str] = field(default_factory=list)


def remove_tree(path: Path) -> None:
    """Remove a folder and all it holds, depth first; a missing folder is not an error.

    Only one folder is open at a time: the way back up is ``..``, checked against the
    folder it came down from, so a folder moved away meanwhile stops the removal
    (OSError) instead of leading it elsewhere.
    """
    try:
        descriptor = os.open(path, _OPEN_FOLDER)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        path.unlink(missing_ok=True)
        return
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        path.unlink(missing_ok=True)  # a symbolic link: remove the link, not its target
        return
    try:
        top = os.fstat(descriptor)
        levels = [_Level("", top.st_dev, top.st_ino, _clear_files(descriptor))]
        while True:
            level = levels[-1]
            if level.subfolders:
                name = level.subfolders.pop()
                try:
                    child = os.open(name, _OPEN_FOLDER, dir_fd=descriptor)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                os.close(descriptor)
                descriptor = child
                info = os.fstat(descriptor)
                levels.append(_Level(name, info.st_dev, info.st_ino, _clear_files(descriptor)))
                continue
            if len(levels) == 1:
                break
            levels.pop()
            parent = os.open("..", _OPEN_FOLDER, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = parent
            info = os.fstat(descriptor)
            if (info.st_dev, info.st_ino) != (levels[-1].device, levels[-1].inode):
                raise OSError(errno.ESTALE, "a folder moved during its removal", str(path))
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(level.name, dir_fd=descriptor)
    finally:
        os.close(descriptor)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


def _clear_files(descriptor: int) -> list[str]:
    """Unlink every non-folder in the open folder; the names of its subfolders."""
    subfolders = []
    with os.scandir(descriptor) as listing:
        entries = list(listing)
    for entry in entries:
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            subfolders.append(entry.name)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.name, dir_fd=descriptor)
    return subfolders
