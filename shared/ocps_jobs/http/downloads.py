"""Streaming downloads of result files, with HTTP Range and safe headers."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from urllib.parse import quote

from flask import Request, Response

from ..errors import RangeNotSatisfiableError
from ..models import ResultFile
from ..service import JobService

__all__ = ["content_disposition", "download_response"]

# A browser could run these as active content from the service's origin: never inline.
_ACTIVE_TYPES = ("html", "xml", "svg", "javascript", "ecmascript", "xhtml", "pdf", "flash")
# Whole top-level types of documents holding other documents (``.mht``, ``.eml``: a web page
# inside a message, which some browsers render).
_CONTAINER_TYPES = ("message/", "multipart/")


def _is_active(content_type: str) -> bool:
    """Whether a browser could render the type as active content from this origin."""
    lowered = content_type.strip().lower()
    return lowered.startswith(_CONTAINER_TYPES) or any(word in lowered for word in _ACTIVE_TYPES)


def content_disposition(filename: str, content_type: str) -> str:
    """``attachment`` for anything a browser could render as active content, else ``inline``."""
    kind = "attachment" if _is_active(content_type) else "inline"
    fallback = "".join(
        char if char.isascii() and char.isprintable() and char not in '"\\;' else "_"
        for char in filename
    )
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _presigned_redirect(service: JobService, result: ResultFile) -> Response | None:
    settings = service.settings
    if not settings.presigned_downloads:
        return None
    url = service.store.presign(
        result.key,
        settings.presigned_url_seconds,
        content_type=result.content_type,
        disposition=content_disposition(posixpath.basename(result.key), result.content_type),
    )
    if url is None:
        return None
    # 307: the client repeats the same GET (its Range too) at the store.
    response = Response(status=307)
    response.headers["Location"] = url
    response.headers["Cache-Control"] = "private, no-store"
    return response


def download_response(service: JobService, result: ResultFile, request: Request) -> Response:
    """200 with the whole file or 206 with one range; the body streams in bounded chunks.

    With ``presigned_downloads``, a 307 to a short-lived presigned URL of the object
    instead, when the store has one: the file then does not pass through the function.
    """
    redirect = _presigned_redirect(service, result)
    if redirect is not None:
        return redirect
    size = result.size
    start, end, status = 0, None, 200
    requested = request.range if size > 0 else None
    if requested is not None:
        if requested.units != "bytes" or len(requested.ranges) != 1:
            # Another unit is ignored (RFC 9110 14.2); multipart ranges are not served.
            requested = None
        else:
            first, stop = requested.ranges[0]
            if first < 0 and stop is None:
                # The last -first bytes; all of them when the file is shorter (RFC 9110
                # 14.1.2), which werkzeug's range_for_length answers as unsatisfiable.
                bounds: tuple[int, int] | None = (max(size + first, 0), size)
            else:
                bounds = requested.range_for_length(size)
            if bounds is None:
                raise RangeNotSatisfiableError("The requested range is outside the file", size)
            start, end, status = bounds[0], bounds[1] - 1, 206
    stream = service.open_result(result, start, end)

    def body() -> Iterator[bytes]:
        try:
            yield from stream.chunks
        finally:
            stream.close()

    name = posixpath.basename(result.key)
    response = Response(body(), status=status, direct_passthrough=True)
    response.headers["Content-Type"] = result.content_type
    response.headers["Content-Length"] = str(stream.length)
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Content-Disposition"] = content_disposition(name, result.content_type)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, no-store"
    if status == 206:
        response.headers["Content-Range"] = f"bytes {stream.start}-{stream.end}/{size}"
    return response
