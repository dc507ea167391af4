"""The uploader: copies a job's outputs to the object store, manifest last (stdlib + boto3).

Its modules: ``contract`` (the variables and files it is told about), ``scan`` (the job's
files), ``names`` (their result names), ``upload`` (the Uploader), ``manifest`` (the manifest
format), ``record`` (the archived record) and ``main`` (``python -m ocps_jobs.uploader``).
Nothing is imported here, so that the contract stays cheap to import.
"""

from __future__ import annotations

__all__: list[str] = []
