"""The names a job's files are kept under: escaping, and alternates for clashing names."""

from __future__ import annotations

import posixpath
import re

__all__ = ["alternate_name", "result_name"]

# What a result name writes as %XX: the bytes of a file name that are not UTF-8 (which
# Python keeps as lone surrogates, PEP 383), control characters and the backslash.
_ESCAPED = re.compile("[\udc80-\udcff\x00-\x1f\x7f\\\\]")


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
