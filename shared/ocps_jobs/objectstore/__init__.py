"""Object stores for job outputs: S3 (boto3) or a folder with the same layout."""

from __future__ import annotations

from .base import ObjectInfo, ObjectStore, ObjectStream, guess_content_type

__all__ = ["ObjectInfo", "ObjectStore", "ObjectStream", "guess_content_type"]
