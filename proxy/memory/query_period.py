"""The time a query names: the memories dated in it rank first.

"What did Melanie paint in July 2023?", "When did she go camping in June?", "What happened on
13 October 2023?": the question names a period, and the memories dated in it are the ones that
can answer. BM25 already matches the month's name against each memory's date in its index text
(`storage/index_text.py`), but a turn about the camping trip in May ranks beside the one in
June. So when the query names a month (after "in", "on", "during" …, or with a day or a year),
a day or a year, the candidates dated in that period (`valid_from`, else `created_at`) get as
much relevance again as a hit first for both retrievers has: they rank ahead of the others, in
their own order, and the budget sees it in their scores. Only an explicit calendar period
counts: "last year" or "before the wedding" is relative to a date the query does not give, so
it changes nothing. Measured on the LoCoMo dev questions that name a month or year
(docs/memory.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from proxy.policy import RetrievalSettings
from storage.records import MemoryRecord, SearchHit

_MONTHS = [
    *("january", "february", "march", "april", "may", "june", "july", "august"),
    *("september", "october", "november", "december"),
]
_MONTH = rf"(?P<month>{'|'.join(_MONTHS)})"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>(?:19|20)\d\d)"
_MENTIONS_DATE = re.compile(rf"\b(?:{_MONTH}|(?:19|20)\d\d)\b", re.I)
_TIME_PREPOSITION = r"(?:in|on|during|of|early|late|mid)"  # "since May" is no period
# A month named as a time: with a day or a year, or after a preposition of time ("may" alone is
# a verb as often as a month).
_PERIODS = [
    re.compile(rf"\b{_DAY}\s+{_MONTH},?\s+{_YEAR}\b", re.I),
    re.compile(rf"\b{_MONTH}\s+{_DAY},?\s+{_YEAR}\b", re.I),
    re.compile(rf"\b{_MONTH},?\s+{_YEAR}\b", re.I),
    re.compile(rf"\b{_TIME_PREPOSITION}\s+{_DAY}\s+{_MONTH}\b", re.I),
    re.compile(rf"\b{_TIME_PREPOSITION}\s+{_MONTH}(?:\s+{_DAY}\b)?\b", re.I),
    re.compile(rf"\b(?:in|during|of)\s+{_YEAR}\b", re.I),
]


@dataclass(frozen=True)
class Period:
    """A calendar period: a year, a month (of a year, or of any year), or a day."""

    year: int | None
    month: int | None
    day: int | None

    def holds(self, when: float) -> bool:
        """Whether the instant `when` (epoch seconds, UTC) falls in this period."""
        moment = datetime.fromtimestamp(when, UTC)
        return (
            (self.year is None or moment.year == self.year)
            and (self.month is None or moment.month == self.month)
            and (self.day is None or moment.day == self.day)
        )


def named_period(query: str) -> Period | None:
    """The first calendar period the query names, or None."""
    if not _MENTIONS_DATE.search(query):
        return None  # most queries name no month or year: one scan decides
    for pattern in _PERIODS:
        if match := pattern.search(query):
            found = match.groupdict()
            month = found.get("month")
            day = found.get("day")
            year = found.get("year")
            return Period(
                year=int(year) if year else None,
                month=_MONTHS.index(month.lower()) + 1 if month else None,
                day=int(day) if day and 1 <= int(day) <= 31 else None,
            )
    return None


def period_relevance(
    hits: Sequence[SearchHit], query: str, settings: RetrievalSettings
) -> dict[str, float]:
    """Relevance added to the hits dated in the period the query names, by memory id: as much
    as a hit first for both retrievers has, so they rank ahead of the rest; {} when the query
    names no period."""
    period = named_period(query)
    if period is None:
        return {}
    best = (settings.bm25_weight + settings.vector_weight) / (settings.rrf_k + 1)
    return {hit.record.id: best for hit in hits if dated_in(hit.record, period)}


def dated_in(record: MemoryRecord, period: Period) -> bool:
    """Whether the memory is dated in `period` (by when it held, else when it was written)."""
    when = record.valid_from if record.valid_from is not None else record.created_at
    try:
        return period.holds(when)
    except (OverflowError, OSError, ValueError):
        return False
