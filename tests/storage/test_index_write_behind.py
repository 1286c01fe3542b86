"""Writes reach LanceDB in the background, many in one commit: a write returns once the
process's hot scopes have it, a search of the index first has every earlier write applied, and
what was not applied before a close or a crash is applied from the outbox."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from storage import EmbeddedStore
from storage.embedders import LocalEmbedder
from storage.index_schema import IndexRow
from storage.records import NewMemory, Scope
from storage.store import open_embedded_store
from storage.vector_cache import VectorCacheSettings

ANN = Scope("acme", "ann")


def held_upserts(
    store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, list[int]]:
    """From now on the store's LanceDB upserts wait for the event; the rows of each, once made."""
    release, sizes = asyncio.Event(), []
    upsert = store.index.index.upsert

    async def held(rows: Sequence[IndexRow]) -> None:
        await release.wait()
        sizes.append(len(rows))
        await upsert(rows)

    monkeypatch.setattr(store.index.index, "upsert", held)
    return release, sizes


async def texts_found(store: EmbeddedStore, query: str) -> list[str]:
    hits = await store.memories.search(ANN, query_text=query, embed_query=True, k=20)
    return [hit.record.text for hit in hits]


async def test_writes_return_before_the_index_write_and_share_one(
    store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.memories.add(ANN, [NewMemory(kind="fact", text="Ann lives in Lisbon")])
    await store.index.flushed()
    await texts_found(store, "Lisbon")  # the scope is held in process from here on
    release, upserts = held_upserts(store, monkeypatch)
    facts = [f"Ann keeps a notebook about harbour number {n}" for n in range(20)]
    writes = (store.memories.add(ANN, [NewMemory(kind="fact", text=fact)]) for fact in facts)
    async with asyncio.timeout(60):  # they return while LanceDB has none of them
        await asyncio.gather(*writes)
    assert set(facts) <= set(await texts_found(store, "Which harbours does Ann write about?"))
    release.set()
    await store.index.flushed()
    assert sum(upserts) == 20  # every write reached the index ...
    assert len(upserts) <= 2  # ... the first alone at most, the others together
    assert await store.index.index.count("acme") == 21


async def test_a_search_of_the_index_reads_the_writes_before_it(
    tmp_path: Path, local_embedder: LocalEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_cache = VectorCacheSettings(max_bytes=0)  # every search goes to LanceDB
    store = await open_embedded_store(tmp_path, local_embedder, vector_cache=no_cache)
    try:
        release, _ = held_upserts(store, monkeypatch)
        await store.memories.add(ANN, [NewMemory(kind="fact", text="Ann owns a red boat")])
        search = asyncio.ensure_future(texts_found(store, "What does Ann own?"))
        await asyncio.sleep(0.2)
        assert not search.done()  # waiting for the write before it, not answering without it
        release.set()
        assert await search == ["Ann owns a red boat"]
    finally:
        await store.close()


async def test_writes_not_yet_in_the_index_are_applied_by_the_next_open(
    tmp_path: Path, local_embedder: LocalEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_embedded_store(tmp_path, local_embedder)
    failing = {"on": True}
    upsert = store.index.index.upsert

    async def refused(rows: Sequence[IndexRow]) -> None:
        if failing["on"]:
            raise OSError("disk unavailable")  # as a crash before the index write would
        await upsert(rows)

    monkeypatch.setattr(store.index.index, "upsert", refused)
    await store.memories.add(ANN, [NewMemory(kind="fact", text="Ann plays the cello")])
    await store.index.flushed()
    assert "index.update" in store.index.problems  # reported, the entry kept in the outbox
    assert await store.db.outbox.outbox_pending() == 1
    await store.close()  # its last apply fails too: the entry stays

    reopened = await open_embedded_store(tmp_path, local_embedder)
    try:
        assert await reopened.db.outbox.outbox_pending() == 0
        assert await reopened.index.index.count("acme") == 1
    finally:
        await reopened.close()
