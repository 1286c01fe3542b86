"""Rebuilding the index as a new generation: the outbox rule that makes it safe while serving,
one rebuild at a time, and a broken index reported and rebuilt without a restart."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.embedders import LocalEmbedder
from storage.index_location import IndexLocation
from storage.index_schema import generation_of, table_name
from storage.locks import FileLocks
from storage.maintenance import REBUILD_LOCK, ReindexRunningError
from storage.records import NewMemory, Scope
from storage.sqlite import Database
from storage.sqlite.outbox import INDEX_BUILD_META
from storage.store import DB_FILE, EmbeddedStore, IndexElsewhereError, open_embedded_store
from storage.vector_cache import VectorCacheSettings
from tests.s3_server import remove_files, stored_files

SCOPE = Scope("acme", "alice")
ROOT = Path(__file__).resolve().parents[2]


def test_generation_names_round_trip() -> None:
    assert generation_of(table_name("acme")) == 0
    assert generation_of(table_name("acme", 12)) == 12
    assert table_name("acme", 1) != table_name("acme", 2)
    assert generation_of("vector_index") is None


async def test_outbox_entries_stay_for_a_rebuild_and_for_the_next_generation(
    tmp_path: Path,
) -> None:
    db = await Database.open(tmp_path / DB_FILE)
    outbox = db.outbox
    later = time.time() + 3600  # prune as if every entry were old
    try:
        records = [f"m{n}" for n in range(6)]

        async def write(memory_id: str) -> None:
            async with db.connection.transaction() as conn:
                await conn.execute(
                    "INSERT INTO index_outbox (memory_id, tenant_id, enqueued_at) VALUES (?, ?, 0)",
                    (memory_id, "acme"),
                )

        for memory_id in records[:2]:
            await write(memory_id)
        started_after = await outbox.begin_index_build()
        for memory_id in records[2:4]:
            await write(memory_id)
        # The served generation took all four, but the rebuild still needs the last two.
        up_to, pending = await outbox.outbox_batch()
        assert list(pending) == records[:4]
        await outbox.outbox_ack(up_to, generation=0)
        assert await outbox.applied_seq() == up_to
        assert await outbox.outbox_pending() == 0
        assert await outbox.prune_outbox(older_than=later) == 2
        assert list((await outbox.outbox_batch())[1]) == records[2:4]
        assert list((await outbox.outbox_batch(after_seq=started_after))[1]) == records[2:4]
        # The rebuild applied them and switches; a later write the old generation acks stays
        # pending for the new one.
        applied, _ = await outbox.outbox_batch(after_seq=started_after)
        await outbox.switch_index_generation(1, applied, {})
        assert await db.connection.get_meta(INDEX_BUILD_META) is None
        await write(records[4])
        up_to, pending = await outbox.outbox_batch(await outbox.applied_seq())
        assert list(pending) == [records[4]]
        await outbox.outbox_ack(up_to, generation=0)  # a process still on generation 0
        assert await outbox.outbox_pending() == 1
        assert await outbox.prune_outbox(older_than=later) == 2  # the rebuild's two only
        assert list((await outbox.outbox_batch())[1]) == [records[4]]
        await outbox.outbox_ack(up_to, generation=1)
        assert await outbox.outbox_pending() == 0
        # Applied entries stay for the processes that mirror them, until they are old.
        assert await outbox.prune_outbox(older_than=-1) == 0
        assert await outbox.prune_outbox(older_than=later) == 1
        assert (await outbox.outbox_batch())[1] == {}
        assert await outbox.pruned_seq() == up_to == await outbox.latest_seq()
    finally:
        await db.close()


async def test_reindex_builds_a_new_generation_and_drops_the_old(
    tmp_path: Path, local_embedder: LocalEmbedder, index_location: IndexLocation
) -> None:
    store = await open_embedded_store(
        tmp_path, local_embedder, maintenance_interval_s=0, index_location=index_location
    )
    try:
        (record,) = await store.memories.add(
            SCOPE, [NewMemory(kind="fact", text="I collect stamps")]
        )
        report = await store.maintenance.reindex()
        assert (report["generation"], report["records"], report["dropped_tables"]) == (1, 1, 1)
        assert await store.db.outbox.index_generation() == 1
        tables = {name.split("/")[0] for name in stored_files(index_location)}
        assert sorted(name for name in tables if name.endswith(".lance")) == [
            table_name("acme", 1) + ".lance"
        ]
        hits = await store.memories.search(SCOPE, query_text="stamps")
        assert [hit.record.id for hit in hits] == [record.id]
    finally:
        await store.close()


async def test_a_second_rebuild_is_refused_while_one_runs(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    store = await open_embedded_store(tmp_path, local_embedder, maintenance_interval_s=0)
    await store.memories.add(SCOPE, [NewMemory(kind="fact", text="I collect stamps")])
    # Its index write done: the blocking `subprocess.run` below stops this event loop, and a
    # background write holding the index lock meanwhile would stop the child's start-up too.
    await store.index.flushed()
    try:
        with open(FileLocks(tmp_path).path(REBUILD_LOCK), "a+") as held:  # as another rebuild would
            fcntl.flock(held, fcntl.LOCK_EX)
            with pytest.raises(ReindexRunningError, match="another process is rebuilding"):
                await store.maintenance.reindex()
            done = subprocess.run(
                [sys.executable, "-m", "proxy.cli", "reindex", "--data-dir", str(tmp_path)],
                capture_output=True,
                text=True,
                timeout=300,
                env={"MEMENTO_EMBEDDER": "local", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
                cwd=ROOT,
            )
            assert done.returncode == 1
            assert "another process is rebuilding the index" in done.stderr
        assert await store.db.outbox.index_generation() == 0  # nothing was switched
    finally:
        await store.close()


async def test_the_marker_of_a_dead_rebuild_is_forgotten(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    store = await open_embedded_store(tmp_path, local_embedder, maintenance_interval_s=0)
    try:
        await store.db.outbox.begin_index_build()  # a rebuild whose process was killed
        await store.maintenance.maintain()
        assert await store.db.connection.get_meta(INDEX_BUILD_META) is None
    finally:
        await store.close()


async def test_a_broken_index_is_reported_then_rebuilt_without_a_restart(
    tmp_path: Path, local_embedder: LocalEmbedder, index_location: IndexLocation
) -> None:
    store = await open_embedded_store(
        tmp_path, local_embedder, maintenance_interval_s=0, index_location=index_location
    )
    (record,) = await store.memories.add(SCOPE, [NewMemory(kind="fact", text="I collect stamps")])
    await store.maintenance.maintain()
    await store.close()
    # The files of the full-text index vanish (as a rebuild under a running proxy did).
    assert remove_files(index_location, f"{table_name('acme')}.lance/_indices/")
    store = await open_embedded_store(
        tmp_path, local_embedder, maintenance_interval_s=0, index_location=index_location
    )
    # A scope the index serves: a cached one is searched in process, without the broken files.
    store.index.vector_cache.settings = VectorCacheSettings(max_bytes=0)
    try:
        with pytest.raises(RuntimeError):
            await store.memories.search(SCOPE, query_text="stamps")
        assert "index.search" in store.index.problems
        await store.maintenance.maintain()  # what the background loop, woken by the failure, runs
        assert store.index.problems == {}
        hits = await store.memories.search(SCOPE, query_text="stamps")
        assert [hit.record.id for hit in hits] == [record.id]
        assert await store.db.outbox.index_generation() == 1
    finally:
        await store.close()


async def test_an_index_moved_elsewhere_is_rebuilt_there_at_open(
    tmp_path: Path, local_embedder: LocalEmbedder, index_location: IndexLocation
) -> None:
    """Setting MEMENTO_INDEX_URI on a data folder that has served needs nothing more: the store
    rebuilds the index there from SQLite, and again when it moves back to where a stale copy
    is. Only the proxy moves the index; a command beside it (reindex, quarantine) refuses."""
    data = tmp_path / "data"

    async def open_at(location: IndexLocation | None, **options: bool) -> EmbeddedStore:
        store = await open_embedded_store(
            data, local_embedder, maintenance_interval_s=0, index_location=location, **options
        )
        store.index.vector_cache.settings = VectorCacheSettings(max_bytes=0)  # through LanceDB
        return store

    async def found(store: EmbeddedStore, query: str) -> list[str]:
        return [hit.record.text for hit in await store.memories.search(SCOPE, query_text=query)]

    store = await open_at(None)
    await store.memories.add(SCOPE, [NewMemory(kind="fact", text="I collect stamps")])
    await store.close()
    store = await open_at(index_location, move_index=True)
    try:
        assert await found(store, "stamps") == ["I collect stamps"]
        await store.memories.add(SCOPE, [NewMemory(kind="fact", text="I sail on weekends")])
    finally:
        await store.close()
    with pytest.raises(IndexElsewhereError, match=f"is at {index_location.uri}, not"):
        await open_at(None)
    store = await open_at(None, move_index=True)  # back to data/index, without the sailing
    try:
        assert await found(store, "sail weekends") == ["I sail on weekends"]
    finally:
        await store.close()
