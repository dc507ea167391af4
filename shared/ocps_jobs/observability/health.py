"""Liveness and readiness: whether the process answers, and whether its parts do."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ..config import Settings
from ..errors import OCPSError

__all__ = ["Readiness", "check_readiness"]

log = logging.getLogger(__name__)


class _Checked(Protocol):
    """A backend or store with a readiness check (raises OCPSError when down)."""

    def check_ready(self) -> dict[str, Any]: ...


class _Store(Protocol):
    def check_reachable(self) -> None: ...


class Readiness:
    """The result of the checks: ``ready`` and a JSON-able report naming what failed."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report

    @property
    def ready(self) -> bool:
        """True when every part is up."""
        return not self.report["failing"]


def check_readiness(settings: Settings, backend: _Checked, store: _Store) -> Readiness:
    """Settings (already validated at start), the backend and the object store, each checked."""
    report: dict[str, Any] = {
        "settings": {
            "status": "ok",
            "backend": settings.backend,
            "namespace": settings.namespace if settings.backend == "kubernetes" else None,
            "bucket": settings.bucket,
            "object_store": settings.s3_endpoint
            or ("s3" if settings.backend == "kubernetes" else "folder"),
        }
    }
    failing: list[str] = []
    try:
        report["backend"] = {"status": "ok", **backend.check_ready()}
    except OCPSError as error:
        report["backend"] = {"status": "failing", "error": str(error)}
        failing.append("backend")
    try:
        store.check_reachable()
        report["object_store"] = {"status": "ok"}
    except OCPSError as error:
        report["object_store"] = {"status": "failing", "error": str(error)}
        failing.append("object_store")
    report["status"] = "not ready" if failing else "ready"
    report["failing"] = failing
    if failing:
        log.warning("not ready: %s", ", ".join(failing), extra={"failing": failing})
    return Readiness(report)
