"""What the memory routes share: checks of the fields a client sends, each refusing a bad value
with a 400 that names the field and says what to send.

Values are checked at the door, before anything is stored: a timestamp that is not a finite
number of epoch seconds (or an ISO 8601 date-time, stored as epoch seconds) within years
1970-9999, or a number that JSON cannot carry back out
(NaN, ±Infinity), would otherwise be written and break every later read of the scope.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from proxy.errors import bad_request
from proxy.shapes import CLIENT_KINDS
from storage.api import MemoryStore
from storage.records import MEMORY_KINDS, MemoryKind

MAX_TEXT = 8000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_TIMESTAMP = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second a date can show


async def memory_cursor(store: MemoryStore, tenant_id: str, after: str | None) -> str | None:
    """A list's `after`, checked to name a memory of this tenant (else a 400 saying so)."""
    if after is not None and not await store.get_many(tenant_id, [after]):
        raise bad_request(
            f"'after' must be the last_id of a previous page; this tenant has no memory {after!r}.",
            param="after",
        )
    return after


LESSON_MESSAGE = (
    "Lessons are the sanitizer's own memory of attacks and cannot be written or edited through "
    "the API; they come from rejected memories and quarantine reviews "
    "(POST /v1/memories/quarantine/{id}/reject). Use kind fact, preference or case."
)


def client_kind(value: Any) -> MemoryKind:
    """A kind a client may write: any but `lesson`, which only the defence writes."""
    if value == "lesson":
        raise bad_request(LESSON_MESSAGE, param="kind")
    if value not in CLIENT_KINDS:
        raise bad_request(f"'kind' must be one of {', '.join(CLIENT_KINDS)}.", param="kind")
    return kind_field(value)


def kind_field(value: Any) -> MemoryKind:
    if value not in MEMORY_KINDS:
        raise bad_request(f"'kind' must be one of {', '.join(MEMORY_KINDS)}.", param="kind")
    kind: MemoryKind = value
    return kind


def memory_id_field(value: Any, field: str) -> str | None:
    """A memory id a client gives (an import's `id` and its version links): one that
    `/v1/memories/{id}` can name, so no '/', no control character (a line break) and no
    whitespace at its ends; at most 256 characters."""
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 256
        or value != value.strip()
        or "/" in value
        or _CONTROL.search(value)
    ):
        raise bad_request(
            f"'{field}' must be a memory id: 1-256 characters, without '/', control characters "
            "(such as a line break) or whitespace at either end.",
            param=field,
        )
    return value


def text_field(value: Any, field: str = "text") -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"'{field}' must be a non-empty string.", param=field)
    if len(value) > MAX_TEXT:
        raise bad_request(f"'{field}' is longer than {MAX_TEXT} characters.", param=field)
    if "\x00" in value:
        raise bad_request(f"'{field}' contains a NUL character (\\u0000); remove it.", param=field)
    return value.strip()


def object_field(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"'{field}' must be a JSON object.", param=field)
    return value


def strings_field(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise bad_request(f"'{field}' must be a list of strings.", param=field)
    return list(value)


def number_field(value: Any, field: str, low: float, high: float) -> float | None:
    """A finite number within [low, high], or None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"'{field}' must be a number.", param=field)
    if not (math.isfinite(value) and low <= value <= high):
        raise bad_request(f"'{field}' must be a number from {low:g} to {high:g}.", param=field)
    return float(value)


def timestamp_field(value: Any, field: str) -> float | None:
    """Epoch seconds, from a number or an ISO 8601 string (a date, or a date and time with
    or without an offset; without one it is UTC), from 1970 to the end of year 9999; None when
    absent."""
    if value is None:
        return None
    if isinstance(value, str):
        value = _iso_seconds(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_TIMESTAMP
    ):
        raise bad_request(
            f"'{field}' must be epoch seconds (a number from 0 to {MAX_TIMESTAMP:.0f}) or an "
            "ISO 8601 date-time such as 2024-05-01T12:00:00Z, from 1970 to the end of year 9999.",
            param=field,
        )
    return float(value)


def _iso_seconds(text: str) -> float | None:
    """The epoch seconds an ISO 8601 string names (naive = UTC), or None if it names none."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError):  # offsets that push it past year 1 or 9999
        return None
