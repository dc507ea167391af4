"""The logging configuration itself: formats, levels, fields, and its settings."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocps_jobs.config import Settings
from ocps_jobs.errors import SettingsError
from ocps_jobs.observability.logs import configure_logging, flush_logging, request_id_scope


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger back as it was (pytest's own handlers included)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_fields_and_the_request_id(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    log = logging.getLogger("ocps_jobs.test")
    with request_id_scope("req-1"):
        log.info("job created", extra={"job_id": "a" * 32, "user": "alice"})
    log.debug("not at INFO")
    try:
        raise RuntimeError("kaboom")
    except RuntimeError:
        log.exception("unexpected")
    flush_logging()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "job created"
    assert (first["level"], first["logger"]) == ("INFO", "ocps_jobs.test")
    assert (first["job_id"], first["user"], first["request_id"]) == ("a" * 32, "alice", "req-1")
    assert "request_id" not in second
    assert second["level"] == "ERROR"
    assert "RuntimeError: kaboom" in second["exc_info"]


def test_text_is_one_readable_line_with_key_values(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("debug", "text", stream)
    logging.getLogger("ocps_jobs.test").debug("job ended", extra={"job_id": "b", "phase": "error"})
    flush_logging()
    (line,) = stream.getvalue().splitlines()
    assert line.endswith("DEBUG ocps_jobs.test: job ended job_id=b phase=error")


def test_auto_is_json_off_a_terminal_and_a_second_call_replaces_the_first(
    restore_logging: None,
) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "auto", first)
    configure_logging("WARNING", "auto", second)
    log = logging.getLogger("ocps_jobs.test")
    log.info("dropped at WARNING")
    log.warning("kept")
    flush_logging()
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["message"] == "kept"
    # Clients that log request bodies at DEBUG never go below WARNING.
    configure_logging("DEBUG", "json", io.StringIO())
    assert logging.getLogger("botocore").level == logging.WARNING


def test_log_settings_are_checked_and_named() -> None:
    assert Settings(log_level="debug", log_format="JSON").log_level == "DEBUG"
    with pytest.raises(SettingsError, match="OCPS_LOG_LEVEL"):
        Settings.from_env(log_level="chatty")
    with pytest.raises(SettingsError, match="OCPS_LOG_FORMAT"):
        Settings.from_env(log_format="xml")


def test_a_forked_child_writes_its_lines_while_it_runs(
    restore_logging: None, tmp_path: Path
) -> None:
    # gunicorn forks its worker after functions-framework imported main.py, which
    # configured logging: the worker's lines must not wait for its exit (never, if killed).
    with (tmp_path / "out.log").open("w") as out:
        configure_logging("INFO", "json", out)
        logging.getLogger("ocps_jobs.test").info("from the parent")
        child = os.fork()
        if child == 0:  # pragma: no cover - the child process
            logging.getLogger("ocps_jobs.test").info("from the child")
            time.sleep(1.0)
            os._exit(0)  # no atexit flush: only the child's writer thread can have written
        os.waitpid(child, 0)
        flush_logging()
    messages = [
        json.loads(line)["message"] for line in (tmp_path / "out.log").read_text().splitlines()
    ]
    assert sorted(messages) == ["from the child", "from the parent"]  # each line once
