"""A Python client of the OCPS JSON interface, replacing the 2021 prototype's client.py."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

import httpx

from .models import (
    JOB_PARAMETERS,
    LOG_REPLICAS_HEADER,
    LOG_SKIPPED_HEADER,
    LogQuery,
    ParameterKind,
)

__all__ = [
    "FINISHED_PHASES",
    "ChecksumMismatchError",
    "ClientError",
    "InvalidArgumentError",
    "OCPSClient",
    "WaitTimeoutError",
]

# The keyword parameters of submit, with their defaults: all but command and environment.
_OPTIONAL_PARAMETERS = {
    parameter.name: parameter.default
    for parameter in JOB_PARAMETERS
    if not parameter.required and parameter.kind is not ParameterKind.ENVIRONMENT
}

# The CSC's notion of finished: it stops waiting on these.
FINISHED_PHASES = frozenset({"completed", "error", "aborted", "unknown", "archived"})


class ClientError(Exception):
    """The service answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class InvalidArgumentError(ClientError):
    """A URL, token or ID that no request can be made with."""


class WaitTimeoutError(ClientError):
    """The job had not finished when the wait's time ran out."""


class ChecksumMismatchError(ClientError):
    """A downloaded file's SHA-256 is not the manifest's: the file is kept aside, not used."""

    def __init__(self, message: str, kept: Path) -> None:
        super().__init__(message)
        self.kept = kept


_REPLICA_MARK = re.compile(r"^\[(\d+)\] ")
# A follow that the service ended before the job did is resumed after this pause.
RECONNECT_SECONDS = 0.5
DOWNLOAD_CHUNK = 1024 * 1024


def _segment(value: str) -> str:
    """A job or result ID as one path segment, whatever it holds (``?``, ``/``, ``#``)."""
    if value in ("", ".", ".."):  # would name the list, or its parent, not one item
        raise InvalidArgumentError(f"{value!r} is not a job or result ID")
    return quote(value, safe="")


class OCPSClient:
    """Submit, list, wait on, download and abort jobs over ``/api/v1``."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if token and not token.isascii():
            raise InvalidArgumentError("The token must be ASCII text")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            self.http = httpx.Client(
                base_url=base_url.rstrip("/") + "/api/v1",
                headers=headers,
                timeout=timeout,
                transport=transport,
            )
        except httpx.InvalidURL as error:
            raise InvalidArgumentError(f"Not a URL: {base_url!r} ({error})") from None

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> OCPSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise ClientError(f"Cannot reach {self.http.base_url}: {error}") from error
        if response.is_error:
            _raise_for(response)
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"{self.http.base_url} answered {response.status_code} with something that is "
                "not JSON: is it an OCPS job manager?"
            ) from None

    def submit(
        self,
        command: str,
        *,
        environment: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        **parameters: str | int | None,
    ) -> dict[str, Any]:
        """Create a job; the job object.

        ``parameters`` are the other job parameters by their JSON names (``JOB_PARAMETERS``:
        ``run_id``, ``url``, ``commit_ref``, ``replicas``, ...); one left None, empty or at
        its default is not sent.
        """
        unknown = sorted(set(parameters) - _OPTIONAL_PARAMETERS.keys())
        if unknown:
            raise InvalidArgumentError(f"Unknown job parameter(s): {', '.join(unknown)}")
        pairs = environment.items() if isinstance(environment, Mapping) else environment
        body: dict[str, Any] = {
            "command": command,
            "environment": [{"name": name, "value": value} for name, value in pairs],
        }
        for name, value in parameters.items():
            if value is not None and value != "" and value != _OPTIONAL_PARAMETERS[name]:
                body[name] = value
        result: dict[str, Any] = self._request("PUT", "/job", json=body)
        return result

    def list_jobs(self, phase: str | None = None) -> list[dict[str, Any]]:
        """Jobs, oldest first, optionally of one phase."""
        params = {"phase": phase} if phase else None
        result: list[dict[str, Any]] = self._request("GET", "/job", params=params)
        return result

    def list_page(
        self, phase: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of jobs, newest first, and the cursor of the next page (None: the last)."""
        params = {"limit": str(limit), "phase": phase or "", "cursor": cursor or ""}
        params = {name: value for name, value in params.items() if value}
        try:
            response = self.http.request("GET", "/job", params=params)
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise ClientError(f"Cannot reach {self.http.base_url}: {error}") from error
        if response.is_error:
            _raise_for(response)
        following = response.links.get("next", {}).get("url")
        found = parse_qs(urlparse(following).query).get("cursor") if following else None
        jobs: list[dict[str, Any]] = response.json()
        return jobs, found[0] if found else None

    def get(self, job_id: str) -> dict[str, Any]:
        """One job object."""
        result: dict[str, Any] = self._request("GET", f"/job/{_segment(job_id)}")
        return result

    def phase(self, job_id: str) -> str:
        """The job's phase, lower-case."""
        result: str = self._request("GET", f"/job/{_segment(job_id)}/phase")
        return result

    def results(self, job_id: str) -> list[dict[str, Any]]:
        """``[{id, uri, size, mimeType}]``."""
        result: list[dict[str, Any]] = self._request("GET", f"/job/{_segment(job_id)}/results")
        return result

    def abort(self, job_id: str) -> dict[str, Any]:
        """Stop and remove the job (``DELETE``, as the CSC does)."""
        result: dict[str, Any] = self._request("DELETE", f"/job/{_segment(job_id)}")
        return result

    def wait(
        self,
        job_id: str,
        *,
        poll_seconds: float = 0.5,
        timeout: float | None = None,
        on_phase: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Poll as the CSC does until the job is finished; the final job object."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            phase = self.phase(job_id)
            if phase != last and on_phase is not None:
                on_phase(phase)
            last = phase
            if phase in FINISHED_PHASES:
                return self.get(job_id)
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeoutError(f"Job {job_id} still {phase} after {timeout} s")
            time.sleep(poll_seconds)

    def logs(
        self,
        job_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        reconnect_seconds: float = RECONNECT_SECONDS,
    ) -> Iterator[str]:
        """The job's log line by line; ``follow`` until the job ends, reconnecting as needed.

        The service ends a follow after its WAIT cap (a function's request timeout must not
        cut it); the next request asks for the lines after those already had, per replica.
        """
        had: dict[int, int] = {}
        query = LogQuery(tail=tail, follow=follow)
        while True:
            cut = False
            try:
                with self.http.stream(
                    "GET",
                    f"/job/{_segment(job_id)}/log",
                    params=query.query_parameters(),
                    timeout=httpx.Timeout(self.http.timeout.connect, read=None),
                ) as response:
                    if response.is_error:
                        response.read()
                        _raise_for(response)
                    marked = LOG_REPLICAS_HEADER in response.headers
                    skipped = response.headers.get(LOG_SKIPPED_HEADER, "")
                    for index, count in enumerate(skipped.split(",") if skipped else []):
                        had[index] = max(had.get(index, 0), int(count))
                    for line in _lines(response.iter_bytes()):
                        mark = _REPLICA_MARK.match(line) if marked else None
                        stream = int(mark[1]) if mark else 0
                        had[stream] = had.get(stream, 0) + 1
                        yield line
            except httpx.TransportError as error:  # cut on the way: resume where it was
                if not follow:
                    raise ClientError(f"Reading the log failed: {error}") from error
                cut = True
            if not follow:
                return
            if not cut and self.phase(job_id) in FINISHED_PHASES:
                # The service ends a follow when the job ends, after its last lines.
                return
            time.sleep(reconnect_seconds)
            skip = tuple(had.get(index, 0) for index in range(max(had, default=-1) + 1))
            query = LogQuery(follow=True, skip=skip)

    def download(
        self,
        result_id: str,
        destination: Path,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        sha256: str = "",
    ) -> Path:
        """Stream one result to ``destination``; ``on_progress(done, total)`` per chunk.

        A ``.part`` file left by an interrupted download is resumed with a Range request.
        With ``sha256`` (the manifest's), a file that does not match is an error
        (``ChecksumMismatchError``) and is kept aside as ``<name>.mismatch``.
        """
        partial = destination.with_name(destination.name + ".part")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            have = partial.stat().st_size if partial.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            # A service may redirect to a presigned object-store URL: the Range goes along.
            with self.http.stream(
                "GET",
                f"/job/result/{_segment(result_id)}",
                headers=headers,
                follow_redirects=True,
            ) as response:
                if response.status_code == 416 and have:  # the part is the whole file already
                    response.read()
                elif response.is_error:
                    response.read()
                    _raise_for(response)
                else:
                    self._receive(response, partial, have, destination.name, on_progress)
            if sha256:
                _verify(partial, destination, sha256)
            partial.replace(destination)
        except httpx.HTTPError as error:
            raise ClientError(
                f"Download failed: {error} (run it again to resume from {partial})"
            ) from error
        except OSError as error:  # the destination: a folder, not writable, a file in the way
            partial.unlink(missing_ok=True)
            raise ClientError(f"Cannot write {destination}: {error.strerror or error}") from error
        return destination

    @staticmethod
    def _receive(
        response: httpx.Response,
        partial: Path,
        have: int,
        name: str,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        """Write a 200 (from the start) or a 206 (after ``have`` bytes) to the part file."""
        resumed = response.status_code == 206
        done = have if resumed else 0
        length = int(response.headers.get("Content-Length", 0))
        total = done + length if length else 0
        with open(partial, "ab" if resumed else "wb") as out:
            for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done, total)
        if total and done != total:
            raise ClientError(
                f"Download of {name} ended after {done} of {total} bytes "
                f"(run it again to resume from {partial})"
            )


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    r"""The text lines of a log answer, split at newlines only (a ``\\r`` stays in its line)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")


def _verify(partial: Path, destination: Path, sha256: str) -> None:
    """ChecksumMismatchError, the file moved aside, unless ``partial`` has that SHA-256."""
    digest = _sha256_of(partial)
    if digest == sha256.lower():
        return
    kept = destination.with_name(destination.name + ".mismatch")
    partial.replace(kept)
    raise ChecksumMismatchError(
        f"{destination.name}: SHA-256 {digest} is not the manifest's {sha256}; "
        f"the file is kept as {kept}",
        kept,
    )


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(DOWNLOAD_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _raise_for(response: httpx.Response) -> None:
    try:
        body = response.json()
        message, code = str(body.get("message", body)), body.get("error")
    except (ValueError, AttributeError):
        message, code = " ".join(response.text[:500].split()) or response.reason_phrase, None
    raise ClientError(f"HTTP {response.status_code}: {message}", response.status_code, code)
