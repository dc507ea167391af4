"""A Python client of the OCPS JSON interface, replacing the 2021 prototype's client.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

import httpx

from .models import JOB_PARAMETERS, ParameterKind

__all__ = [
    "FINISHED_PHASES",
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

    def download(
        self,
        result_id: str,
        destination: Path,
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Stream one result to ``destination``; ``on_progress(done, total)`` per chunk."""
        partial = destination.with_name(destination.name + ".part")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            with self.http.stream("GET", f"/job/result/{_segment(result_id)}") as response:
                if response.is_error:
                    response.read()
                    _raise_for(response)
                total = int(response.headers.get("Content-Length", 0))
                done = 0
                with open(partial, "wb") as out:
                    for chunk in response.iter_bytes(1024 * 1024):
                        out.write(chunk)
                        done += len(chunk)
                        if on_progress is not None:
                            on_progress(done, total)
                if total and done != total:
                    raise ClientError(f"Download of {destination.name} ended after {done} bytes")
            partial.replace(destination)
        except httpx.HTTPError as error:
            partial.unlink(missing_ok=True)
            raise ClientError(f"Download failed: {error}") from error
        except OSError as error:  # the destination: a folder, not writable, a file in the way
            partial.unlink(missing_ok=True)
            raise ClientError(f"Cannot write {destination}: {error.strerror or error}") from error
        return destination


def _raise_for(response: httpx.Response) -> None:
    try:
        body = response.json()
        message, code = str(body.get("message", body)), body.get("error")
    except (ValueError, AttributeError):
        message, code = " ".join(response.text[:500].split()) or response.reason_phrase, None
    raise ClientError(f"HTTP {response.status_code}: {message}", response.status_code, code)
