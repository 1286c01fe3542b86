"""Each record keeps its BM25 document (`search_text`), made when it is written: loading a
scope's copy or an index batch reads it instead of making it again. What it is made from
(text, key text, keywords, tags and the memory's date) changes it; so does a new index text."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from storage import EmbeddedStore, open_store
from storage.embedders import LocalEmbedder
from storage.index_schema import INDEX_TEXT_VERSION
from storage.records import MemoryRecord, NewMemory, Scope
from storage.sqlite.outbox import SEARCH_TEXT_META, record_search_text
from tests.postgres_server import BOTH_DATABASES

pytestmark = BOTH_DATABASES

MAY_8 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC).timestamp()
JUNE_20 = datetime(2023, 6, 20, 9, 0, tzinfo=UTC).timestamp()
SCOPE = Scope("acme", "ann")


async def _stored(store: EmbeddedStore, memory_id: str) -> str | None:
    rows = await store.db.connection.fetchall(
        "SELECT search_text FROM memories WHERE id = ?", (memory_id,)
    )
    return rows[0][0]


async def _found(store: EmbeddedStore, query: str) -> list[str]:
    """The ids BM25 finds for `query`, best first."""
    hits = await store.memories.search(SCOPE, query_text=query, query_vector=None, k=5)
    ranked = sorted((h for h in hits if h.bm25_rank is not None), key=lambda h: h.bm25_rank or 0)
    return [hit.record.id for hit in ranked]


async def _get(store: EmbeddedStore, memory_id: str) -> MemoryRecord:
    record = await store.memories.get(SCOPE, memory_id)
    assert record is not None
    return record


async def test_a_record_keeps_its_bm25_document_through_edits(store: EmbeddedStore) -> None:
    (memory,) = await store.memories.add(
        SCOPE,
        [
            NewMemory(
                kind="fact",
                text="I went to a support group yesterday.",
                keywords=["counselling"],
                tags=["health"],
                created_at=MAY_8,
            )
        ],
    )
    stored = await _stored(store, memory.id)
    assert stored == record_search_text(memory)
    assert "counselling" in (stored or "") and "7 May 2023" in (stored or "")
    assert await _found(store, "7 May") == [memory.id]  # the scope is in memory from here on

    await store.memories.update(SCOPE, memory.id, keywords=["therapy"])
    stored = await _stored(store, memory.id)
    assert stored == record_search_text(await _get(store, memory.id))
    assert await _found(store, "therapy") == [memory.id]
    assert await _found(store, "counselling") == []

    # Its date is part of it: "yesterday" now resolves against 20 June.
    await store.memories.update(SCOPE, memory.id, valid_from=JUNE_20)
    assert "19 June 2023" in (await _stored(store, memory.id) or "")
    assert await _found(store, "19 June") == [memory.id]
    assert await _found(store, "7 May") == []

    # A change to something else leaves it as it was.
    before = await _stored(store, memory.id)
    await store.memories.update(SCOPE, memory.id, trust=0.9)
    assert await _stored(store, memory.id) == before

    assert await store.memories.delete(SCOPE, memory.id, actor="test")
    assert await _stored(store, memory.id) is None


async def test_a_record_without_one_is_made_at_open_or_when_read(
    tmp_path: Path, local_embedder: LocalEmbedder, each_database: str | None
) -> None:
    folder = tmp_path / "data"
    store = await open_store(folder, local_embedder)
    try:
        first, second = await store.memories.add(
            SCOPE,
            [
                NewMemory(kind="fact", text="I painted a lake at sunrise.", created_at=JUNE_20),
                NewMemory(kind="fact", text="My sister plays the cello.", created_at=JUNE_20),
            ],
        )
        expected = record_search_text(first)
        async with store.db.connection.transaction() as db:
            # As a store from before the column, or from an older index text, left them.
            await db.execute("UPDATE memories SET search_text = NULL WHERE id = ?", (first.id,))
            await db.execute("UPDATE memories SET search_text = 'stale' WHERE id = ?", (second.id,))
            await db.execute(
                "UPDATE store_meta SET value = ? WHERE key = ?",
                (str(INDEX_TEXT_VERSION - 1), SEARCH_TEXT_META),
            )
    finally:
        await store.close()

    store = await open_store(folder, local_embedder)
    try:
        assert await _stored(store, first.id) == expected
        assert await _stored(store, second.id) == record_search_text(second)
        # A record an older release writes beside this one has none; it is found all the same.
        async with store.db.connection.transaction() as db:
            await db.execute("UPDATE memories SET search_text = NULL WHERE id = ?", (first.id,))
    finally:
        await store.close()
    store = await open_store(folder, local_embedder)
    try:
        assert await _stored(store, first.id) is None  # open fills once per index text
        assert await _found(store, "painted lake") == [first.id]
        assert await _found(store, "cello") == [second.id]
    finally:
        await store.close()
