"""The S3 object store: the only module that calls S3 (through boto3)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.handlers import add_expect_header

from ..errors import BackendUnavailableError
from .base import HashingReader, ObjectInfo, ObjectStream, guess_content_type

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Store"]

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
# Files below the threshold are read into memory for one PUT: at most this much per
# concurrent upload (8 in the sidecar), so 64 MiB for the uploader at worst.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}
# A conditional PUT that found the object (412), or lost a race for it (409).
_ALREADY_WRITTEN = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}


def _is_missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in _MISSING


class S3Store:
    """Objects in one bucket of any S3 endpoint; credentials from the usual AWS variables."""

    max_key_bytes: int | None = 1024  # S3's own limit (AWS, MinIO)

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        *,
        max_concurrency: int = 8,
        client: S3Client | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.bucket = bucket
        self._on_error = on_error  # told the action of every failed call (metrics)
        self._endpoint_url, self._region = endpoint_url, region
        self._probe_client: S3Client | None = None
        self.client: S3Client = client or self._upload_client(endpoint_url, region, max_concurrency)
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=PART_SIZE,
            max_concurrency=max_concurrency,
            use_threads=True,
        )

    @staticmethod
    def _upload_client(endpoint_url: str | None, region: str, max_concurrency: int) -> S3Client:
        """The store's own client: a connection for every concurrent upload and part."""
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                # Over plain HTTP botocore would hash every byte once more (SHA-256) to sign
                # the body, and the server would hash it again to check: the same as over
                # HTTPS instead, an unsigned body with a CRC32 checksum per request.
                s3={"addressing_style": "path", "payload_signing_enabled": False},
                max_pool_connections=max(10, max_concurrency * 2),
            ),
        )
        # botocore sends a file body (each multipart part) only after the server answered
        # ``Expect: 100-continue``: a round trip per part, in which the part's thread waits
        # for a busy server to be scheduled. The body goes with the headers instead, as
        # for the bytes of a small file; a refused request is retried all the same.
        client.meta.events.unregister("before-call.s3", add_expect_header)
        return client

    def _call(self, action: str, function: Any, **kwargs: Any) -> Any:
        try:
            return function(**kwargs)
        except ClientError:
            raise
        except BotoCoreError as error:
            log.warning("S3 %s failed: %s", action, error, extra={"bucket": self.bucket})
            if self._on_error is not None:
                self._on_error(action)
            raise BackendUnavailableError(f"Object store unavailable ({action})") from error

    def ensure_ready(self) -> None:
        """Create the bucket if it does not exist."""
        try:
            self._call("head bucket", self.client.head_bucket, Bucket=self.bucket)
        except ClientError as error:
            if not _is_missing(error):
                raise BackendUnavailableError(
                    f"Object store refused bucket {self.bucket}"
                ) from error
            self._call("create bucket", self.client.create_bucket, Bucket=self.bucket)

    def put_file(self, key: str, path: str, content_type: str) -> str:
        """Upload a file; the SHA-256 of its bytes, computed while they go up.

        Below the multipart threshold, one PUT of the bytes read once (``upload_file`` would
        start a transfer manager and its threads for every small file, which costs more
        than the upload). Above it, s3transfer uploads the parts concurrently, each read
        from the file by its own thread, while this thread reads the file once more for
        its checksum: the hashing overlaps the upload instead of preceding it.
        """
        try:
            with open(path, "rb") as source:
                reader = HashingReader(source)
                if os.fstat(source.fileno()).st_size < self.transfer.multipart_threshold:
                    self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=reader.read(), ContentType=content_type
                    )
                    return reader.hexdigest()
                with create_transfer_manager(self.client, self.transfer) as manager:
                    upload = manager.upload(
                        path, self.bucket, key, extra_args={"ContentType": content_type}
                    )
                    while reader.read(CHUNK_SIZE):
                        pass
                    upload.result()
                return reader.hexdigest()
        except (BotoCoreError, ClientError) as error:
            raise BackendUnavailableError(f"Upload of {key} failed: {error}") from error

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store a small object in one PUT."""
        try:
            self._call(
                "put",
                self.client.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
            )
        except ClientError as error:
            raise BackendUnavailableError(f"Upload of {key} failed: {error}") from error

    def put_if_absent(self, key: str, data: bytes, content_type: str) -> bool:
        """One conditional PUT (``If-None-Match: *``); False when the object exists."""
        try:
            self._call(
                "put if absent",
                self.client.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                IfNoneMatch="*",
            )
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code"))
            if code in _ALREADY_WRITTEN:
                return False
            raise BackendUnavailableError(f"Upload of {key} failed: {error}") from error
        return True

    def check_reachable(self) -> None:
        """One HEAD of the bucket, without retries and with short timeouts (readiness)."""
        if self._probe_client is None:
            self._probe_client = boto3.session.Session().client(
                "s3",
                endpoint_url=self._endpoint_url,
                region_name=self._region,
                config=Config(
                    retries={"max_attempts": 1, "mode": "standard"},
                    connect_timeout=1,
                    read_timeout=2,
                    s3={"addressing_style": "path"},
                ),
            )
        try:
            self._call("head bucket", self._probe_client.head_bucket, Bucket=self.bucket)
        except ClientError as error:
            raise BackendUnavailableError(
                f"Object store refused bucket {self.bucket}: {error}"
            ) from error

    def get_bytes(self, key: str) -> bytes | None:
        """Read a small object whole."""
        try:
            response = self._call("get", self.client.get_object, Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _is_missing(error):
                return None
            raise BackendUnavailableError(f"Read of {key} failed: {error}") from error
        body: bytes = response["Body"].read()
        return body

    def head(self, key: str) -> ObjectInfo | None:
        """Size and type of one object."""
        try:
            response = self._call("head", self.client.head_object, Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _is_missing(error):
                return None
            raise BackendUnavailableError(f"Read of {key} failed: {error}") from error
        return ObjectInfo(
            key,
            int(response["ContentLength"]),
            response.get("ContentType") or "application/octet-stream",
        )

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Objects under a prefix (sizes from the listing; types are not listed by S3)."""
        found = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    found.append(ObjectInfo(key, int(item["Size"]), guess_content_type(key)))
        except (BotoCoreError, ClientError) as error:
            raise BackendUnavailableError(f"Listing {prefix} failed: {error}") from error
        return found

    def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        """One listing call: at most ``limit`` (≤ 1000) keys after ``start_after``."""
        try:
            page = self.client.list_objects_v2(
                Bucket=self.bucket,
                Prefix=prefix,
                StartAfter=max(start_after, prefix),
                MaxKeys=max(1, min(limit, 1000)),
            )
        except (BotoCoreError, ClientError) as error:
            raise BackendUnavailableError(f"Listing {prefix} failed: {error}") from error
        return [item["Key"] for item in page.get("Contents", [])]

    def open(self, key: str, start: int = 0, end: int | None = None) -> ObjectStream | None:
        """Stream a byte range; the body is read in bounded chunks as the client consumes it."""
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or end is not None:
            arguments["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            response = self._call("get", self.client.get_object, **arguments)
        except ClientError as error:
            if _is_missing(error):
                return None
            if str(error.response.get("Error", {}).get("Code")) == "InvalidRange":
                return None
            raise BackendUnavailableError(f"Read of {key} failed: {error}") from error
        length = int(response["ContentLength"])
        content_range = response.get("ContentRange")
        total = int(content_range.rsplit("/", 1)[1]) if content_range else length
        info = ObjectInfo(key, total, response.get("ContentType") or "application/octet-stream")
        body = response["Body"]

        def chunks() -> Iterator[bytes]:
            received = 0
            for chunk in body.iter_chunks(CHUNK_SIZE):
                received += len(chunk)
                yield chunk
            if received != length:
                raise OSError(f"{key}: object store sent {received} of {length} bytes")

        return ObjectStream(info, start, start + length - 1, chunks(), body.close)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under a prefix, a thousand per request, and its partial uploads.

        A sidecar stopped mid-upload leaves a multipart upload whose parts the bucket keeps
        (and bills) but never lists as an object: a deleted job leaves none behind.
        """
        keys = [info.key for info in self.list_objects(prefix)]
        for first in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[first : first + 1000]]
            try:
                self._call(
                    "delete",
                    self.client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": batch, "Quiet": True},
                )
            except ClientError as error:
                raise BackendUnavailableError(f"Deleting {prefix} failed: {error}") from error
        self.remove_partial(prefix)

    def remove_partial(self, prefix: str) -> int:
        """Abort the multipart uploads under ``prefix`` that were never completed."""
        removed = 0
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        try:
            while True:
                page = self._call("list uploads", self.client.list_multipart_uploads, **request)
                for upload in page.get("Uploads", []):
                    self._call(
                        "abort upload",
                        self.client.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    )
                    removed += 1
                if not page.get("IsTruncated"):
                    return removed
                request["KeyMarker"] = page.get("NextKeyMarker", "")
                request["UploadIdMarker"] = page.get("NextUploadIdMarker", "")
        except ClientError as error:
            raise BackendUnavailableError(f"Removing partial uploads of {prefix} failed") from error

    def uri(self, key: str) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{key}"

    def presign(self, key: str, seconds: int, *, content_type: str, disposition: str) -> str | None:
        """A presigned GET of the object on the store's endpoint, valid for ``seconds``.

        Signed locally (no request): the object's existence is the caller's to check.
        """
        url: str = self._call(
            "presign",
            self.client.generate_presigned_url,
            ClientMethod="get_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ResponseContentType": content_type,
                "ResponseContentDisposition": disposition,
            },
            ExpiresIn=seconds,
        )
        return url
