"""The period a query names: its memories rank first, on the real store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.memory.query_period import Period, named_period
from proxy.memory.retrieve import retrieve
from proxy.policy import MemoryPolicy
from storage import open_store
from storage.embedders import LocalEmbedder
from storage.records import NewMemory, Scope


@pytest.mark.parametrize(
    ("query", "period"),
    [
        ("When did Melanie go camping in June?", Period(None, 6, None)),
        ("What did she paint in July 2023?", Period(2023, 7, None)),
        ("What did Gina find on 1 February, 2023?", Period(2023, 2, 1)),
        ("What painting did she show on October 13, 2023?", Period(2023, 10, 13)),
        ("How many times has she been to the beach in 2023?", Period(2023, None, None)),
        ("What happened in early May?", Period(None, 5, None)),
    ],
)
def test_a_calendar_period_is_read_from_the_query(query: str, period: Period) -> None:
    assert named_period(query) == period


@pytest.mark.parametrize(
    "query",
    [
        "May I ask what you did last year?",  # "may" the verb; "last year" has no date to go by
        "What did she do before the wedding?",
        "What has she done since May?",  # a boundary, not a period
        "Which shops are in Mayfair?",
    ],
)
def test_no_period_is_read_where_none_is_named(query: str) -> None:
    assert named_period(query) is None


def _at(month: int, day: int) -> float:
    return datetime(2023, month, day, 12, tzinfo=UTC).timestamp()


async def test_memories_dated_on_the_named_day_rank_first(tmp_path: Path) -> None:
    """Four memories of one June; every one's index text holds "June 2023", so BM25 cannot
    tell them apart by it and the words decide (the 27th's shares none with the question),
    unless the day the question names does."""
    scope = Scope("acme", "mel")
    store = await open_store(tmp_path, LocalEmbedder())
    try:
        days = [
            ("We did a camping trip at the beach with the kids!", _at(6, 20)),
            (
                "The forest was quiet and lovely, we walked for hours under tall old trees and "
                "listened to the birds sing.",
                _at(6, 27),
            ),
            ("We did a pottery class together, what a day!", _at(6, 29)),
            ("We did a road trip to the coast, what a day!", _at(6, 12)),
        ]
        await store.memories.add(
            scope,
            [NewMemory(kind="fact", text=text, created_at=at, valid_from=at) for text, at in days],
        )
        policy = MemoryPolicy()
        ranked = await retrieve(store.memories, scope, "What did we do on 27 June 2023?", policy)
        assert ranked[0].record.text == days[1][0]
        plain = await retrieve(store.memories, scope, "What did we do in June 2023?", policy)
        assert plain[-1].record.text == days[1][0]  # in the month named, as all of them
    finally:
        await store.close()
