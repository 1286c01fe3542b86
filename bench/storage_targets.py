"""The speed targets of hybrid search, each measured on a store of its own: a 10k-record user
inside one tenant of 1M rows (its cost should follow the scope, not the tenant), and a single
scope of 100k records (too large for the in-memory copy: searched through LanceDB).

The tenant of 1M rows is 100 users of 10k memories each, no tenant-shared records; one of
them is searched. Every scope is written through `store.memories.add` with precomputed vectors
(SQLite transaction, outbox, index upsert), 10k records an add, one user's import at a time.
Then background maintenance runs once, as a running proxy's would (full-text fold-in,
compaction, the tenant's IVF index, prewarming), and is timed; then the searches.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from bench.storage_corpus import Corpus, SearchedScopes, search_latencies
from storage import EmbeddedStore
from storage.embedders import LocalEmbedder
from storage.records import NewMemory, Scope
from storage.store import open_embedded_store

# Smaller values make a quick trial run of the same code.
TENANT_ROWS = int(os.environ.get("BENCH_STORAGE_TENANT_ROWS", "1000000"))
SCOPE_ROWS = int(os.environ.get("BENCH_STORAGE_SCOPE_ROWS", "100000"))
USER_ROWS = 10_000
ADD_BATCH = 10_000


async def _add(
    store: EmbeddedStore, corpus: Corpus, scope: Scope, rows: int, scopes: SearchedScopes | None
) -> None:
    for start in range(0, rows, ADD_BATCH):
        texts, vectors = corpus.memories(min(ADD_BATCH, rows - start))
        records = await store.memories.add(
            scope,
            [NewMemory(kind="fact", text=text) for text in texts],
            # The store takes any rows of floats; an array spares a million tolist()s.
            vectors=cast(Sequence[Sequence[float]], vectors),
        )
        if scopes is not None:
            scopes.add(scope, [record.id for record in records], vectors)


async def _search(
    store: EmbeddedStore, corpus: Corpus, scope: Scope, scopes: SearchedScopes, queries: int
) -> dict[str, Any]:
    asked = corpus.queries(queries + 10)
    started = time.perf_counter()
    await store.memories.search(
        scope, query_text=asked[0][0], query_vector=asked[0][1], k=30, include_shared=True
    )
    first_ms = (time.perf_counter() - started) * 1000  # loads the scope when it is kept in memory
    await search_latencies(store, asked[1:10], scopes, lambda _: (scope, scope))  # warm up
    measured = await search_latencies(store, asked[10:], scopes, lambda _: (scope, scope))
    in_memory = store.index.vector_cache.get(scope.tenant_id, scope.user_id) is not None
    return {
        "queries": queries,
        "first_search_ms": first_ms,
        "searched_in_memory": in_memory,
        **measured,
    }


async def _measure(
    embedder: LocalEmbedder,
    corpus: Corpus,
    queries: int,
    users: list[tuple[Scope, int]],
    searched: Scope,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-storage-targets-") as folder:
        store = await open_embedded_store(Path(folder), embedder, maintenance_interval_s=0)
        try:
            scopes = SearchedScopes()
            started = time.perf_counter()
            for scope, rows in users:
                await _add(store, corpus, scope, rows, scopes if scope == searched else None)
            load_s = time.perf_counter() - started
            started = time.perf_counter()
            await store.maintenance.maintain()
            build_s = time.perf_counter() - started
            total = sum(rows for _, rows in users)
            return {
                "tenant_rows": await store.index.index.count(searched.tenant_id),
                "scope_rows": next(rows for scope, rows in users if scope == searched),
                "load_s": load_s,
                "bulk_insert_per_s": total / load_s,
                "index_build_s": build_s,
                **await _search(store, corpus, searched, scopes, queries),
            }
        finally:
            await store.close()


async def scope_targets(embedder: LocalEmbedder, corpus: Corpus, queries: int) -> dict[str, Any]:
    """Both targets: `scope_100k` (one user of SCOPE_ROWS records, alone in its tenant) and
    `tenant_1m` (a user of 10k records among TENANT_ROWS in one tenant)."""
    results: dict[str, Any] = {}
    single = Scope("one-scope", "user0")
    results["scope_100k"] = row = await _measure(
        embedder, corpus, queries, [(single, SCOPE_ROWS)], single
    )
    _print("a single scope", row)
    users = [
        (Scope("big-tenant", f"user{n:03d}"), USER_ROWS) for n in range(TENANT_ROWS // USER_ROWS)
    ]
    searched = users[len(users) // 2][0]
    results["tenant_1m"] = row = await _measure(embedder, corpus, queries, users, searched)
    _print("a user in one large tenant", row)
    return results


def _print(what: str, row: dict[str, Any]) -> None:
    print(
        f"  {what}: {row['scope_rows']:,} records of a tenant of {row['tenant_rows']:,} rows "
        f"(loaded in {row['load_s']:.0f} s, {row['bulk_insert_per_s']:,.0f}/s; maintenance "
        f"{row['index_build_s']:.1f} s; in memory: {row['searched_in_memory']}): hybrid p50 "
        f"{row['hybrid_p50_ms']:.2f} ms p99 {row['hybrid_p99_ms']:.2f} ms (vector p50 "
        f"{row['vector_p50_ms']:.2f}, bm25 p50 {row['bm25_p50_ms']:.2f}, first search "
        f"{row['first_search_ms']:.0f} ms) recall@30 {row['vector_recall_at_30']:.3f} "
        f"(min {row['vector_recall_at_30_min']:.2f})",
        flush=True,
    )
