"""The Kubernetes backend: the only package that calls the Kubernetes API.

``client`` wraps the API (one method per verb), ``views`` declares what is read of a Job
and a Pod (and so what the watch cache keeps), ``watch`` is the cache, ``status`` the phase
rules, ``spec`` the Job builder, ``archive`` the results and archived records, and
``backend`` the use cases over them.
"""

from __future__ import annotations

from .backend import KubernetesBackend
from .record import record_from_job

__all__ = ["KubernetesBackend", "record_from_job"]
