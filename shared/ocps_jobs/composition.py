"""The composition root: settings to object store, backend and service, one service per process."""

from __future__ import annotations

import threading

from .backends import JobBackend
from .config import Settings
from .objectstore import ObjectStore, open_store
from .observability.metrics import count_backend_error
from .service import JobService

__all__ = ["build_backend", "build_service", "build_store", "close_services"]


def build_store(settings: Settings) -> ObjectStore:
    """The store by the one rule: S3 on Kubernetes or given an endpoint, else a folder."""
    local_folder = settings.data_dir / "objects" / settings.bucket
    return open_store(
        bucket=settings.bucket,
        endpoint=settings.s3_endpoint or None,
        region=settings.s3_region,
        folder=None if settings.backend == "kubernetes" else local_folder,
        on_error=count_backend_error("s3"),
    )


def build_backend(settings: Settings, store: ObjectStore) -> JobBackend:
    """The configured backend."""
    if settings.backend == "kubernetes":
        from .backends.kubernetes import KubernetesBackend
        from .backends.kubernetes.spec_pod import check_pod_settings

        check_pod_settings(settings)
        return KubernetesBackend(settings, store)
    from .backends.local import LocalBackend

    return LocalBackend(settings, store)


_services: dict[str, JobService] = {}
_services_lock = threading.Lock()


def build_service(settings: Settings) -> JobService:
    """The service for these settings, one per process.

    Functions loaded into one process (the embedded server, in-process tests) share it,
    so that one local executor and one record cache serve all three.
    """
    key = settings.model_dump_json()
    with _services_lock:
        if key not in _services:
            store = build_store(settings)
            if settings.backend == "local":
                store.ensure_ready()
            _services[key] = JobService(settings, build_backend(settings, store), store)
        return _services[key]


def close_services() -> None:
    """Close every service of this process (tests, server shutdown)."""
    with _services_lock:
        services = list(_services.values())
        _services.clear()
    for service in services:
        service.close()
