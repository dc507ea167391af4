"""The phase-transition rules, every (action, phase) pair, and the limits' clamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ocps_jobs.errors import InvalidRequestError, PhaseConflictError
from ocps_jobs.models import JobParameters, JobRecord, Phase
from ocps_jobs.transitions import (
    abort_needed,
    clamp_destruction,
    clamp_execution_duration,
    may_wait,
    require_destruction_change,
    require_duration_change,
    start_needed,
)

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
CONFLICT = "409"

# What each action answers in each phase: True/False as returned (True: the backend must
# act), None when it is allowed and returns nothing, CONFLICT when it is refused with 409.
RULES = {
    Phase.PENDING: {"start": True, "abort": True, "duration": None, "wait": True},
    Phase.QUEUED: {"start": False, "abort": True, "duration": None, "wait": True},
    Phase.EXECUTING: {"start": False, "abort": True, "duration": CONFLICT, "wait": True},
    Phase.HELD: {"start": CONFLICT, "abort": True, "duration": None, "wait": False},
    Phase.SUSPENDED: {"start": CONFLICT, "abort": True, "duration": CONFLICT, "wait": False},
    Phase.UNKNOWN: {"start": CONFLICT, "abort": True, "duration": CONFLICT, "wait": False},
    Phase.ABORTED: {"start": CONFLICT, "abort": False, "duration": CONFLICT, "wait": False},
    Phase.COMPLETED: {"start": CONFLICT, "abort": CONFLICT, "duration": CONFLICT, "wait": False},
    Phase.ERROR: {"start": CONFLICT, "abort": CONFLICT, "duration": CONFLICT, "wait": False},
    Phase.ARCHIVED: {"start": CONFLICT, "abort": CONFLICT, "duration": CONFLICT, "wait": False},
}
ACTIONS = {
    "start": start_needed,
    "abort": abort_needed,
    "duration": require_duration_change,
    "wait": may_wait,
}


def record_in(phase: Phase) -> JobRecord:
    return JobRecord(
        job_id="0" * 32,
        run_id="run",
        phase=phase,
        creation_time=NOW,
        parameters=JobParameters(command="true"),
    )


def test_the_table_covers_every_phase_and_action() -> None:
    assert set(RULES) == set(Phase)
    assert all(set(row) == set(ACTIONS) for row in RULES.values())


@pytest.mark.parametrize(
    ("phase", "action"), [(phase, action) for phase in Phase for action in ACTIONS]
)
def test_every_action_in_every_phase(phase: Phase, action: str) -> None:
    expected = RULES[phase][action]
    rule = ACTIONS[action]
    if expected == CONFLICT:
        with pytest.raises(PhaseConflictError) as raised:
            rule(record_in(phase))
        assert raised.value.status == 409
        assert phase.value in raised.value.message
    else:
        assert rule(record_in(phase)) is expected


@pytest.mark.parametrize("phase", list(Phase))
def test_wait_with_a_phase_guard_blocks_only_in_that_phase(phase: Phase) -> None:
    record = record_in(phase)
    assert may_wait(record, phase) is RULES[phase]["wait"]
    other = Phase.QUEUED if phase is not Phase.QUEUED else Phase.PENDING
    assert may_wait(record, other) is False


def test_destruction_changes_to_a_future_time_or_never_but_not_to_the_past() -> None:
    require_destruction_change(NOW + timedelta(seconds=1), NOW)
    require_destruction_change(None, NOW)
    for past in (NOW, NOW - timedelta(days=1)):
        with pytest.raises(InvalidRequestError) as raised:
            require_destruction_change(past, NOW)
        assert raised.value.status == 400


@pytest.mark.parametrize(
    ("seconds", "limit", "expected"),
    [
        (0, 0, None),
        (-5, 0, None),
        (30, 0, 30),
        (30, 60, 30),
        (60, 60, 60),
        (61, 60, 60),
        (0, 60, 60),
        (-1, 60, 60),
    ],
)
def test_clamp_execution_duration(seconds: int, limit: int, expected: int | None) -> None:
    assert clamp_execution_duration(seconds, limit) == expected


@pytest.mark.parametrize(
    ("when", "limit", "expected"),
    [
        (None, 0, None),
        (NOW + timedelta(hours=1, microseconds=7), 0, NOW + timedelta(hours=1)),
        (None, 3600, NOW + timedelta(hours=1)),
        (NOW + timedelta(hours=2), 3600, NOW + timedelta(hours=1)),
        (NOW + timedelta(minutes=5), 3600, NOW + timedelta(minutes=5)),
    ],
)
def test_clamp_destruction(when: datetime | None, limit: int, expected: datetime | None) -> None:
    assert clamp_destruction(when, NOW, limit) == expected


def test_clamp_destruction_is_in_utc() -> None:
    elsewhere = datetime(2030, 1, 1, 16, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    clamped = clamp_destruction(elsewhere, NOW, 0)
    assert clamped == datetime(2030, 1, 1, 14, 0, 0, tzinfo=UTC)
    assert clamped is not None and clamped.utcoffset() == timedelta(0)
