"""A scope not in memory yet (a user's first search after a restart, or after the cache let it
go) is searched through the index while its copy loads in the background, so the first chat
call does not wait the half second a 10k-memory scope takes to load, past its retrieval
deadline. Where LanceDB is not connected in the process yet (a restarted proxy that has only
searched hot scopes), or while the index reports a problem, the copy is waited for instead.
The copy's rows are read on a reader of their own, so the hot path's reads never queue behind
them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from storage import EmbeddedStore
from storage.index import MemoryIndex
from storage.records import NewMemory, Scope
from storage.sqlite.connection import Connection

ANN = Scope("acme", "ann")


class HeldLoads:
    """Holds every scope load at its read of the source of truth until released."""

    def __init__(self, store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        read = store.db.outbox.scope_rows

        async def held(*args: Any) -> Any:
            self.started.set()
            await self.release.wait()
            return await read(*args)

        monkeypatch.setattr(store.db.outbox, "scope_rows", held)


async def _cold_store(store: EmbeddedStore) -> None:
    texts = ["Ann keeps bees on her roof.", "Ann sails a small boat.", "Ann reads maps for fun."]
    await store.memories.add(ANN, [NewMemory(kind="fact", text=text) for text in texts])
    await store.index.flushed()
    store.index.vector_cache.clear()  # as a process that has not searched the scope yet


async def test_a_cold_scope_is_searched_through_the_index_while_it_loads(
    store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _cold_store(store)
    assert store.index.index.connected  # the writes above connected LanceDB
    loads = HeldLoads(store, monkeypatch)
    hits = await asyncio.wait_for(
        store.memories.search(ANN, query_text="bees", embed_query=True, k=3), timeout=30
    )
    assert hits[0].record.text == "Ann keeps bees on her roof."
    assert loads.started.is_set()  # the search started the load and did not wait for it
    assert store.index.vector_cache.get("acme", "ann") is None
    loads.release.set()
    await store.memories.warm(ANN)
    cached = store.index.vector_cache.get("acme", "ann")
    assert cached is not None and len(cached) == 3
    again = await store.memories.search(ANN, query_text="bees", embed_query=True, k=3)
    assert [hit.record.id for hit in again] == [hit.record.id for hit in hits]


@pytest.mark.parametrize("why", ["LanceDB is not connected", "the index reports a problem"])
async def test_a_search_waits_for_the_copy(
    store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    await _cold_store(store)
    if why == "LanceDB is not connected":
        monkeypatch.setattr(MemoryIndex, "connected", property(lambda _: False))
    else:
        store.index.report("index.update", "index update failed: test")
    loads = HeldLoads(store, monkeypatch)
    search = asyncio.ensure_future(
        store.memories.search(ANN, query_text="boat", embed_query=True, k=3)
    )
    await asyncio.wait_for(loads.started.wait(), timeout=30)
    await asyncio.sleep(0.05)
    assert not search.done()  # waiting for the copy, not asking the failing index
    loads.release.set()
    hits = await asyncio.wait_for(search, timeout=30)
    assert hits[0].record.text == "Ann sails a small boat."
    assert store.index.vector_cache.get("acme", "ann") is not None


async def test_a_bulk_read_does_not_hold_up_the_other_reads(tmp_path: Path) -> None:
    connection = await Connection.open(tmp_path / "memento.db")
    try:
        # About a second of work for SQLite, on the bulk reader's thread.
        slow = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        bulk = asyncio.ensure_future(
            connection.fetch_bulk(slow + "SELECT count(*) FROM n", (5_000_000,))
        )
        await asyncio.sleep(0.05)  # the bulk read is running
        assert await connection.fetchall("SELECT 1") == [(1,)]
        assert not bulk.done()  # the read above did not wait for it
        assert await bulk == [(5_000_000,)]
    finally:
        await connection.close()
