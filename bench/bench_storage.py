"""Storage: scope-filtered hybrid search latency, insert throughput, index build, embedding.

One store (real SQLite + LanceDB) grows through 1k, 10k and 100k memories per tenant with 10
tenants (10k, 100k, 1M rows). At each size: background maintenance is run once and timed (the
index build: full-text fold-in, compaction, and the ANN index of each tenant's table once it
is big enough), then `store.memories.search` (vector + BM25 for one user's scope including the
tenant-shared records, k=30, checked against SQLite) is timed over distinct queries: p50/p99.
Recall is measured too: for every query, the vector candidates `store.memories.search`
returned against the exact top 30 by numpy over that scope's vectors (an ANN index trades
recall for speed; this says how much). Last, a user of 10k memories is added to the largest
tenant and searched the same way: a scope the store keeps in memory inside a large tenant.
Beside it, the floor LanceDB itself sets, on one tenant's table through its own connection:
the round trip of an indexed point lookup (what any LanceDB query costs from Python), and for
the same BM25 and IVF queries the store runs, round trip against the time LanceDB reports
spending in execution (`analyze_plan`); the difference is planning and the hand-offs between
its runtime and asyncio.

Bulk rows carry synthetic topic-clustered vectors and texts (embedding a million texts with
MiniLM would take hours on this machine); the insert path is otherwise the real one
(`store.memories.add` with vectors: SQLite transaction, outbox, index upsert). Embedding latency
and end-to-end insert throughput with real embedding are measured with the local model.

The targets of the project's speed goal are measured apart, each on a store of its own
(`bench.storage_targets`): a 10k-record user inside one tenant of 1M rows, and a single scope of
100k records, both after maintenance has built the indexes.

`BENCH_STORAGE_PARTS` (comma-separated: embedding, sizes, targets; default all) picks what runs,
e.g. `BENCH_STORAGE_PARTS=targets`; `BENCH_STORAGE_SIZES` (default "1000,10000,100000") the
per-tenant sizes; `BENCH_SCALE` scales query counts. `MEMENTO_INDEX_URI` (and the AWS_*
variables) puts the index on object storage, as for the proxy. Results: a table on stdout and
bench/results/storage.json (a run of some parts keeps the others' last results there).
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import lancedb

from bench.storage_corpus import Corpus, SearchedScopes, percentile, search_latencies
from bench.storage_targets import scope_targets
from storage import EmbeddedStore
from storage.embedders import LocalEmbedder
from storage.index_location import IndexLocation
from storage.index_schema import (
    scope_filter,
    scope_key,
    sql_literal,
    table_name,
    text_query,
    vector_query,
)
from storage.index_settings import MaintenanceSettings
from storage.records import NewMemory, Scope
from storage.store import open_embedded_store

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "storage.json"
SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
# The largest step holds 10 tenants x 100k memories, whose prewarmed indexes (~1.6 KB a memory)
# outgrow the default 1 GiB index cache: size it for them, as an operator at that scale would.
os.environ.setdefault("MEMENTO_INDEX_CACHE_MB", "2048")
SIZES = [int(n) for n in os.environ.get("BENCH_STORAGE_SIZES", "1000,10000,100000").split(",")]
TENANTS = 10
QUERIES = max(20, int(300 * SCALE))
LOAD_BATCH = 5_000
SHARED_EVERY = 10  # one memory in ten is tenant-shared; the rest belong to the searched user
HOT_USER_MEMORIES = 10_000  # a user of this size is searched inside the largest tenant
PARTS = os.environ.get("BENCH_STORAGE_PARTS", "embedding,sizes,targets").split(",")


def _user_scope(tenant: int) -> Scope:
    return Scope(f"tenant{tenant}", "user0")


def _round_robin(n: int) -> tuple[Scope, int]:
    """The n-th query searches tenant n mod TENANTS's user (keyed by its tenant's number)."""
    return _user_scope(n % TENANTS), n % TENANTS


async def _load(
    store: EmbeddedStore, corpus: Corpus, per_tenant: int, scopes: SearchedScopes
) -> float:
    """Grow every tenant by `per_tenant` memories through `store.memories.add`; returns seconds."""
    started = time.perf_counter()
    for tenant in range(TENANTS):
        remaining = per_tenant
        while remaining > 0:
            count = min(LOAD_BATCH, remaining)
            texts, vectors = corpus.memories(count)
            shared = [i for i in range(count) if i % SHARED_EVERY == 0]
            own = [i for i in range(count) if i % SHARED_EVERY != 0]
            for scope, idx in ((_user_scope(tenant), own), (Scope(f"tenant{tenant}"), shared)):
                records = await store.memories.add(
                    scope,
                    [NewMemory(kind="fact", text=texts[i]) for i in idx],
                    # The store takes any rows of floats; an array spares a million tolist()s.
                    vectors=cast(Sequence[Sequence[float]], vectors[idx]),
                )
                scopes.add(tenant, [record.id for record in records], vectors[idx])
            remaining -= count
    return time.perf_counter() - started


async def _hot_user(store: EmbeddedStore, corpus: Corpus, per_tenant: int) -> dict[str, Any]:
    """Hybrid search for a user of HOT_USER_MEMORIES records inside tenant 0 at its largest size:
    a scope the store keeps in memory, so its cost should follow the scope, not the tenant."""
    scope = Scope("tenant0", "hot-user")
    for start in range(0, HOT_USER_MEMORIES, LOAD_BATCH):
        texts, vectors = corpus.memories(min(LOAD_BATCH, HOT_USER_MEMORIES - start))
        await store.memories.add(
            scope,
            [NewMemory(kind="fact", text=text) for text in texts],
            vectors=cast(Sequence[Sequence[float]], vectors),
        )
    await store.maintenance.maintain()
    queries = corpus.queries(QUERIES)
    latencies = []
    for n, (text, vector) in enumerate([*queries[:10], *queries]):
        started = time.perf_counter()
        await store.memories.search(
            scope, query_text=text, query_vector=vector, k=30, include_shared=True
        )
        if n >= 10:  # the first searches load the scope
            latencies.append((time.perf_counter() - started) * 1000)
    row = {
        "memories": HOT_USER_MEMORIES,
        "tenant_rows": per_tenant + HOT_USER_MEMORIES,
        "hybrid_p50_ms": percentile(latencies, 50),
        "hybrid_p99_ms": percentile(latencies, 99),
    }
    print(
        f"  a {HOT_USER_MEMORIES:,}-memory user in a tenant of {row['tenant_rows']:,} rows: "
        f"hybrid p50 {row['hybrid_p50_ms']:.2f} ms p99 {row['hybrid_p99_ms']:.2f} ms",
        flush=True,
    )
    return row


def _plan_elapsed_ms(plan: str) -> float | None:
    """The execution time on the first line of an `analyze_plan` report."""
    found = re.search(r"elapsed=([0-9.]+)(ns|µs|us|ms|s)\b", plan)
    if found is None:
        return None
    scale = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]
    return float(found.group(1)) * scale


async def _lancedb_floor(
    folder: Path, queries: list[tuple[str, list[float]]], some_id: str
) -> dict[str, float | None]:
    """Round trips of LanceDB queries on tenant 0's table, and their execution time inside
    LanceDB for the store's BM25 and vector queries (same filter, k and probe count)."""
    location = IndexLocation.from_env(folder)  # where the store put it
    db = await lancedb.connect_async(location.uri, storage_options=location.storage_options)
    table = await db.open_table(table_name(_user_scope(0).tenant_id))
    keys = [scope_key("tenant0", "user0"), scope_key("tenant0", None)]
    where = scope_filter(keys, kinds=None, statuses=["active"])
    indexed = {index.name for index in await table.list_indices()}
    nprobes = MaintenanceSettings().nprobes if "vector_idx" in indexed else None

    def point_query(_: Any) -> Any:
        return table.query().where(f"id = {sql_literal(some_id)}").select(["id"]).limit(1)

    Query = tuple[str, list[float]]
    kinds: list[tuple[str, Callable[[Any], Any], Callable[[Query], Any]]] = [
        ("point", point_query, lambda q: q),
        ("bm25", lambda text: text_query(table, text, where, 30), lambda q: q[0]),
        ("vector", lambda vector: vector_query(table, vector, where, 30, nprobes), lambda q: q[1]),
    ]
    measured: dict[str, float | None] = {}
    for name, make, pick in kinds:
        round_trips, executions = [], []
        for query in queries:
            started = time.perf_counter()
            await make(pick(query)).to_arrow()
            round_trips.append((time.perf_counter() - started) * 1000)
            if name != "point":
                elapsed = _plan_elapsed_ms(await make(pick(query)).analyze_plan())
                if elapsed is not None:
                    executions.append(elapsed)
        measured[f"lancedb_{name}_p50_ms"] = percentile(round_trips, 50)
        if name != "point":
            measured[f"lancedb_{name}_exec_p50_ms"] = (
                percentile(executions, 50) if executions else None
            )
    return measured


async def _embedding(embedder: LocalEmbedder) -> dict[str, float]:
    await embedder.embed(["warm up the model"])
    single = []
    for i in range(int(40 * SCALE) or 10):
        started = time.perf_counter()
        await embedder.embed([f"what did I say about my trip number {i} to the mountains?"])
        single.append((time.perf_counter() - started) * 1000)
    batch = []
    for run in range(5):
        texts = [f"memory {run}-{i}: I prefer window seats on long flights" for i in range(64)]
        started = time.perf_counter()
        await embedder.embed(texts)
        batch.append((time.perf_counter() - started) * 1000)
    return {
        "embed_1_p50_ms": percentile(single, 50),
        "embed_1_p99_ms": percentile(single, 99),
        "embed_64_p50_ms": percentile(batch, 50),
    }


async def _insert_with_embedding(store: EmbeddedStore) -> dict[str, float]:
    scope = Scope("insert-bench", "user0")
    total = 512
    started = time.perf_counter()
    for start in range(0, total, 64):
        await store.memories.add(
            scope,
            [
                NewMemory(kind="fact", text=f"I visited city {start + i} last year")
                for i in range(64)
            ],
        )
    batched = total / (time.perf_counter() - started)
    single = []
    for i in range(20):
        t0 = time.perf_counter()
        await store.memories.add(scope, [NewMemory(kind="fact", text=f"My locker number is {i}")])
        single.append((time.perf_counter() - t0) * 1000)
    return {"insert_embedded_per_s": batched, "insert_one_p50_ms": percentile(single, 50)}


async def _sizes(embedder: LocalEmbedder, corpus: Corpus) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": []}
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as folder:
        store = await open_embedded_store(Path(folder), embedder, maintenance_interval_s=0)
        try:
            loaded = 0
            scopes = SearchedScopes()
            for per_tenant in SIZES:
                grow = per_tenant - loaded
                load_s = await _load(store, corpus, grow, scopes)
                loaded = per_tenant
                started = time.perf_counter()
                await store.maintenance.maintain()
                build_s = time.perf_counter() - started
                queries = corpus.queries(QUERIES)
                await search_latencies(store, queries[:10], scopes, _round_robin)  # warm caches
                latencies = await search_latencies(store, queries, scopes, _round_robin)
                floor = await _lancedb_floor(Path(folder), queries[:100], scopes.first_id(0))
                row = {
                    "per_tenant": per_tenant,
                    "total_rows": await store.index.index.count(),
                    "bulk_insert_per_s": grow * TENANTS / load_s,
                    "index_build_s": build_s,
                    **latencies,
                    **floor,
                }
                results["sizes"].append(row)
                _print_row(row)
            results["hot_user"] = await _hot_user(store, corpus, loaded)
        finally:
            await store.close()
    return results


async def _embedding_and_insert(embedder: LocalEmbedder) -> dict[str, Any]:
    results: dict[str, Any] = {"embedding": await _embedding(embedder)}
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as folder:
        store = await open_embedded_store(Path(folder), embedder, maintenance_interval_s=0)
        try:
            results["insert"] = await _insert_with_embedding(store)
        finally:
            await store.close()
    return results


async def run() -> dict[str, Any]:
    embedder = LocalEmbedder(cache_size=0)
    await embedder.load()
    corpus = Corpus()
    results: dict[str, Any] = {}
    if "embedding" in PARTS:
        results.update(await _embedding_and_insert(embedder))
    if "sizes" in PARTS:
        results.update(await _sizes(embedder, corpus))
    if "targets" in PARTS:
        results["targets"] = await scope_targets(embedder, corpus, QUERIES)
    return results


def _print_row(row: dict[str, Any]) -> None:
    print(
        f"  {row['per_tenant']:>7} /tenant  rows {row['total_rows']:>8}  "
        f"hybrid p50 {row['hybrid_p50_ms']:6.2f} ms p99 {row['hybrid_p99_ms']:7.2f} ms  "
        f"(vector p50 {row['vector_p50_ms']:.2f}, bm25 p50 {row['bm25_p50_ms']:.2f})  "
        f"recall@30 {row['vector_recall_at_30']:.3f} (min {row['vector_recall_at_30_min']:.2f})  "
        f"bulk insert {row['bulk_insert_per_s']:8.0f}/s  index build {row['index_build_s']:.1f} s",
        flush=True,
    )
    print(
        f"           LanceDB alone: point lookup {row['lancedb_point_p50_ms']:.2f} ms; bm25 "
        f"{row['lancedb_bm25_p50_ms']:.2f} ms ({_ms(row['lancedb_bm25_exec_p50_ms'])} executing); "
        f"vector {row['lancedb_vector_p50_ms']:.2f} ms "
        f"({_ms(row['lancedb_vector_exec_p50_ms'])} executing)",
        flush=True,
    )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def _print_sizes(results: dict[str, Any]) -> None:
    print()
    print(
        "| memories / tenant | rows | hybrid p50 ms | hybrid p99 ms | vector p50 | bm25 p50 "
        "| vector recall@30 (min) | bulk insert /s | index build s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results["sizes"]:
        print(
            f"| {row['per_tenant']:,} | {row['total_rows']:,} | {row['hybrid_p50_ms']:.2f} | "
            f"{row['hybrid_p99_ms']:.2f} | {row['vector_p50_ms']:.2f} | {row['bm25_p50_ms']:.2f} "
            f"| {row['vector_recall_at_30']:.3f} ({row['vector_recall_at_30_min']:.2f}) "
            f"| {row['bulk_insert_per_s']:,.0f} | {row['index_build_s']:.1f} |"
        )
    print()
    print("LanceDB alone, tenant 0's table, same queries: round trip (executing, per analyze_plan)")
    print("| memories / tenant | point lookup ms | bm25 ms | vector ms |")
    print("|---|---|---|---|")
    for row in results["sizes"]:
        print(
            f"| {row['per_tenant']:,} | {row['lancedb_point_p50_ms']:.2f} "
            f"| {row['lancedb_bm25_p50_ms']:.2f} ({_ms(row['lancedb_bm25_exec_p50_ms'])}) "
            f"| {row['lancedb_vector_p50_ms']:.2f} ({_ms(row['lancedb_vector_exec_p50_ms'])}) |"
        )


def _print_embedding(results: dict[str, Any]) -> None:
    emb, ins = results["embedding"], results["insert"]
    print()
    print(
        f"embedding (local MiniLM): 1 text p50 {emb['embed_1_p50_ms']:.1f} ms "
        f"(p99 {emb['embed_1_p99_ms']:.1f}), batch of 64 p50 {emb['embed_64_p50_ms']:.0f} ms"
    )
    print(
        f"insert with embedding: {ins['insert_embedded_per_s']:.0f} memories/s in adds of 64; "
        f"one-memory add p50 {ins['insert_one_p50_ms']:.1f} ms"
    )


def main() -> None:
    faulthandler.dump_traceback_later(3600, exit=False)  # say where it is if it ever stalls
    results = asyncio.run(run())
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    if "sizes" in results:
        results["tenants"] = TENANTS
        results["queries_per_size"] = QUERIES
        _print_sizes(results)
    if "embedding" in results:
        _print_embedding(results)
    # A run of some parts keeps the other parts' last results.
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({**kept, **results}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
