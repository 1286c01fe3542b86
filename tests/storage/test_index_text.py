"""Index text: a memory is found by the dates it speaks of, resolved against its own date."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from storage import EmbeddedStore, open_store
from storage.embedders import LocalEmbedder
from storage.index import LAYOUT_FILE
from storage.index_text import dated_terms
from storage.records import NewMemory, Scope

MAY_8 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC).timestamp()
JUNE_20 = datetime(2023, 6, 20, 9, 0, tzinfo=UTC).timestamp()
SCOPE = Scope("acme", "ann")


def test_relative_times_resolve_against_the_memory_date() -> None:
    text = "Yesterday was great; last month was hard, next year too. We met two weeks ago."
    assert dated_terms(text, MAY_8) == [
        "May 2023",
        "7 May 2023",
        "April 2023",
        "2024",
        "24 April 2023",
    ]
    assert dated_terms(text, None) == []


END_OF_9999 = datetime(9999, 12, 31, 23, 59, tzinfo=UTC).timestamp()  # the API's latest date


def test_a_date_no_calendar_holds_is_left_out() -> None:
    # "99999999 days ago" lies before year 1 and "tomorrow" of the API's latest date after
    # 9999: `date` raised OverflowError, and the memory could not be written.
    assert dated_terms("I moved here 99999999 days ago.", MAY_8) == ["May 2023"]
    assert dated_terms("See you tomorrow, and next month.", END_OF_9999) == ["December 9999"]
    assert dated_terms("I left 9999 days ago.", MAY_8) == ["May 2023", "22 December 1995"]
    # A count is ASCII digits: another script's "3" is not read as a number of days.
    assert dated_terms("I left \u0663 days ago.", MAY_8) == ["May 2023"]


async def test_a_memory_speaking_of_an_impossible_date_is_stored(store: EmbeddedStore) -> None:
    memories = [
        NewMemory(kind="fact", text="I moved here 99999999 days ago.", created_at=MAY_8),
        NewMemory(kind="fact", text="See you tomorrow.", created_at=END_OF_9999),
    ]
    added = await store.memories.add(SCOPE, memories)
    assert [m.status for m in added] == ["active", "active"]
    assert await _bm25(store, "moved here") == ["I moved here 99999999 days ago."]


async def _add(store: EmbeddedStore) -> None:
    await store.memories.add(
        SCOPE,
        [
            NewMemory(kind="fact", text="I went to a support group yesterday.", created_at=MAY_8),
            NewMemory(kind="fact", text="I painted a lake at sunrise.", created_at=JUNE_20),
        ],
    )


async def _bm25(store: EmbeddedStore, query: str) -> list[str]:
    hits = await store.memories.search(SCOPE, query_text=query, k=5)
    ranked = sorted((h for h in hits if h.bm25_rank is not None), key=lambda h: h.bm25_rank or 0)
    return [hit.record.text for hit in ranked]


async def test_bm25_finds_a_memory_by_the_dates_it_speaks_of(store: EmbeddedStore) -> None:
    await _add(store)
    assert await _bm25(store, "7 May") == ["I went to a support group yesterday."]
    assert await _bm25(store, "June") == ["I painted a lake at sunrise."]
    # What is shown is the memory's own text.
    listed = await store.memories.list(SCOPE)
    assert sorted(m.text for m in listed) == sorted(
        ["I went to a support group yesterday.", "I painted a lake at sunrise."]
    )


async def test_an_index_from_before_dated_texts_is_rebuilt(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    folder = tmp_path / "data"
    store = await open_store(folder, local_embedder)
    await _add(store)
    await store.close()
    layout = next(folder.rglob(LAYOUT_FILE))
    old = {**json.loads(layout.read_text()), "layout": "table-per-tenant/1"}
    layout.write_text(json.dumps(old))
    reopened = await open_store(folder, local_embedder)
    try:
        assert await _bm25(reopened, "7 May") == ["I went to a support group yesterday."]
    finally:
        await reopened.close()
