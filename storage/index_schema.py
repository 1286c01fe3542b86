"""What the derived index holds and how it is asked: one table per tenant and generation, the
rows and hits, the scope prefilter and the two queries (vector and BM25) a search sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from storage.records import MemoryKind, MemoryStatus

# Which index text (`storage.sqlite.outbox.search_text_of`) the records' stored `search_text`
# and the index's tables hold (2 added the dates a memory speaks of, 3 who speaks, without the
# names a turn only addresses). Bump it when that function changes what it makes: the store
# then remakes every record's at its next opening, and the index, finding another layout, is
# rebuilt from them.
INDEX_TEXT_VERSION = 3
# Written once the location holds this layout; one without it (new, lost, from the one-table
# layout, from an older index text) is emptied and reported as `created`, and the store
# rebuilds it from SQLite.
LAYOUT_FILE = "layout.json"
LAYOUT = f"table-per-tenant/{INDEX_TEXT_VERSION}"

TABLE_PREFIX = "tenant_"


def table_name(tenant_id: str, generation: int = 0) -> str:
    """The LanceDB table of one tenant in one generation of the index: a hash, so any tenant
    id gives a safe, fixed-length name (table names allow only [A-Za-z0-9_.-]); the rows carry
    the tenant id in clear."""
    name = TABLE_PREFIX + hashlib.sha256(tenant_id.encode("utf-8")).hexdigest()[:32]
    return f"g{generation}_{name}" if generation else name


def ann_file_name(generation: int) -> str:
    """The file in the index's location that records a generation's vector index."""
    return f"vector_index.g{generation}.json" if generation else "vector_index.json"


def generation_of(name: str) -> int | None:
    """The generation a table belongs to, or None for a name that is not a tenant table."""
    if name.startswith(TABLE_PREFIX):
        return 0
    prefix, _, rest = name.partition("_")
    if prefix[:1] == "g" and prefix[1:].isdigit() and rest.startswith(TABLE_PREFIX):
        return int(prefix[1:])
    return None


T = TypeVar("T")

# Rows converted on the event loop at most this many at a time (records into index sources or a
# scope's columns, sources into index rows, rows into Arrow); more go to a worker thread. A row
# costs microseconds to tens of them (JSON, search text, copies): a 10k-memory scope's load, or
# an import's batch, would otherwise hold every request the loop serves for a tenth of a second
# or more.
ON_LOOP_ROWS = 256
# Worker threads walking thousands of rows for background work pause this long every this many
# (`yielding`), where the work is set to make way for the event loop.
YIELD_EVERY = 100
YIELD_PAUSE_S = 0.0005
MAKE_WAY: ContextVar[bool] = ContextVar("memento_make_way", default=False)


def table_schema(dimensions: int) -> pa.Schema:
    """The columns of every tenant table."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("tenant_id", pa.string(), nullable=False),
            pa.field("scope_key", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("expires_at", pa.float64()),
            pa.field("search_text", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dimensions), nullable=False),
        ]
    )


def arrow_rows(rows: Sequence[IndexRow], schema: pa.Schema) -> pa.Table:
    """`rows` as a table of `schema` (`table_schema`), to write."""
    matrix = np.stack([row.vector for row in rows]).astype(np.float32, copy=False)
    dimensions = matrix.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), dimensions)
    return pa.table(
        {
            "id": [row.id for row in rows],
            "tenant_id": [row.tenant_id for row in rows],
            "scope_key": [scope_key(row.tenant_id, row.user_id) for row in rows],
            "kind": [row.kind for row in rows],
            "status": [row.status for row in rows],
            "expires_at": pa.array([row.expires_at for row in rows], pa.float64()),
            "search_text": [row.search_text for row in rows],
            "vector": vectors,
        },
        schema=schema,
    )


def rows_by_tenant(rows: Sequence[IndexRow]) -> dict[str, list[IndexRow]]:
    """`rows` grouped by tenant: each tenant's go to its own table."""
    grouped: dict[str, list[IndexRow]] = {}
    for row in rows:
        grouped.setdefault(row.tenant_id, []).append(row)
    return grouped


async def on_loop_or_thread(rows: int, work: Callable[[], T]) -> T:
    """`work()` on `rows` rows: on the event loop for up to `ON_LOOP_ROWS`, else in a worker
    thread."""
    return work() if rows <= ON_LOOP_ROWS else await asyncio.to_thread(work)


def yielding(items: Iterable[T], every: int = YIELD_EVERY) -> Iterator[T]:
    """`items`, with the worker thread that walks them pausing a moment every `every` items
    when the work is set to make way (`MAKE_WAY`, which `asyncio.to_thread` carries into the
    thread; never on the event loop's thread). Python work in a background thread holds the
    interpreter until a forced switch (every 5 ms), and each of the event loop's many short
    turns (a search's callbacks) waits for one: loading a 10k-memory scope beside searches
    through the index took them from about 60 ms to 270-320, past their deadline, and to
    56-103 ms with these pauses (two runs each). The pauses make the work itself slower, each
    taking the interpreter back from a busy loop: work that a search waits for does not
    pause."""
    if not MAKE_WAY.get():
        yield from items
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # a worker thread: pause
        for number, item in enumerate(items, 1):
            yield item
            if number % every == 0:
                time.sleep(YIELD_PAUSE_S)
    else:
        yield from items


async def arrow_batch(rows: Sequence[IndexRow], schema: pa.Schema) -> pa.Table:
    """`arrow_rows`, in a worker thread for a batch of more than `ON_LOOP_ROWS`."""
    return await on_loop_or_thread(len(rows), lambda: arrow_rows(rows, schema))


def scope_key(tenant_id: str, user_id: str | None) -> str:
    """One string per (tenant, user) scope; JSON so no choice of ids can collide."""
    return json.dumps([tenant_id, user_id], ensure_ascii=True, separators=(",", ":"))


def sql_literal(value: str) -> str:
    """A string literal for a LanceDB (DataFusion) filter."""
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: Sequence[str]) -> str:
    return ", ".join(sql_literal(value) for value in values)


def ids_in(memory_ids: Sequence[str], chunk: int = 1000) -> list[str]:
    """Filters `id IN (...)` covering `memory_ids`, `chunk` ids each (a filter's length stays
    bounded however many ids a batch or a removal names)."""
    return [
        f"id IN ({sql_list(memory_ids[start : start + chunk])})"
        for start in range(0, len(memory_ids), chunk)
    ]


def scope_filter(
    scope_keys: Sequence[str],
    *,
    kinds: Sequence[MemoryKind] | None,
    statuses: Sequence[MemoryStatus],
) -> str:
    """The prefilter of one search: scope, kinds and statuses, each answered by a bitmap index.

    Expiry is not part of it (an unindexed range test would scan the column on every query):
    SQLite re-checks expiry on every hit, and maintenance removes expired rows from the index.
    """
    parts = [f"scope_key IN ({sql_list(scope_keys)})"]
    if kinds:
        parts.append(f"kind IN ({sql_list(kinds)})")
    if statuses:
        parts.append(f"status IN ({sql_list(statuses)})")
    return " AND ".join(parts)


@dataclass(frozen=True)
class IndexRow:
    id: str
    tenant_id: str
    user_id: str | None
    kind: str
    status: str
    expires_at: float | None
    search_text: str
    vector: np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class ScopeRows:
    """One scope's index rows column by column, as its in-memory copy is loaded: thousands of
    rows without an object each, their vectors one matrix."""

    ids: list[str]
    kinds: list[str]
    statuses: list[str]
    expires_at: list[float | None]
    search_texts: list[str]
    vectors: np.ndarray[Any, np.dtype[np.float32]]  # a row per id

    @classmethod
    def of(cls, rows: Sequence[IndexRow], dimensions: int) -> ScopeRows:
        vectors = np.array([row.vector for row in rows], dtype=np.float32)
        return cls(
            [row.id for row in rows],
            [row.kind for row in rows],
            [row.status for row in rows],
            [row.expires_at for row in rows],
            [row.search_text for row in rows],
            vectors.reshape(len(rows), dimensions),
        )

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class IndexHit:
    """An id and its raw score; the record and its vector come from SQLite."""

    id: str
    score: float  # BM25 score for text hits, distance for vector hits


def vector_query(
    table: Any,
    vector: Sequence[float] | np.ndarray[Any, np.dtype[np.float32]],
    where: str,
    k: int,
    nprobes: int | None,
) -> Any:
    """The store's vector query on one tenant's table; `nprobes` once it has an IVF index."""
    query = (
        table.query()
        .nearest_to(np.asarray(vector, dtype=np.float32))
        .distance_type("dot")
        .where(where)
        .select(["id", "_distance"])  # not the vector: nobody needs it, and reading it is slow
        .limit(k)
    )
    if nprobes is not None:
        # A fixed probe count. Leaving the maximum open (more probes only "if not enough
        # results") made LanceDB probe 200 partitions instead of 30 under a filter that
        # matched 90% of the table, several times slower. Small scopes, which a probe
        # could cut short, are searched exactly by the store's vector cache.
        query = query.nprobes(nprobes)
    return query


def text_query(table: Any, text: str, where: str, k: int) -> Any:
    """The store's BM25 query on one tenant's table."""
    return (
        table.query()
        .nearest_to_text(text, columns="search_text")
        .where(where)
        .select(["id", "_score"])
        .limit(k)
    )


def hits_of(result: pa.Table, score_column: str) -> list[IndexHit]:
    if result.num_rows == 0:
        return []
    ids = result.column("id").to_pylist()
    scores = result.column(score_column).to_pylist()
    return [
        IndexHit(id=memory_id, score=float(score))
        for memory_id, score in zip(ids, scores, strict=True)
    ]
