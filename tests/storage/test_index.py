"""The LanceDB index on its own: one table per tenant, removal, reopening, maintenance; in a
folder and on S3 (`index_location`), where the behaviour does not depend on LanceDB's caches."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from storage import EmbeddedStore
from storage.index import MemoryIndex
from storage.index_location import IndexLocation
from storage.index_schema import IndexRow, scope_filter, scope_key, table_name
from storage.index_settings import MaintenanceSettings
from storage.records import NewMemory, Scope

DIM = 8
ODD_TENANTS = ["acme", "Acme", "../../etc", "it's; DROP TABLE x", "ünïcødé 租户", "a" * 300]


def _rows(tenant_id: str, user_id: str | None, count: int, seed: int = 0) -> list[IndexRow]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        IndexRow(
            id=f"{tenant_id}/{user_id}/{i}",
            tenant_id=tenant_id,
            user_id=user_id,
            kind="fact",
            status="active",
            expires_at=None,
            search_text=f"harbour violin note {i}",
            vector=vectors[i],
        )
        for i in range(count)
    ]


def _where(tenant_id: str, user_id: str | None) -> str:
    return scope_filter([scope_key(tenant_id, user_id)], kinds=None, statuses=["active"])


def test_table_names_are_safe_and_distinct_for_any_tenant_id() -> None:
    names = [table_name(tenant) for tenant in ODD_TENANTS]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9_]{1,64}", name) for name in names)


async def test_a_search_sees_only_its_own_tenants_table(index_location: IndexLocation) -> None:
    index = await MemoryIndex.open(index_location, DIM)
    for n, tenant in enumerate(ODD_TENANTS):
        await index.upsert(_rows(tenant, "ann", 5, seed=n))
    for tenant in ODD_TENANTS:
        assert await index.count(tenant) == 5
        where = _where(tenant, "ann")
        vector_hits = await index.search_vector(tenant, np.ones(DIM, np.float32), where, 30)
        text_hits = await index.search_text(tenant, "harbour", where, 30)
        assert len(vector_hits) == len(text_hits) == 5
        assert {hit.id.rsplit("/", 2)[0] for hit in (*vector_hits, *text_hits)} == {tenant}
    # Even a filter naming another tenant's scope finds nothing: its rows are not in this table.
    other = await index.search_text("acme", "harbour", _where("Acme", "ann"), 30)
    assert other == []
    assert await index.search_text("nobody", "harbour", _where("nobody", "ann"), 30) == []
    assert await index.count() == 5 * len(ODD_TENANTS)


async def test_an_upsert_appends_new_rows_and_replaces_held_ones(tmp_path: Path) -> None:
    """New rows are appended; a batch holding a row the table has is merged: a batch applied
    again (its outbox entries were not acknowledged before a crash) leaves one row per id."""
    index = await MemoryIndex.open(IndexLocation.folder(tmp_path), DIM)
    rows = _rows("acme", "ann", 6)
    await index.upsert(rows[:4])
    await index.upsert(rows[:4])  # applied again
    assert await index.count("acme") == 4
    changed = dataclasses.replace(rows[0], search_text="lighthouse keeper")
    await index.upsert([changed, *rows[4:]])  # one held, two new
    assert await index.count("acme") == 6
    where = _where("acme", "ann")
    assert [hit.id for hit in await index.search_text("acme", "lighthouse", where, 5)] == [
        rows[0].id
    ]
    assert len(await index.search_text("acme", "harbour", where, 10)) == 5


async def test_remove_by_tenant_and_without_one(index_location: IndexLocation) -> None:
    index = await MemoryIndex.open(index_location, DIM)
    acme, globex = _rows("acme", "ann", 4), _rows("globex", "ann", 4)
    await index.append([*acme, *globex])
    await index.remove("acme", [acme[0].id, globex[0].id])  # globex's id is not acme's
    assert await index.count("acme") == 3
    assert await index.count("globex") == 4
    # Tenant unknown (the record is gone from SQLite): every table is looked at.
    await index.remove(None, [acme[1].id, globex[1].id])
    assert await index.count("acme") == 2
    assert await index.count("globex") == 3


async def test_reopening_keeps_the_tables_and_an_old_layout_is_replaced(
    index_location: IndexLocation,
) -> None:
    assert not index_location.holds_tables()
    index = await MemoryIndex.open(index_location, DIM)
    assert index.created
    await index.append(_rows("acme", "ann", 3))
    assert index_location.holds_tables()  # what decides whether LanceDB loads at start-up
    reopened = await MemoryIndex.open(index_location, DIM)
    assert not reopened.created
    assert await reopened.count("acme") == 3
    assert reopened.needs_maintenance  # a previous process may have left rows unfolded
    # Another vector size: emptied, and reported so the store rebuilds it from SQLite.
    resized = await MemoryIndex.open(index_location, DIM * 2)
    assert resized.created
    assert await resized.count() == 0

    # The one-table layout this replaced: no layout file, a single "memories" table.
    old = IndexLocation(index_location.uri + "-old", index_location.storage_options)
    db = await lancedb.connect_async(old.uri, storage_options=old.storage_options)
    await db.create_table("memories", schema=pa.schema([pa.field("id", pa.string())]))
    upgraded = await MemoryIndex.open(old, DIM)
    assert upgraded.created
    assert "memories" not in (await db.list_tables()).tables


async def test_maintenance_builds_a_vector_index_per_large_table(
    index_location: IndexLocation,
) -> None:
    settings = MaintenanceSettings(vector_index_min_rows=300, rows_per_partition=50, nprobes=4)
    index = await MemoryIndex.open(index_location, DIM, settings)
    await index.append([*_rows("big", "ann", 400), *_rows("small", "ann", 20)])
    done = await index.maintain()
    assert done[table_name("big")]["vector_index"] == 400
    assert "vector_index" not in done[table_name("small")]
    assert index.vector_indexed
    query = np.ones(DIM, np.float32)
    hits = await index.search_vector("big", query, _where("big", "ann"), 10)
    assert len(hits) == 10
    assert await index.unindexed_rows() == 0
    # Still listed: erased content is pruned only from versions older than prune_older_than.
    assert index.needs_maintenance
    # What the IVF index was trained on is kept beside the tables: a reopened index (another
    # process) does not train it again until the table has doubled.
    reopened = await MemoryIndex.open(index_location, DIM, settings)
    assert not reopened.needs_maintenance  # LanceDB is not loaded until the index is used
    assert len(await reopened.search_vector("big", query, _where("big", "ann"), 10)) == 10
    assert reopened.needs_maintenance  # tables left by another process may need folding in
    assert "vector_index" not in (await reopened.maintain())[table_name("big")]


async def test_erasing_a_user_removes_their_rows_from_the_index(
    store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    removals: list[str | None] = []
    remove = store.index.index.remove

    async def recording_remove(tenant_id: str | None, memory_ids: Sequence[str]) -> None:
        removals.append(tenant_id)
        await remove(tenant_id, memory_ids)

    monkeypatch.setattr(store.index.index, "remove", recording_remove)
    ann, bob = Scope("acme", "ann"), Scope("acme", "bob")
    await store.memories.add(ann, [NewMemory(kind="fact", text=f"ann note {i}") for i in range(3)])
    await store.memories.add(bob, [NewMemory(kind="fact", text="bob note")])
    await store.memories.add(Scope("globex", "ann"), [NewMemory(kind="fact", text="other tenant")])
    await store.index.flushed()  # additions reach the index in the background
    assert await store.index.index.count("acme") == 4
    await store.memories.delete_user(
        "acme", "ann", actor="test"
    )  # SQLite keeps no row to name the tenant
    assert await store.index.index.count("acme") == 1
    assert await store.index.index.count("globex") == 1
    assert removals == ["acme"]  # the outbox named the tenant: no other table was searched


@pytest.mark.asyncio(loop_scope="function")
async def test_lancedb_caches_stay_within_their_bounds_as_writes_add_versions(
    tmp_path: Path,
) -> None:
    # Each upsert commits a table version whose manifest (listing every fragment so far) and
    # file metadata enter LanceDB's metadata cache; unbounded, 300 single-row writes cached
    # ~20 MB of versions nothing reads again.
    settings = MaintenanceSettings(index_cache_bytes=2 << 20, metadata_cache_bytes=2 << 20)
    index = await MemoryIndex.open(IndexLocation.folder(tmp_path), DIM, settings)
    rng = np.random.default_rng(7)
    for number in range(300):
        vector = rng.standard_normal(DIM).astype(np.float32)
        await index.upsert(
            [
                IndexRow(
                    f"m{number}", "acme", "kim", "fact", "active", None, f"fact {number}", vector
                )
            ]
        )
    assert await index.count("acme") == 300
    assert index.cache_bytes <= 4 << 20


async def test_maintenance_recycles_caches_full_of_superseded_versions(tmp_path: Path) -> None:
    # Within their bounds the caches still fill with entries of versions and index ids that
    # maintenance superseded; once they hold recycle_after_bytes more than after the last fresh
    # start, maintenance reopens the tables in a new Session holding only what is current.
    settings = MaintenanceSettings(recycle_after_bytes=256 << 10)
    index = await MemoryIndex.open(IndexLocation.folder(tmp_path), DIM, settings)
    first = await index.maintain()
    assert "caches_recycled_bytes" not in first
    recycled = []
    for batch in range(12):
        for number, row in enumerate(_rows("acme", "kim", 20, seed=batch)):
            await index.upsert([replace(row, id=f"m{batch}-{number}")])
        done = await index.maintain()
        if "caches_recycled_bytes" in done:
            recycled.append((done["caches_recycled_bytes"], index.cache_bytes))
    assert recycled, "the caches grew past the slack and were never recycled"
    assert all(after < before for before, after in recycled)
    # The reopened tables see every committed row, and take new writes.
    assert await index.count("acme") == 240
    probe = _rows("acme", "kim", 1, seed=99)[0]
    hits = await index.search_vector("acme", probe.vector, _where("acme", "kim"), 240)
    assert len(hits) == 240
    assert await index.search_text("acme", "harbour violin", _where("acme", "kim"), 5)
    await index.upsert([replace(probe, id="after-recycle")])
    assert await index.count("acme") == 241
