"""The start of a function: settings read and checked once, logging configured.

Each ``functions/*/main.py`` calls ``start_function`` as its first statement: under
functions-framework (gunicorn) loading main.py *is* the start of the process, and a
process that exits there never listens, so Knative never routes to the broken revision.
"""

from __future__ import annotations

import logging
import sys

from ..config import Settings
from ..errors import SettingsError
from .logs import configure_logging, flush_logging

__all__ = ["EXIT_BAD_SETTINGS", "start_function"]

EXIT_BAD_SETTINGS = 78  # EX_CONFIG (sysexits.h)

log = logging.getLogger("ocps_jobs.startup")


def start_function(name: str) -> Settings:
    """The settings, validated; a bad one logs one line naming it and exits the process."""
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        configure_logging()
        log.critical("%s does not start: %s", name, error, extra={"function": name})
        flush_logging()
        sys.stdout.flush()
        # functions-framework loads main.py in its first process, before gunicorn starts
        # (or its development server): the process exits, nothing ever listens.
        raise SystemExit(EXIT_BAD_SETTINGS) from None
    configure_logging(settings.log_level, settings.log_format)
    log.info("%s starting", name, extra={"function": name, "backend": settings.backend})
    return settings
