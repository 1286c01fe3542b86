"""What a memory's BM25 document says about time: its date, and its relative dates resolved.

A memory written on 8 May 2023 that says "I went to the support group yesterday" is found by
"in May 2023" or "on 7 May" only if its index text holds those words. So the document gets the
memory's own month and year, and every relative time expression it uses ("yesterday", "last
week", "next month", "two years ago") resolved against the memory's date into an absolute one
(day, month and year, or month and year, or year, as precise as the expression is). Only the
index text changes: what the memory shows is its own text, as written.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

_NUMBERS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "a couple of": 2,
    "a few": 3,
}
# A count is ASCII digits, at most four of them: "\d" would take any script's digits, and
# "99999999 days ago" lies before year 1, which `date` cannot hold.
_COUNT = r"(?P<n>[0-9]{1,4}|a couple of|a few|an?|one|two|three|four|five|six|seven|eight|nine|ten)"
_RELATIVE = re.compile(
    rf"\b(?:(?P<day>yesterday|today|tonight|tomorrow)"
    rf"|(?P<dir>last|next|this|past|coming) (?P<unit>week(?:end)?|month|year|summer|winter)"
    rf"|{_COUNT} (?P<ago_unit>day|week|month|year)s? ago)\b",
    re.IGNORECASE,
)


def dated_terms(text: str, when: float | None) -> list[str]:
    """Index words for `text` written at `when` (epoch seconds): its month and year, and the
    absolute date of each relative time expression in it."""
    if when is None:
        return []
    try:
        written = datetime.fromtimestamp(when, UTC).date()
    except (OverflowError, OSError, ValueError):
        return []
    terms = [_month(written)]
    for match in _RELATIVE.finditer(text):
        try:
            resolved = _resolve(match, written)
        except (OverflowError, ValueError):  # "tomorrow" of 31 December 9999: no such date
            continue
        if resolved and resolved not in terms:
            terms.append(resolved)
    return terms


def _resolve(match: re.Match[str], written: date) -> str | None:
    if day := match.group("day"):
        shift = {"yesterday": -1, "tomorrow": 1}.get(day.lower(), 0)
        return _day(written + timedelta(days=shift))
    if unit := match.group("unit"):
        step = {"last": -1, "past": -1, "next": 1, "coming": 1}.get(match.group("dir").lower(), 0)
        return _period(written, unit.lower(), step)
    count = match.group("n").lower()
    amount = _NUMBERS[count] if count in _NUMBERS else int(count)
    return _period(written, match.group("ago_unit").lower(), -amount)


def _period(written: date, unit: str, step: int) -> str:
    if unit == "day":
        return _day(written + timedelta(days=step))
    if unit in ("week", "weekend"):
        return _day(written + timedelta(weeks=step))
    if unit == "month":
        months = written.year * 12 + written.month - 1 + step
        return _month(date(months // 12, months % 12 + 1, 1))
    if unit == "year":
        return str(written.year + step)
    return f"{unit} {written.year + step}"  # a season


def _day(day: date) -> str:
    return f"{day.day} {day:%B %Y}"


def _month(day: date) -> str:
    return f"{day:%B %Y}"
