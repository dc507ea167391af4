"""The API's list pages and watch events parsed without their objects' ``managedFields``.

Server-side apply's record of which manager set each field is about 40 % of every Job and
Pod the apiserver sends, and nothing here reads it (``views`` declares what is read). Cut
out of the bytes before parsing, it costs neither the parse nor the objects: among them a
key per object (``k:{"uid":...}`` of its owner) that the parser would otherwise keep in its
cache of keys, each one allocated in the middle of a page's objects and keeping their
allocator arena mapped once the page is freed.

The cut relies on what the apiserver writes: an object's fields in its Go type's order,
``metadata`` then ``spec`` (Jobs and Pods always have one), ``managedFields`` the last field
of ``metadata``, and inside it only keys that never read ``"spec"``. A ``"`` inside a JSON
string is always escaped, so neither marker can start inside a string. Anything else (no
``managedFields``, another order) is parsed as it came.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["loads", "without_managed_fields"]

_START = b',"managedFields":['
_END = b']},"spec":'


def without_managed_fields(data: bytes) -> bytes:
    """``data`` with each object's ``managedFields`` cut out (``data`` itself when none)."""
    parts: list[bytes] = []
    position = 0
    start = data.find(_START)
    while start >= 0:
        end = data.find(_END, start)
        following = data.find(_START, start + 1)
        if end < 0 or 0 <= following < end:  # not the shape described above: left whole
            return data
        parts.append(data[position:start])
        position = end + 1  # from the ``}`` that closes ``metadata``
        start = following
    if not parts:
        return data
    parts.append(data[position:])
    return b"".join(parts)


def loads(data: bytes) -> Any:
    """A page or an event of the API, parsed without its objects' ``managedFields``."""
    return orjson.loads(without_managed_fields(data))
