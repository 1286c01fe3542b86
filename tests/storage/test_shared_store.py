"""Several processes on one store: each one's in-memory copies of hot scopes follow the outbox,
so what one accepted or erased is what the others search, without a restart.

Two stores stand for two processes (each has its own database connections, index handles,
locks and vector cache, as a second process would). Each test runs on both topologies: one data
folder shared by both (SQLite), and replicas with folders of their own sharing a PostgreSQL
database and a bucket of the S3 server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from storage import EmbeddedStore
from storage.embedders import LocalEmbedder
from storage.index_location import URI_SETTING as INDEX_URI_SETTING
from storage.postgres.url import DATABASE_URL_SETTING
from storage.records import NewMemory, Scope
from storage.store import open_embedded_store
from storage.vector_cache import VectorCacheSettings
from tests.postgres_server import BOTH_DATABASES
from tests.s3_server import S3Server
from tests.storage.test_store_durability import Writer

pytestmark = BOTH_DATABASES

SCOPE = Scope("acme", "ann")

Opener = Callable[..., Awaitable[EmbeddedStore]]


@pytest.fixture
def open_replica(
    tmp_path: Path,
    local_embedder: LocalEmbedder,
    database_url: str | None,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Opener:
    """`await open_replica(number, **options)`: a store as replica `number` would open it.
    The process settings are set too, for a replica run as a subprocess."""
    if database_url is None:
        folders = [tmp_path / "data"] * 2

        async def open_on_folder(number: int, **options: Any) -> EmbeddedStore:
            return await open_embedded_store(folders[number], local_embedder, **options)

        return open_on_folder
    server: S3Server = request.getfixturevalue("s3_server")
    uri = f"s3://{server.new_bucket()}/index"
    for name, value in {**server.env, INDEX_URI_SETTING: uri}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(DATABASE_URL_SETTING, database_url)

    async def open_replica_on(number: int, **options: Any) -> EmbeddedStore:
        return await open_embedded_store(
            tmp_path / f"replica{number}",
            local_embedder,
            database_url=database_url,
            index_location=server.location(uri.split("/")[2]),
            **options,
        )

    return open_replica_on


@pytest_asyncio.fixture(loop_scope="function")  # the test's loop: a pool's workers run in it
async def pair(open_replica: Opener) -> AsyncIterator[tuple[EmbeddedStore, EmbeddedStore]]:
    first = await open_replica(0, maintenance_interval_s=0)
    second = await open_replica(1, maintenance_interval_s=0)
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
    assert await _found(second, "Where does Ann live?") == ["Ann lives in Lisbon"]
    await second.memories.warm(SCOPE)  # the search above started loading the scope

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
    await first.index.flushed()
    # Applied to the index and older than the outbox keeps them: pruned before `second` read.
    assert await first.db.outbox.prune_outbox(older_than=time.time() + 3600) == 2
    await second.index.follow()
    # Dropped, not left stale:
    assert second.index.vector_cache.get(SCOPE.tenant_id, SCOPE.user_id) is None
    assert "Ann owns a boat" in await _found(second, "What does Ann own?")  # from the index
    await second.memories.warm(SCOPE)
    assert boat.id in _cached_ids(second)  # reloaded


async def test_applied_entries_are_kept_for_the_other_processes_until_old(
    pair: tuple[EmbeddedStore, EmbeddedStore],
) -> None:
    first, second = pair
    await _found(second, "anything")  # the scope is cached (empty)
    await first.memories.add(SCOPE, [NewMemory(kind="fact", text="Ann lives in Lisbon")])
    await first.index.flushed()
    assert await first.db.outbox.outbox_pending() == 0  # in the index already
    await first.maintenance.maintain()  # prunes only entries older than the outbox keeps
    await second.index.follow()
    assert await _found(second, "Where does Ann live?") == ["Ann lives in Lisbon"]


async def test_a_scope_searched_through_the_index_sees_the_other_processes_writes(
    open_replica: Opener,
) -> None:
    no_cache = VectorCacheSettings(max_bytes=0)  # every search through LanceDB
    first = await open_replica(0, maintenance_interval_s=0, vector_cache=no_cache)
    second = await open_replica(1, maintenance_interval_s=0, vector_cache=no_cache)
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
    open_replica: Opener, tmp_path: Path, database_url: str | None
) -> None:
    # A serving process, with its background upkeep (maintenance every 30 s, as by default).
    serving = await open_replica(1)
    try:
        # Another commits, then dies before the index.
        folder = serving.data_dir if database_url is None else tmp_path / "replica0"
        writer = Writer(folder, "dead", "commit")
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


async def test_a_notified_replica_follows_at_once_without_polling(
    pair: tuple[EmbeddedStore, EmbeddedStore],
) -> None:
    # PostgreSQL's NOTIFY; on one folder, the other process's datagram (storage.sqlite.signals).
    first, second = pair
    await first.memories.add(SCOPE, [NewMemory(kind="fact", text="Ann lives in Lisbon")])
    await _found(second, "Where does Ann live?")  # cached in the second
    sync = second.index
    tasks = [
        asyncio.create_task(second.db.connection.watch_outbox(sync.outbox_changed.set)),
        asyncio.create_task(sync.follow_forever(interval_s=3600)),  # no polling to speak of
    ]
    try:
        await asyncio.sleep(0.5)  # listening
        (boat,) = await first.memories.add(SCOPE, [NewMemory(kind="fact", text="Ann rows")])
        deadline = time.monotonic() + 20
        while boat.id not in _cached_ids(second):
            assert time.monotonic() < deadline, "the notification never woke the replica"
            await asyncio.sleep(0.02)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
