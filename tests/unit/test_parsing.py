"""parse_natural: the decimal numbers the API takes in paths, queries and form fields."""

from __future__ import annotations

import pytest

from ocps_jobs.http.parsing import parse_natural


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("7", 7),
        (" 42 ", 42),
        ("007", 7),
        ("999999999999999999", 999_999_999_999_999_999),
        ("1" + "0" * 18, 10**18),  # past 18 digits: clamped, larger than any count here
        ("9" * 5000, 10**18),  # int() would refuse this many digits
        ("", None),
        ("-1", None),
        ("+1", None),
        ("1.0", None),
        ("1e3", None),
        ("0x10", None),
        ("\u0663", None),  # ARABIC-INDIC DIGIT THREE
        ("\uff11", None),  # FULLWIDTH DIGIT ONE
        ("1_000", None),
    ],
)
def test_parse_natural(text: str, expected: int | None) -> None:
    assert parse_natural(text) == expected
