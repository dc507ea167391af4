"""A large rendered response gives the memory freed while it was made back, once sent."""

from __future__ import annotations

import pytest
from flask import Response

from ocps_jobs.http import app


@pytest.fixture
def releases(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(app, "release_free_memory", lambda: calls.append(1))
    return calls


def test_a_large_response_releases_memory_once_it_is_closed(releases: list[int]) -> None:
    response = app._released_once_sent(Response(b"x" * app.RELEASE_AFTER_BYTES))
    assert releases == []  # not before it has been sent
    response.close()  # what the WSGI server does once the body is written
    assert releases == [1]


def test_small_and_streamed_responses_release_nothing(releases: list[int]) -> None:
    small = app._released_once_sent(Response(b"x" * (app.RELEASE_AFTER_BYTES - 1)))
    streamed = app._released_once_sent(Response(iter([b"x" * app.RELEASE_AFTER_BYTES])))
    small.close()
    streamed.close()
    assert releases == []
