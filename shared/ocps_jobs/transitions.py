"""Phase-transition rules: what may be done to a job in each phase, and the limits' clamps.

The service applies them before it calls a backend; backends perform, they do not decide.

Abort: refused (409) only in a final phase other than ``aborted`` (aborting an aborted job
changes nothing). A job in ``unknown``, ``held`` or ``suspended`` may be aborted: its state
is not known to be final, so stopping whatever may still run is the safe answer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .errors import InvalidRequestError, PhaseConflictError
from .models import FINAL_PHASES, JobRecord, Phase

__all__ = [
    "DURATION_CHANGE_PHASES",
    "START_PHASES",
    "WAITABLE_PHASES",
    "abort_needed",
    "clamp_destruction",
    "clamp_execution_duration",
    "may_wait",
    "require_destruction_change",
    "require_duration_change",
    "start_needed",
]

# A job in these phases is waited on by UWS WAIT until it leaves them.
WAITABLE_PHASES = frozenset({Phase.PENDING, Phase.QUEUED, Phase.EXECUTING})
# Start queues a pending job; one already on its way is left as it is.
START_PHASES = frozenset({Phase.PENDING, Phase.QUEUED, Phase.EXECUTING})
# The execution duration is fixed once the job runs.
DURATION_CHANGE_PHASES = frozenset({Phase.PENDING, Phase.QUEUED, Phase.HELD})


def start_needed(record: JobRecord) -> bool:
    """True when the job must be queued (it is pending), False when it is already on its way.

    PhaseConflictError (409) in any other phase.
    """
    if record.phase not in START_PHASES:
        raise PhaseConflictError(f"Job {record.job_id} is {record.phase.value}; it cannot run")
    return record.phase is Phase.PENDING


def abort_needed(record: JobRecord) -> bool:
    """True when the job must be stopped, False when it is already aborted.

    PhaseConflictError (409) once it has ended otherwise (completed, error, archived).
    """
    if record.phase is Phase.ABORTED:
        return False
    if record.phase in FINAL_PHASES:
        raise PhaseConflictError(f"Job {record.job_id} is {record.phase.value}; it cannot abort")
    return True


def require_duration_change(record: JobRecord) -> None:
    """PhaseConflictError (409) once the job runs: its execution duration is fixed then."""
    if record.phase not in DURATION_CHANGE_PHASES:
        raise PhaseConflictError(
            f"Job {record.job_id} is {record.phase.value}; its execution duration is fixed"
        )


def require_destruction_change(when: datetime | None, now: datetime) -> None:
    """InvalidRequestError (400) for a time already past: a skewed clock must not destroy a job.

    The destruction time may change in every phase; None (never) is always accepted.
    """
    if when is not None and when <= now:
        raise InvalidRequestError("The destruction time must be in the future")


def may_wait(record: JobRecord, phase: Phase | None = None) -> bool:
    """True when UWS WAIT blocks on the job: it is waitable (and in ``phase`` when given)."""
    return record.phase in WAITABLE_PHASES and (phase is None or record.phase is phase)


def clamp_execution_duration(seconds: int, limit: int) -> int | None:
    """The execution duration a request for ``seconds`` (0 = unlimited) gets.

    With a ``limit`` (0 = none), more than it, or unlimited, becomes the limit. Unlimited is
    kept as None.
    """
    if limit and (seconds <= 0 or seconds > limit):
        seconds = limit
    return seconds if seconds > 0 else None


def clamp_destruction(when: datetime | None, created: datetime, limit: int) -> datetime | None:
    """The destruction time a request for ``when`` (None = never) gets, to the second.

    With a ``limit`` in seconds (0 = none), never or later than creation plus the limit
    becomes creation plus the limit.
    """
    if limit:
        latest = created + timedelta(seconds=limit)
        if when is None or when > latest:
            when = latest
    return None if when is None else when.astimezone(UTC).replace(microsecond=0)
