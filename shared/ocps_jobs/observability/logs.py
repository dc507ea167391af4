"""One logging configuration for every process: JSON lines or readable text, with fields.

Library code logs with the standard ``logging`` module and passes fields as
``extra={"job_id": ...}``; this module only decides where and how records are written.
It imports nothing but the standard library and python-json-logger, so the uploader
sidecar uses it too.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonLineFormatter",
    "TextFormatter",
    "configure_logging",
    "current_request_id",
    "flush_logging",
    "request_id_scope",
    "reset_logging",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("auto", "json", "text")

_HANDLER_NAME = "ocps-jobs"
# Libraries that would log request bodies and headers (job records, signed requests) at
# DEBUG: never below WARNING, whatever the level asked for.
_QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "kubernetes")
# Attributes every LogRecord has: anything else on a record is a field given with extra=.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

_request_id: ContextVar[str | None] = ContextVar("ocps_request_id", default=None)

_FLUSH_SECONDS = 0.1  # how long a line may wait for its batch
_handler: _BatchingHandler | None = None


def current_request_id() -> str | None:
    """The id of the request this thread is answering, if any."""
    return _request_id.get()


@contextmanager
def request_id_scope(request_id: str) -> Iterator[None]:
    """Every record logged inside carries ``request_id``."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


class _RequestIdFilter(logging.Filter):
    """Adds the current request id to records that do not carry one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__:
            request_id = _request_id.get()
            if request_id is not None:
                record.request_id = request_id
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        name: value
        for name, value in record.__dict__.items()
        if name not in _RECORD_ATTRIBUTES and not name.startswith("_")
    }


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``, for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line, then the record's fields as ``key=value``."""
        line = super().formatMessage(record)
        fields = _fields(record)
        if not fields:
            return line
        return line + " " + " ".join(f"{name}={value}" for name, value in fields.items())


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, fields."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            json_ensure_ascii=False,
        )


def configure_logging(
    level: str = "INFO", log_format: str = "auto", stream: TextIO | None = None
) -> logging.Handler:
    """Send every record at ``level`` and above to ``stream`` (stdout) in ``log_format``.

    ``auto`` is readable text when the stream is a terminal and JSON lines otherwise (as
    deployed). Called again, it replaces its own handler; other handlers are left alone.
    """
    level = level.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}")
    if log_format == "auto":
        log_format = (
            "text" if _is_terminal(stream if stream is not None else sys.stdout) else "json"
        )
    global _handler
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    _close_handler()
    handler = _BatchingHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(TextFormatter() if log_format == "text" else JsonLineFormatter())
    _handler = handler
    root.addHandler(handler)
    numeric = logging.getLevelName(level)
    root.setLevel(numeric)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    return handler


def flush_logging() -> None:
    """Return once every record logged so far has been written."""
    if _handler is not None:
        _handler.flush()


def reset_logging() -> None:
    """Undo ``configure_logging``: its handler written out, closed and removed."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    _close_handler()


def _close_handler() -> None:
    global _handler
    if _handler is not None:
        _handler.close()
        _handler = None


atexit.register(_close_handler)


class _BatchingHandler(logging.Handler):
    """Formats a record in the logging thread; a writer thread writes the lines in batches.

    A request thread never writes: a write releases the GIL, and with the embedded
    server's 20 ms switch interval, getting it back can wait that long behind other
    threads. Nor does it wake a thread per record (the cost of a queue and its listener).
    A forked child (gunicorn's worker, which functions-framework forks after main.py
    configured logging) gets a writer of its own: threads do not survive a fork.
    """

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._stream = stream  # None: whatever sys.stdout is when the batch is written
        self._lines: collections.deque[str] = collections.deque()
        self._start_writer()
        os.register_at_fork(after_in_child=_restart_in_child(weakref.ref(self)))

    def _start_writer(self) -> None:
        self._write_lock = threading.Lock()
        self._stopping = threading.Event()
        self._writer = threading.Thread(target=self._run, name="ocps-log-writer", daemon=True)
        self._writer.start()

    def after_fork(self) -> None:
        """In a forked child: the parent writes the lines it formatted; a writer for ours."""
        if self._stopping.is_set():
            return  # closed before the fork
        self._lines.clear()
        self._start_writer()

    def emit(self, record: logging.LogRecord) -> None:
        """Format now (the record's objects may change later), write with the next batch."""
        try:
            self._lines.append(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Write every line formatted so far."""
        with self._write_lock:
            batch = []
            while self._lines:
                batch.append(self._lines.popleft())
            if not batch:
                return
            stream = self._stream if self._stream is not None else sys.stdout
            try:
                stream.write("".join(batch))
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stdout: nothing else to tell it to

    def close(self) -> None:
        """Write what is left and stop the writer thread."""
        self._stopping.set()
        self._writer.join(timeout=2)
        self.flush()
        super().close()

    def _run(self) -> None:
        while not self._stopping.wait(_FLUSH_SECONDS):
            self.flush()


def _restart_in_child(handler: weakref.ref[_BatchingHandler]) -> Callable[[], None]:
    """What a forked child runs for ``handler`` (nothing once the handler is gone)."""

    def restart() -> None:
        alive = handler()
        if alive is not None:
            alive.after_fork()

    return restart


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
