"""What a request's access line gathers on the way: route, caller and job (stdlib only)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["RequestNotes", "note_request", "request_notes"]


@dataclass
class RequestNotes:
    """What the dispatcher and the use cases learn about a request."""

    route: str | None = None
    user: str | None = None
    job_id: str | None = None


_notes: ContextVar[RequestNotes | None] = ContextVar("ocps_request_notes", default=None)


@contextmanager
def request_notes() -> Iterator[RequestNotes]:
    """Collect the notes of the request answered inside."""
    notes = RequestNotes()
    token = _notes.set(notes)
    try:
        yield notes
    finally:
        _notes.reset(token)


def note_request(
    *, route: str | None = None, user: str | None = None, job_id: str | None = None
) -> None:
    """Add the route template, caller identity or job id to the current access line."""
    notes = _notes.get()
    if notes is None:
        return
    if route is not None:
        notes.route = route
    if user is not None:
        notes.user = user
    if job_id is not None:
        notes.job_id = job_id
