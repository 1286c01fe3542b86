"""Whole numbers typed by people and clients: ASCII digits within a stated range, or None."""

from __future__ import annotations

import pytest

from storage.numbers import INT64_MAX, parse_whole_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        (" 42 ", 42),
        ("007", 7),
        ("9223372036854775807", INT64_MAX),
        ("0" * 30 + "5", 5),  # leading zeros are not magnitude
        ("9223372036854775808", None),  # one past SQLite's INTEGER
        ("9" * 5000, None),  # int() itself refuses over 4300 digits
        ("\u00b2", None),  # str.isdigit() says yes; int() raises
        ("\u0663", None),  # Arabic-Indic three: int() reads it, no client means it
        ("", None),
        ("-1", None),
        ("+1", None),
        ("1_000", None),
        ("1.0", None),
    ],
)
def test_only_ascii_digits_in_range_are_numbers(text: str, expected: int | None) -> None:
    assert parse_whole_number(text) == expected


def test_the_range_is_the_callers() -> None:
    assert parse_whole_number("1000", 1, 1000) == 1000
    assert parse_whole_number("1001", 1, 1000) is None
    assert parse_whole_number("0", 1, 1000) is None
