"""The in-memory vector cache: exact, filtered, and never out of step with SQLite.

Hypothesis runs random sequences of writes (add, update of text, kind or status, supersede,
delete, delete a user, expiry) against a real store whose scopes are cached, then checks that
every cached scope holds exactly what a fresh load from SQLite would, and that a search served
from the cache returns what the same search through LanceDB (flat, exact) returns.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import storage.vector_cache
from storage import EmbeddedStore
from storage.embedders import LocalEmbedder
from storage.index_schema import IndexRow, ScopeRows
from storage.records import NewMemory, Scope
from storage.store import open_embedded_store
from storage.vector_cache import (
    OFF_LOOP_SCAN_ROWS,
    ScopeVectors,
    VectorCache,
    VectorCacheSettings,
)

DIM = 4


def _row(memory_id: str, vector: list[float], **fields: object) -> IndexRow:
    values: dict[str, object] = {
        "tenant_id": "t",
        "user_id": "u",
        "kind": "fact",
        "status": "active",
        "expires_at": None,
    }
    values.update(fields)
    unit = np.asarray(vector, dtype=np.float32)
    return IndexRow(
        id=memory_id,
        search_text="",
        vector=unit / np.linalg.norm(unit),
        **values,  # type: ignore[arg-type]
    )


def _rows(user_id: str, count: int) -> ScopeRows:
    """A scope's rows as a load reads them: `count` of them for `user_id`."""
    rows = [_row(f"{user_id}{i}", [1, i, 0, 0], user_id=user_id) for i in range(count)]
    return ScopeRows.of(rows, DIM)


async def test_scope_search_is_exact_and_filtered() -> None:
    scope = ScopeVectors(DIM, capacity=2)  # grows past its first capacity
    scope.upsert(_row("near", [1, 0.1, 0, 0]))
    scope.upsert(_row("nearest-but-quarantined", [1, 0, 0, 0], status="quarantined"))
    scope.upsert(_row("lesson", [1, 0.05, 0, 0], kind="lesson"))
    scope.upsert(_row("expired", [1, 0.01, 0, 0], expires_at=100.0))
    scope.upsert(_row("far", [0, 1, 0, 0]))
    query = np.asarray([1, 0, 0, 0], dtype=np.float32)

    hits = await scope.search(query, 10, kinds=["fact", "case"], statuses=["active"], now=200.0)
    assert [hit.id for hit in hits] == ["near", "far"]
    near = scope.vector("near")
    assert near is not None and hits[0].score == pytest.approx(-float(near @ query))
    assert [h.id for h in await scope.search(query, 1, kinds=None, statuses=[], now=50.0)] == [
        "nearest-but-quarantined"
    ]
    scope.remove("near")  # the last row moves into its place
    scope.remove("unknown")
    assert sorted(scope.ids) == ["expired", "far", "lesson", "nearest-but-quarantined"]
    assert [h.id for h in await scope.search(query, 2, kinds=None, statuses=[], now=50.0)] == [
        "nearest-but-quarantined",
        "expired",
    ]


def test_least_recently_searched_scopes_leave_first() -> None:
    one_scope = ScopeVectors(DIM)
    for i in range(100):
        one_scope.upsert(_row(f"x{i}", [1, i, 0, 0]))
    cache = VectorCache(
        DIM, VectorCacheSettings(max_rows=500, max_bytes=int(2.5 * one_scope.nbytes))
    )
    for user in ("a", "b"):
        cache.load("t", user, _rows(user, 100))
    assert cache.get("t", "a") is not None  # now "b" is the least recently used
    cache.load("t", "c", _rows("c", 100))
    assert cache.get("t", "b") is None
    assert cache.get("t", "a") is not None and cache.get("t", "c") is not None
    # A scope that grows past max_rows is dropped: the ANN index serves it from then on.
    small = VectorCache(DIM, VectorCacheSettings(max_rows=3))
    small.load("t", "u", ScopeRows.of([_row(f"r{i}", [1, i, 0, 0]) for i in range(3)], DIM))
    small.apply([_row("r0", [0, 1, 0, 0])], [])  # an update of a cached row is fine
    assert small.get("t", "u") is not None
    small.apply([_row("r3", [0, 0, 1, 0])], [])
    assert small.get("t", "u") is None


@pytest.fixture(scope="module")
def runner_and_store(
    tmp_path_factory: pytest.TempPathFactory, local_embedder: LocalEmbedder
) -> Iterator[tuple[asyncio.Runner, EmbeddedStore]]:
    data: Path = tmp_path_factory.mktemp("vector-cache")
    with asyncio.Runner() as runner:
        store = runner.run(open_embedded_store(data, local_embedder, maintenance_interval_s=0))
        yield runner, store
        runner.run(store.close())


USERS = [None, "ann", "bob"]
WORDS = ["harbour", "violin", "quince", "glacier", "tandem", "saffron"]
operations = st.lists(
    st.tuples(
        st.sampled_from(
            ["add", "text", "kind", "status", "supersede", "delete", "erase", "expire"]
        ),
        st.sampled_from(USERS),
        st.integers(min_value=0, max_value=50),
        st.sampled_from(WORDS),
    ),
    min_size=1,
    max_size=14,
)


async def _apply(
    store: EmbeddedStore, tenant: str, ops: list[tuple[str, str | None, int, str]]
) -> None:
    for op, user, pick, word in ops:
        scope = Scope(tenant, user)
        if op == "add" or (op == "erase" and user is None):
            await store.memories.add(scope, [NewMemory(kind="fact", text=f"{word} note {pick}")])
            continue
        if op == "erase":
            assert user is not None
            await store.memories.delete_user(tenant, user, actor="test")
            continue
        live = await store.memories.list(scope, statuses=["active", "quarantined", "rejected"])
        if not live:
            continue
        target = live[pick % len(live)]
        if op == "text":
            await store.memories.update(scope, target.id, text=f"{word} rewritten {pick}")
        elif op == "kind":
            await store.memories.update(
                scope, target.id, kind="preference" if pick % 2 else "lesson"
            )
        elif op == "status":
            await store.memories.update(
                scope, target.id, status=["quarantined", "rejected", "active"][pick % 3]
            )
        elif op == "supersede":
            await store.memories.supersede(
                scope, target.id, NewMemory(kind="fact", text=f"now {word}")
            )
        elif op == "delete":
            await store.memories.delete(scope, target.id, actor="test")
        elif op == "expire":
            await store.memories.update(scope, target.id, expires_at=time.time() - 1)


async def _check(store: EmbeddedStore, ops: list[tuple[str, str | None, int, str]]) -> None:
    tenant = uuid.uuid4().hex[:8]
    store.index.vector_cache.settings = (
        VectorCacheSettings()
    )  # the last example may have turned it off
    query = np.asarray((await store.embedder.embed(["a violin in the harbour"]))[0], np.float32)
    for user in USERS:  # cache every scope first, so the writes below must keep them current
        await store.memories.warm(Scope(tenant, user))
    await _apply(store, tenant, ops)
    for user in USERS:
        cached = store.index.vector_cache.get(tenant, user)
        assert cached is not None
        rows = await store.index.scope_rows(tenant, user)
        truth = dict(zip(rows.ids, rows.vectors, strict=True))
        assert sorted(cached.ids) == sorted(truth)
        everything = await cached.search(query, 10_000, kinds=None, statuses=[], now=0.0)
        for hit in everything:
            assert np.allclose(cached.vector(hit.id), truth[hit.id])
        # Its posting lists say what a fresh copy's say: the same BM25 score for every word.
        fresh = VectorCache(store.index.vector_cache.dimensions).load(tenant, user, rows)
        for word in [*WORDS, "note rewritten now"]:
            kept = cached.match(word, 10_000, kinds=None, statuses=[], now=0.0)
            loaded = fresh.match(word, 10_000, kinds=None, statuses=[], now=0.0)
            assert sorted((hit.id, round(hit.score, 4)) for hit in kept) == sorted(
                (hit.id, round(hit.score, 4)) for hit in loaded
            )
        # The same search served from the cache and by LanceDB's exact flat search.
        for include_shared in (False, True):
            scope = Scope(tenant, user)
            searches = []
            for enabled in (True, False):
                store.index.vector_cache.settings = VectorCacheSettings(
                    max_bytes=(256 << 20) * enabled
                )
                hits = await store.memories.search(
                    scope,
                    query_text="",
                    query_vector=query.tolist(),
                    k=100,
                    include_shared=include_shared,
                )
                searches.append([(round(hit.cosine or 0.0, 4), hit.record.id) for hit in hits])
            cached_hits, indexed_hits = searches  # equal texts tie: compare order by score
            assert sorted(cached_hits) == sorted(indexed_hits)
            assert [c for c, _ in cached_hits] == [c for c, _ in indexed_hits]
            # BM25 in process finds the records LanceDB's full-text index finds.
            for word in ("violin", "harbour rewritten", "quince now"):
                found = []
                for enabled in (True, False):
                    store.index.vector_cache.settings = VectorCacheSettings(
                        max_bytes=(256 << 20) * enabled
                    )
                    hits = await store.memories.search(
                        scope, query_text=word, k=100, include_shared=include_shared
                    )
                    found.append(sorted(hit.record.id for hit in hits))
                assert found[0] == found[1]


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
def test_cached_scopes_follow_every_write(
    runner_and_store: tuple[asyncio.Runner, EmbeddedStore],
    ops: list[tuple[str, str | None, int, str]],
) -> None:
    runner, store = runner_and_store
    runner.run(_check(store, ops))


def _large_scope(rows: int) -> ScopeVectors:
    scope = ScopeVectors(DIM, capacity=rows)
    rng = np.random.default_rng(7)
    for number, vector in enumerate(rng.standard_normal((rows, DIM))):
        scope.upsert(_row(f"m{number}", vector.tolist()))
    return scope


async def test_a_large_scope_is_scored_off_the_loop_and_a_small_one_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[int] = []
    scored = storage.vector_cache._nearest

    def recorded(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return scored(*args)

    monkeypatch.setattr(storage.vector_cache, "_nearest", recorded)
    query = np.asarray([1, 0, 0, 0], dtype=np.float32)
    filters: dict[str, Any] = {"kinds": ["fact"], "statuses": ["active"], "now": 0.0}
    large = _large_scope(OFF_LOOP_SCAN_ROWS)
    hits = await large.search(query, 5, **filters)
    assert threads and threads[-1] != threading.get_ident()
    exact = np.argsort(-(np.stack([large.vector(i) for i in large.ids]) @ query))[:5]
    assert [hit.id for hit in hits] == [large.ids[i] for i in exact]
    small = _large_scope(OFF_LOOP_SCAN_ROWS - 1)
    await small.search(query, 5, **filters)
    assert threads[-1] == threading.get_ident()


async def test_rows_changed_during_an_off_loop_scan_are_scored_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outbox batch lands on the loop while the thread scores: the scan's positions may
    name rows that moved or left, so the scope is scored again, never answered from them."""
    scope = _large_scope(OFF_LOOP_SCAN_ROWS)
    query = np.asarray([1, 0, 0, 0], dtype=np.float32)
    filters: dict[str, Any] = {"kinds": ["fact"], "statuses": ["active"], "now": 0.0}
    best = (await scope.search(query, 1, **filters))[0].id
    scanning, release = threading.Event(), threading.Event()
    scored = storage.vector_cache._nearest

    def held(*args: Any) -> Any:
        found = scored(*args)
        scanning.set()
        release.wait(10)
        return found

    monkeypatch.setattr(storage.vector_cache, "_nearest", held)
    search = asyncio.ensure_future(scope.search(query, 3, **filters))
    await asyncio.to_thread(scanning.wait, 10)
    scope.remove(best)  # the last row moves into its place
    release.set()
    hits = await search
    assert best not in [hit.id for hit in hits]
    monkeypatch.setattr(storage.vector_cache, "_nearest", scored)
    assert hits == await scope.search(query, 3, **filters)
