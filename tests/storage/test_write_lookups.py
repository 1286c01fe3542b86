"""`nearest` (the write path's k nearest records), `same_text` (exact duplicates by digest) and
`count_written` (the daily write limit), against a real store: exact, scoped and filtered."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storage.embedders import LocalEmbedder
from storage.index_schema import IndexRow
from storage.records import NewMemory, Scope
from storage.store import open_embedded_store
from storage.vector_cache import ScopeVectors, VectorCacheSettings
from tests.memory.records import record
from tests.postgres_server import BOTH_DATABASES

ALICE = Scope("acme", "alice")


def _unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, 384)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# max_rows=50 sends the 300-record scope to LanceDB (a flat, exact search before any vector
# index is built); the default keeps it in the vector cache.
@pytest.mark.parametrize("max_rows", [20_000, 50])
async def test_nearest_is_the_exact_k_nearest_of_the_scope(
    tmp_path: Path, local_embedder: LocalEmbedder, max_rows: int
) -> None:
    store = await open_embedded_store(
        tmp_path, local_embedder, vector_cache=VectorCacheSettings(max_rows=max_rows)
    )
    try:
        mine, shared, other = _unit_rows(300, 1), _unit_rows(20, 2), _unit_rows(20, 3)
        kinds = ["fact", "preference", "case"]
        written = await store.memories.add(
            ALICE,
            [NewMemory(kinds[i % 3], f"memory {i}") for i in range(300)],  # type: ignore[arg-type]
            vectors=mine.tolist(),
        )
        await store.memories.add(
            ALICE.shared(), [NewMemory("fact", f"shared {i}") for i in range(20)], vectors=shared
        )
        await store.memories.add(  # another user: never a neighbour
            Scope("acme", "bob"), [NewMemory("fact", f"bob {i}") for i in range(20)], vectors=other
        )
        await store.memories.update(ALICE, written[0].id, status="quarantined")
        queries = _unit_rows(3, 4)

        found = await store.memories.nearest(
            ALICE, queries.tolist(), k=7, kinds=["fact", "case"], include_shared=True
        )

        candidates = [
            (record.id, vector)
            for record, vector in zip(written, mine, strict=True)
            if record.kind in ("fact", "case") and record.id != written[0].id
        ]
        ids = [memory_id for memory_id, _ in candidates]
        matrix = np.stack([v for _, v in candidates] + list(shared))
        ids += [f"shared-{i}" for i in range(20)]
        for query, hits in zip(queries, found, strict=True):
            expected = [ids[i] for i in np.argsort(-(matrix @ query))[:7]]
            got = [h.record.id if h.record.user_id else f"shared-{h.record.text[7:]}" for h in hits]
            assert got == expected
            assert all(h.vector is not None and h.cosine is not None for h in hits)
            cosines = [h.cosine for h in hits]
            assert cosines == sorted(cosines, reverse=True)
    finally:
        await store.close()


@BOTH_DATABASES
async def test_same_text_finds_an_active_copy_by_its_normalised_text(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    try:
        memories = store.memories
        [tea] = await memories.add(ALICE, [NewMemory("preference", "The user likes green tea.")])
        same = await memories.same_text(ALICE, ["fact", "preference"], "the user likes  GREEN tea!")
        assert same is not None and same.id == tea.id
        assert await memories.same_text(ALICE, ["case"], "The user likes green tea.") is None
        assert await memories.same_text(Scope("acme", "bob"), ["preference"], tea.text) is None
        assert await memories.same_text(ALICE, ["preference"], "The user likes tea.") is None

        await memories.update(ALICE, tea.id, text="The user likes black tea.")
        assert await memories.same_text(ALICE, ["preference"], "The user likes green tea.") is None
        found = await memories.same_text(ALICE, ["preference"], "The user likes black tea")
        assert found is not None and found.id == tea.id

        await memories.update(ALICE, tea.id, status="quarantined")  # only active ones count
        assert await memories.same_text(ALICE, ["preference"], "The user likes black tea") is None
        await memories.update(ALICE, tea.id, status="active")
        await memories.delete(ALICE, tea.id, actor="test")
        assert await memories.same_text(ALICE, ["preference"], "The user likes black tea") is None
    finally:
        await store.close()


@BOTH_DATABASES
async def test_same_contents_finds_each_stored_copy_at_once(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    try:
        memories = store.memories
        tea, cat = await memories.add(
            ALICE, [NewMemory("fact", "The user likes tea."), NewMemory("fact", "A cat.")]
        )
        await memories.delete(ALICE, cat.id, actor="test")  # an erased copy is no copy
        asked = [
            ("alice", "fact", tea.text, tea.key_text),
            ("bob", "fact", tea.text, tea.key_text),  # another user's scope
            ("alice", "preference", tea.text, tea.key_text),  # another kind
            ("alice", "fact", tea.text, "tea"),  # another key text
            ("alice", "fact", cat.text, cat.key_text),
        ]
        found = await memories.same_contents("acme", asked)  # type: ignore[arg-type]
        assert found == [tea.id, None, None, None, None]
        assert await memories.same_contents("globex", asked[:1]) == [None]  # type: ignore[arg-type]
    finally:
        await store.close()


async def test_an_import_writes_the_vectors_its_checks_made(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    """Vectors the import's checks made are written as they are; the others are made here."""
    store = await open_embedded_store(tmp_path, local_embedder)
    try:
        given = _unit_rows(1, seed=3)[0]  # not what the embedder makes of the text
        checked, other = record("m-1", "The user rows."), record("m-2", "The user sails.")
        outcome = {"id": "imp_1", "status": "completed"}
        await store.memories.import_records(
            "acme", [checked, other], outcome, embedded={checked.text: given}
        )
        stored = await store.memories.vectors("acme", ["m-1", "m-2"])
        assert np.array_equal(np.asarray(stored["m-1"], np.float32), given)
        [made] = await local_embedder.embed([other.text])
        assert np.allclose(stored["m-2"], made)
    finally:
        await store.close()


@BOTH_DATABASES
async def test_count_written_counts_todays_records_up_to_the_limit(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    try:
        memories = store.memories
        now = time.time()
        old = [NewMemory("fact", f"Old fact {i}.", created_at=now - 3 * 86_400) for i in range(3)]
        new = [NewMemory("fact", f"New fact {i}.", status="rejected") for i in range(4)]
        await memories.add(ALICE, [*old, *new])
        written = await memories.add(ALICE, [NewMemory("fact", "Erased today.")])
        await memories.delete(ALICE, written[0].id, actor="test")
        await memories.add(Scope("acme", "bob"), [NewMemory("fact", "Bob's fact.")])

        since = now - 86_400
        assert await memories.count_written(ALICE, since=since, limit=100) == 4
        assert await memories.count_written(ALICE, since=since, limit=2) == 2
        assert await memories.count_written(ALICE, since=now - 4 * 86_400, limit=100) == 7
    finally:
        await store.close()


@pytest.mark.parametrize("size", [200, 3_000])  # 3,000: ranked by blocks of rows first
async def test_a_batch_of_queries_finds_what_each_query_finds_alone(size: int) -> None:
    rows = _unit_rows(size, 6)
    scope = ScopeVectors(384)
    for i, vector in enumerate(rows):
        status = "quarantined" if i % 7 == 0 else "active"
        kind = "case" if i % 3 == 0 else "fact"
        expires = 50.0 if i % 11 == 0 else None
        scope.upsert(IndexRow(f"m{i}", "t", "u", kind, status, expires, "", vector))
    queries = _unit_rows(5, 7)
    options: dict[str, Any] = {"kinds": ["fact"], "statuses": ["active"], "now": 100.0}
    batched = scope.search_many(queries, 9, **options)
    alone = [await scope.search(query, 9, **options) for query in queries]
    assert [[hit.id for hit in hits] for hits in batched] == [[h.id for h in a] for a in alone]
    scores = [hit.score for hits in batched for hit in hits]
    assert scores == pytest.approx([hit.score for hits in alone for hit in hits], abs=1e-5)
    assert all(len(hits) == 9 for hits in batched)


async def test_a_batch_over_a_wide_scope_returns_only_the_few_rows_that_pass() -> None:
    scope = ScopeVectors(384)
    for i, vector in enumerate(_unit_rows(3_000, 8)):
        kind = "case" if i % 500 == 0 else "fact"  # 6 cases among 3,000 rows
        scope.upsert(IndexRow(f"m{i}", "t", "u", kind, "active", None, "", vector))
    queries = _unit_rows(4, 9)
    options: dict[str, Any] = {"kinds": ["case"], "statuses": ["active"], "now": 100.0}
    batched = scope.search_many(queries, 10, **options)
    alone = [await scope.search(query, 10, **options) for query in queries]
    assert [[hit.id for hit in hits] for hits in batched] == [[h.id for h in a] for a in alone]
    assert all(
        sorted(hit.id for hit in hits) == sorted(f"m{i}" for i in range(0, 3_000, 500))
        for hits in batched
    )
