"""Request validation: what the CSC sends passes verbatim; everything else is refused."""

import pytest
from pydantic import ValidationError

from ocps_jobs.models import JobRequest, format_seed_time, utcnow


def test_csc_request_passes_byte_for_byte() -> None:
    command = "cd $JOB_SOURCE_DIR && bash bin/pipetask.sh"
    value = "a: b # not a comment\n'quoted' \"double\" $HOME `tick` \\ ünï"
    request = JobRequest.model_validate(
        {
            "command": command,
            "run_id": "ocps-42",
            "environment": [{"name": "PIPE_ARGS", "value": value}],
            "url": "https://github.com/lsst-dm/uws-api-server",
            "commit_ref": "tickets/DM-1234",
        }
    )
    assert request.command == command
    assert request.environment[0].value == value
    assert request.commit_ref == "tickets/DM-1234"


def test_defaults_and_nulls() -> None:
    request = JobRequest.model_validate(
        {
            "command": "true",
            "run_id": "",
            "url": "",
            "commit_ref": None,
            "environment": [{"name": "X", "value": None}],
        }
    )
    assert request.run_id is None and request.url is None and request.commit_ref is None
    assert request.environment[0].value == ""
    assert request.replicas == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"command": ""},
        {"command": 42},
        {"command": ["/bin/bash", "-c", "true"]},
        {"command": "true", "environment": {"A": "b"}},
        {"command": "true", "environment": [{"name": "1BAD", "value": "x"}]},
        {"command": "true", "environment": [{"name": "A=B", "value": "x"}]},
        {"command": "true", "environment": [{"name": "A", "value": "x", "extra": 1}]},
        {"command": "true", "environment": [{"name": "JOB_ID", "value": "x"}]},
        {"command": "true", "environment": [{"name": "JOB_OUTPUT_DIR", "value": "/"}]},
        {"command": "true", "environment": [{"name": "A", "value": "nul\x00byte"}]},
        {"command": "nul\x00byte"},
        {"command": "true", "url": "--upload-pack=touch /tmp/pwned"},
        {"command": "true", "url": "https://example.org/repo with space"},
        {"command": "true", "commit_ref": "--orphan"},
        {"command": "true", "commit_ref": "a..b:c"},
        {"command": "true", "run_id": "line\nbreak"},
        {"command": "true", "run_id": "x" * 256},
        {"command": "true", "replicas": 0},
        {"command": "true", "replicas": "2"},
        {"command": "true", "replicas": 1000},
        {"command": "true", "replicas": 1.5},
        {"command": "true", "replicas": True},
        {"command": "true", "replicas": float("nan")},
        {"command": "true", "replicas": 1e300},
        {"command": "true", "unknown_field": "x"},
        {"command": "x" * 70_000},
        # Limits are of UTF-8 bytes, what execve() takes, not of characters.
        {"command": "\u20ac" * 21_846},  # 65,538 bytes
        {"command": "true", "environment": [{"name": "A", "value": "\u00e9" * 16_385}]},
        {"command": "true", "run_id": "next\u2028line"},
        {"command": "true", "run_id": "c1\x85control"},
    ],
)
def test_bad_requests_are_refused(body: dict) -> None:
    with pytest.raises(ValidationError):
        JobRequest.model_validate(body)


def test_limits_at_their_byte_counts_are_accepted() -> None:
    assert JobRequest(command="\u20ac" * 21_845 + "x").command.endswith("x")  # 65,536 bytes
    request = JobRequest(command="true", environment=[{"name": "A", "value": "\u00e9" * 16_384}])
    assert len(request.environment[0].value.encode()) == 32_768


def test_an_integral_number_is_an_integer() -> None:
    # JSON Schema (and so the OpenAPI document) counts 2.0 as an integer.
    assert JobRequest.model_validate_json('{"command": "true", "replicas": 2.0}').replicas == 2
    assert JobRequest.model_validate({"command": "true", "replicas": 3.0}).replicas == 3


def test_seed_time_format() -> None:
    text = format_seed_time(utcnow())
    assert (
        text is not None
        and text.endswith("+00:00")
        and len(text) == len("2021-03-17 20:58:54+00:00")
    )
    assert format_seed_time(None) is None
