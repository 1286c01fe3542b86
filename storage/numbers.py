"""Whole numbers read from text a person or a client typed: settings, query parameters, ids.

`str.isdigit` is not the test for "a number `int` reads": it is true for "²" and other
superscripts, which `int` refuses (a ValueError deep in a request became a 500), and it sets no
bound, so a 30-digit id overflowed SQLite's 64-bit INTEGER. `parse_whole_number` accepts ASCII
digits only, within a range the caller states, and answers None for anything else, so each
caller refuses the text in its own words (a 400 naming the parameter, a one-line setting error).
"""

from __future__ import annotations

import re

INT64_MAX = 2**63 - 1  # SQLite's and PostgreSQL's largest INTEGER / BIGINT
_DIGITS = re.compile(r"[0-9]+")
_MOST_DIGITS = len(str(INT64_MAX))  # more significant digits than this cannot be in range


def parse_whole_number(text: str, low: int = 0, high: int = INT64_MAX) -> int | None:
    """`text` (surrounding whitespace ignored) as a whole number from `low` to `high`, or None
    when it is anything else: a sign, a fraction, a non-ASCII digit, out of range."""
    digits = text.strip()
    if not _DIGITS.fullmatch(digits) or len(digits.lstrip("0")) > _MOST_DIGITS:
        return None  # long text never reaches int(), which refuses over 4300 digits anyway
    value = int(digits)
    return value if low <= value <= high else None
