"""``python -m ocps_jobs.uploader``: the uploader beside a job."""

from __future__ import annotations

import sys

from .main import main

__all__: list[str] = []

sys.exit(main())
