"""Object stores for job outputs: S3 (boto3) or a folder with the same layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import ObjectInfo, ObjectStore, ObjectStream, guess_content_type

__all__ = ["ObjectInfo", "ObjectStore", "ObjectStream", "guess_content_type", "open_store"]


def open_store(
    *,
    bucket: str,
    endpoint: str | None,
    region: str,
    folder: Path | None,
    on_error: Callable[[str], None] | None = None,
) -> ObjectStore:
    """The one rule that chooses the store: S3 given an endpoint or no folder, else the folder.

    Each store's module is imported only when chosen: a process that keeps its outputs in
    a folder never imports boto3. ``on_error`` is told of each S3 call that failed (its
    action), for the service's error counter.
    """
    if endpoint is None and folder is not None:
        from .filesystem import FilesystemStore

        return FilesystemStore(folder)
    from .s3 import S3Store

    return S3Store(bucket, endpoint, region, on_error=on_error)
