"""Result IDs: URL-safe base64 of an object key, decoded only to keys inside a job's outputs."""

from __future__ import annotations

import base64
import binascii
import re
from typing import NamedTuple

from .conventions import output_key
from .errors import ResultNotFoundError

__all__ = [
    "MAX_KEY_BYTES",
    "ResultKey",
    "decode_result_id",
    "encode_result_id",
    "is_safe_relative_path",
]

_KEY = re.compile(r"^jobs/(?P<job_id>[0-9a-f]{32})/out/(?P<path>.+)$", re.DOTALL)
_LEGACY_PATH = re.compile(r"^/uws/jobs/(?P<job_id>[0-9a-f]{32})/out/(?P<path>.+)$", re.DOTALL)
# The longest object key any store holds, in UTF-8 bytes: S3's keys end at 1,024 bytes, and
# the filesystem store's file names at the system's path limit (PATH_MAX, 4,096 bytes on
# Linux, for the whole path under its folder), so every key a store lists fits in this.
MAX_KEY_BYTES = 4096
# The longest ID accepted: base64 with padding of the longest key in the legacy form,
# whose ``/uws/`` prefix makes it longer than the issued ``jobs/...`` one.
_MAX_ID_LENGTH = 4 * -(-(MAX_KEY_BYTES + len("/uws/")) // 3)


class ResultKey(NamedTuple):
    """A decoded result ID: the job it belongs to and its object key."""

    job_id: str
    relative_path: str

    @property
    def key(self) -> str:
        """The object key in the store."""
        return output_key(self.job_id, self.relative_path)


def encode_result_id(key: str) -> str:
    """URL-safe base64 without padding of an object key: the ID this service issues."""
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii").rstrip("=")


def is_safe_relative_path(path: str) -> bool:
    """True for a relative POSIX path with no empty, ``.`` or ``..`` segment and no controls."""
    if not path or path.startswith("/") or "\\" in path:
        return False
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        return False
    return all(segment not in ("", ".", "..") for segment in path.split("/"))


def decode_result_id(result_id: str) -> ResultKey:
    """Decode any accepted form of result ID, or raise ResultNotFoundError.

    Accepted: URL-safe base64 with or without padding, standard base64 (``+``, ``/``,
    ``=``), and the 2021 prototype's IDs, which encode an absolute path
    ``/uws/jobs/<jobId>/out/<file>``. Whatever the form, the result must name a file
    inside one job's output prefix; nothing else is ever resolved.
    """
    not_found = ResultNotFoundError(f"No result with ID {result_id[:100]!r}")
    if not result_id or len(result_id) > _MAX_ID_LENGTH:
        raise not_found
    text = result_id.strip().rstrip("=").replace("+", "-").replace("/", "_")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", text) or len(text) % 4 == 1:
        raise not_found
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise not_found from None
    match = _LEGACY_PATH.fullmatch(decoded) if decoded.startswith("/") else _KEY.fullmatch(decoded)
    if match is None or not is_safe_relative_path(match["path"]):
        raise not_found
    return ResultKey(match["job_id"], match["path"])
