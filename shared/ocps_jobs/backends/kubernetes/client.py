"""The project's own wrapper of the Kubernetes API: one method per verb, raw JSON, our errors.

Everything else in the package talks to Kubernetes through ``KubernetesApi``: requests go
out with the client's pool and credentials, answers come back as plain JSON (no client
models), and failures arrive as the project's errors (``Missing`` for a 404).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import orjson
import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from ...errors import BackendUnavailableError, InvalidRequestError, PayloadTooLargeError
from ...observability import metrics
from . import wire

__all__ = [
    "PAGE_SIZE",
    "REQUEST_TIMEOUT",
    "WATCH_SECONDS",
    "Kind",
    "KubernetesApi",
    "LogStream",
    "Missing",
    "WatchStream",
    "api_message",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

Kind = Literal["jobs", "pods"]

PAGE_SIZE = 500
REQUEST_TIMEOUT = (5, 30)
PROBE_TIMEOUT = (1, 2)  # a readiness probe's list: shorter than the probe's own timeout
# Each watch request ends after this long (the apiserver caps it too); it resumes at once.
WATCH_SECONDS = 300


class Missing(Exception):
    """The API answered 404."""


def api_message(error: ApiException) -> str:
    """The message of the API's Status body; the HTTP reason when the body is anything else."""
    try:
        status = orjson.loads(error.body or "{}")
    except ValueError:
        status = None
    message = status.get("message") if isinstance(status, dict) else None
    return str(message or error.reason)[:500]


class WatchStream:
    """The events of one watch request, parsed line by line; ``close`` ends it from outside."""

    def __init__(self, response: Any) -> None:
        self.response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        buffer = b""
        try:
            for segment in self.response.stream(amt=None, decode_content=False):
                buffer += segment
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        # Not kept in this frame: the consumer frees each event when done.
                        yield wire.loads(line)
        finally:
            self.response.release_conn()

    def close(self) -> None:
        """End the stream now (another thread may be reading it)."""
        self.response.shutdown()


class LogStream:
    """One container's log as the apiserver sends it; ``close`` ends it from outside."""

    def __init__(self, response: Any) -> None:
        self.response = response

    def chunks(self) -> Iterator[bytes]:
        """The bytes as they come; a followed log until the container ends or ``close``."""
        try:
            yield from self.response.stream(amt=None, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            log.info("a pod log stream ended: %s", error)
        finally:
            self.response.release_conn()

    def close(self) -> None:
        """End the stream now (another thread may be reading it)."""
        self.response.shutdown()


class KubernetesApi:
    """The namespace's Jobs and Pods as the backend uses them, through one ApiClient."""

    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.batch = k8s.BatchV1Api(api)
        self.core = k8s.CoreV1Api(api)

    # --- requests and their errors --------------------------------------------------------

    def call(self, action: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function`` with the request timeout; API failures as the project's errors."""
        try:
            return function(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as error:
            if error.status == 404:
                raise Missing from None
            if error.status == 413:
                raise PayloadTooLargeError("Kubernetes refused the Job as too large") from None
            if error.status in (400, 422):
                reason = api_message(error)
                raise InvalidRequestError(f"Kubernetes refused the job: {reason}") from None
            log.warning("Kubernetes %s failed: %s %s", action, error.status, error.reason)
            metrics.BACKEND_ERRORS.labels("kubernetes", action).inc()
            raise BackendUnavailableError(
                f"Kubernetes unavailable ({action}: {error.status} {error.reason})"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            log.warning("Kubernetes %s failed: %s", action, error)
            metrics.BACKEND_ERRORS.labels("kubernetes", action).inc()
            raise BackendUnavailableError(f"Kubernetes unavailable ({action})") from None

    def raw(self, action: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call without deserializing into client models: plain JSON is much faster."""
        response = self.call(action, function, *args, _preload_content=False, **kwargs)
        return orjson.loads(response.data)

    def _page(self, action: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A list page, raw, its objects without ``managedFields`` (``wire``)."""
        response = self.call(action, function, *args, _preload_content=False, **kwargs)
        return wire.loads(response.data)

    def _lister(self, kind: Kind) -> Callable[..., Any]:
        if kind == "jobs":
            return self.batch.list_namespaced_job
        return self.core.list_namespaced_pod

    # --- the verbs --------------------------------------------------------------------------

    def create_job(self, body: bytes) -> dict[str, Any]:
        """POST a Job already serialized, with the client's connection pool and credentials.

        The generated ``create_*`` methods validate their arguments and walk the model to
        serialize it: in process, more than the HTTP exchange itself. The client's pool
        manager carries its TLS and proxy settings, ``update_params_for_auth`` its token.
        """
        path = f"/apis/batch/v1/namespaces/{self.namespace}/jobs"
        headers = {
            **self.api.default_headers,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.api.update_params_for_auth(headers, [], ["BearerToken"], path, "POST", body)
        url = self.api.configuration.host + path

        def post(_request_timeout: tuple[float, float]) -> Any:
            connect, read = _request_timeout
            response = self.api.rest_client.pool_manager.request(
                "POST",
                url,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(connect=connect, read=read),
            )
            if not 200 <= response.status <= 299:  # raises the status's ApiException, for call
                ApiException.from_response(http_resp=response, body=None, data=None)
            return response

        created: dict[str, Any] = orjson.loads(self.call("create job", post).data)
        return created

    def probe(self) -> None:
        """One small list of Jobs with a probe's short timeout (readiness)."""

        def list_one(_request_timeout: object) -> Any:
            return self.batch.list_namespaced_job(
                self.namespace, limit=1, _preload_content=False, _request_timeout=PROBE_TIMEOUT
            )

        self.call("list jobs", list_one)

    def read_job(self, name: str) -> dict[str, Any] | None:
        """The Job, or None when there is none."""
        try:
            job: dict[str, Any] = self.raw(
                "read job", self.batch.read_namespaced_job, name, self.namespace
            )
        except Missing:
            return None
        return job

    def patch_job(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """The Job after a strategic merge patch; ``Missing`` when there is none."""
        patched: dict[str, Any] = self.raw(
            "patch job", self.batch.patch_namespaced_job, name, self.namespace, body
        )
        return patched

    def delete_job(self, name: str) -> None:
        """Delete the Job, its Pods in the background; ``Missing`` when there is none."""
        self.call(
            "delete job",
            self.batch.delete_namespaced_job,
            name,
            self.namespace,
            propagation_policy="Background",
        )

    def pod_log(self, name: str, container: str, *, follow: bool) -> LogStream | None:
        """The container's log (``pods/log``); None while it cannot have one (not started).

        ``Missing`` when the pod is gone. A followed log ends when the container does, or
        when the caller closes it.
        """
        try:
            response = self.core.read_namespaced_pod_log(
                name,
                self.namespace,
                container=container,
                follow=follow,
                _preload_content=False,
                # A follow lasts at most a WAIT (its caller closes it): no read timeout short
                # of that may cut a quiet log.
                _request_timeout=(REQUEST_TIMEOUT[0], WATCH_SECONDS + 30)
                if follow
                else REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status == 404:
                raise Missing from None
            if error.status == 400:  # "waiting to start", "ContainerCreating"
                return None
            log.warning("Kubernetes pod log failed: %s %s", error.status, error.reason)
            raise BackendUnavailableError(
                f"Kubernetes unavailable (pod log: {error.status} {error.reason})"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            log.warning("Kubernetes pod log failed: %s", error)
            raise BackendUnavailableError("Kubernetes unavailable (pod log)") from None
        return LogStream(response)

    def list_pages(self, kind: Kind, selector: str) -> Iterator[dict[str, Any]]:
        """The pages of one list, raw but for ``managedFields``, in order.

        The last page carries the list's resourceVersion.
        """
        function = self._lister(kind)
        token = None
        while True:
            page: dict[str, Any] = self._page(
                f"list {kind}",
                function,
                self.namespace,
                label_selector=selector,
                limit=PAGE_SIZE,
                _continue=token,
            )
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def list(self, kind: Kind, selector: str) -> list[dict[str, Any]]:
        """Every object of one list, raw."""
        return [
            item for page in self.list_pages(kind, selector) for item in page.get("items") or []
        ]

    def watch(self, kind: Kind, selector: str, version: str) -> WatchStream:
        """The changes since ``version``, bookmarks included, for at most ``WATCH_SECONDS``."""
        response = self._lister(kind)(
            self.namespace,
            label_selector=selector,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(5, WATCH_SECONDS + 30),
        )
        return WatchStream(response)

    def close(self) -> None:
        """Release the connection pool."""
        self.api.close()
