"""Several processes on one store: each one's in-memory copies of hot scopes follow the outbox,
so what one accepted or erased is what the others search, without a restart.

Two stores opened on the same data folder stand for two processes (each has its own SQLite
connections, index handles, locks and vector cache, as a second process would).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage import EmbeddedStore
from storage.embedders import LocalEmbedder
from storage.records import NewMemory, Scope
from storage.store import open_embedded_store
from storage.vector_cache import VectorCacheSettings
from tests.storage.test_store_durability import Writer

SCOPE = Scope("acme", "ann")


@pytest.fixture
async def pair(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> AsyncIterator[tuple[EmbeddedStore, EmbeddedStore]]:
    first = await open_embedded_store(tmp_path, local_embedder, maintenance_interval_s=0)
    second = await open_embedded_store(tmp_path, local_embedder, maintenance_interval_s=0)
    try:
        yield first, second
    finally:
        await second.close()
        await first.close()


async def _found(store: EmbeddedStore, text: str) -> list[str]:
    hits = await store.memories.search(SCOPE, query_text=text, embed_query=True, k=5)
    return [hit.record.text for hit in hits]


def _cached_ids(store: EmbeddedStore) -> set[str]:
    cached = store.index.vector_cache.get(SCOPE.tenant_id, SCOPE.user_id)
    return set(cached.ids) if cached is not None else set()


async def test_a_memory_written_by_one_process_is_in_the_others_cached_scope(
    pair: tuple[EmbeddedStore, EmbeddedStore],
) -> None:
    first, second = pair
    await first.memories.add(SCOPE, [NewMemory(kind="fact", text="Ann lives in Lisbon")])
    assert await _found(second, "Where does Ann live?") == ["Ann lives in Lisbon"]  # now cached

    (boat,) = await first.memories.add(SCOPE, [NewMemory(kind="fact", text="Ann owns a boat")])
    assert boat.id not in _cached_ids(second)  # the other process has not looked yet
    await second.index.follow()
    assert boat.id in _cached_ids(second)
    assert "Ann owns a boat" in await _found(second, "What does Ann own?")

    assert await first.memories.delete_user("acme", "ann", actor="test") == 2
    await second.index.follow()
    assert _cached_ids(second) == set()  # the erased rows left the other process's memory too


async def test_a_process_that_missed_pruned_entries_starts_its_copies_over(
    pair: tuple[EmbeddedStore, EmbeddedStore],
) -> None:
    first, second = pair
    await first.memories.add(SCOPE, [NewMemory(kind="fact", text="Ann lives in Lisbon")])
    await _found(second, "Where does Ann live?")
    (boat,) = await first.memories.add(SCOPE, [NewMemory(kind="fact", text="Ann owns a boat")])
    # Applied to the index and older than the outbox keeps them: pruned before `second` read.
    assert await first.db.outbox.prune_outbox(older_than=time.time() + 3600) == 2
    await second.index.follow()
    # Dropped, not left stale:
    assert second.index.vector_cache.get(SCOPE.tenant_id, SCOPE.user_id) is None
    assert "Ann owns a boat" in await _found(second, "What does Ann own?")  # reloaded
    assert boat.id in _cached_ids(second)


async def test_applied_entries_are_kept_for_the_other_processes_until_old(
    pair: tuple[EmbeddedStore, EmbeddedStore],
) -> None:
    first, second = pair
    await _found(second, "anything")  # the scope is cached (empty)
    await first.memories.add(SCOPE, [NewMemory(kind="fact", text="Ann lives in Lisbon")])
    assert await first.db.outbox.outbox_pending() == 0  # in the index already
    await first.maintenance.maintain()  # prunes only entries older than the outbox keeps
    await second.index.follow()
    assert await _found(second, "Where does Ann live?") == ["Ann lives in Lisbon"]


async def test_a_scope_searched_through_the_index_sees_the_other_processes_writes(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    no_cache = VectorCacheSettings(max_bytes=0)  # every search through LanceDB
    first = await open_embedded_store(
        tmp_path, local_embedder, maintenance_interval_s=0, vector_cache=no_cache
    )
    second = await open_embedded_store(
        tmp_path, local_embedder, maintenance_interval_s=0, vector_cache=no_cache
    )
    try:
        await first.memories.add(SCOPE, [NewMemory(kind="fact", text="Ann lives in Lisbon")])
        assert await _found(second, "Where does Ann live?") == ["Ann lives in Lisbon"]
        await first.memories.add(SCOPE, [NewMemory(kind="fact", text="Ann owns a boat")])
        deadline = time.monotonic() + 30  # a bound for a busy machine, not a speed test
        while "Ann owns a boat" not in await _found(second, "What does Ann own?"):
            assert time.monotonic() < deadline, "the other process's table never moved on"
            await asyncio.sleep(0.05)
    finally:
        await second.close()
        await first.close()


@pytest.mark.timeout(300)
async def test_entries_a_dead_process_left_unapplied_are_applied_by_another(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    data_dir = tmp_path / "data"
    # A serving process, with its background upkeep (maintenance every 30 s, as by default).
    serving = await open_embedded_store(data_dir, local_embedder)
    try:
        writer = Writer(data_dir, "dead", "commit")  # commits, then dies before the index
        deadline = time.monotonic() + 180
        while writer.acked() < 1:
            assert time.monotonic() < deadline, "the writer never committed"
            await asyncio.sleep(0.1)
        writer.kill()
        outbox = serving.db.outbox
        assert await outbox.outbox_pending() == 3
        deadline = time.monotonic() + 20  # well before the next maintenance pass
        while await outbox.outbox_pending():
            assert time.monotonic() < deadline, "nobody took over the dead process's entries"
            await asyncio.sleep(0.1)
        assert await serving.index.index.count("durable") == 3
    finally:
        await serving.close()
