"""Where jobs run: local processes (the embedded default) or Kubernetes Jobs."""

from __future__ import annotations

from .base import JobBackend, JobUpdate

__all__ = ["JobBackend", "JobUpdate"]
