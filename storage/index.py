"""LanceDB: the derived hybrid index (vectors + BM25 full text) over the memory records.

One table holds every tenant's rows; `scope_key` (tenant and user, unambiguously encoded) has a
bitmap index so a scope-filtered search touches only that scope's rows, and the filter is applied
before the search (prefilter), never after. The index never holds more than search needs: ids,
scope, kind, status, expiry, the BM25 text and the vector. Record content comes from SQLite.

Everything here can be rebuilt from SQLite (`EmbeddedStore.reindex`). Maintenance (folding new
rows into the full-text and vector indexes, building the IVF index once the table is large,
compaction, dropping expired rows, pruning old versions so erased content leaves the disk) runs
in the background, called by the store, never on the request path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import FTS, Bitmap, BTree, IvfFlat

from storage.records import MemoryKind, MemoryStatus

log = logging.getLogger("memento.storage.index")

TABLE = "memories"


def scope_key(tenant_id: str, user_id: str | None) -> str:
    """One string per (tenant, user) scope; JSON so no choice of ids can collide."""
    return json.dumps([tenant_id, user_id], ensure_ascii=True, separators=(",", ":"))


def sql_literal(value: str) -> str:
    """A string literal for a LanceDB (DataFusion) filter."""
    return "'" + value.replace("'", "''") + "'"


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join(sql_literal(value) for value in values)


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
    parts = [f"scope_key IN ({_sql_list(scope_keys)})"]
    if kinds:
        parts.append(f"kind IN ({_sql_list(kinds)})")
    if statuses:
        parts.append(f"status IN ({_sql_list(statuses)})")
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
class IndexHit:
    id: str
    score: float  # BM25 score for text hits, distance for vector hits
    vector: np.ndarray[Any, np.dtype[np.float32]]


@dataclass
class MaintenanceSettings:
    """When the background maintenance builds indexes; process-level, not per tenant."""

    vector_index_min_rows: int = 20_000  # below this a prefiltered flat search is fast enough
    # IVF_FLAT: exact distances inside the probed partitions; a query reads about
    # nprobes * rows_per_partition vectors whatever the table size. (IVF_HNSW_SQ took ~300 s to
    # build over 100k rows on the 2-core dev box; IVF_FLAT took ~5 s.)
    rows_per_partition: int = 4_000
    nprobes: int = 20
    # Once the ANN index exists, scopes up to this many records are vector-searched exactly
    # from their stored vectors instead: an IVF probe can miss a small scope's rows.
    exact_search_max_rows: int = 4_000
    prune_older_than: timedelta = timedelta(minutes=5)


class MemoryIndex:
    """The LanceDB table and the operations the store needs on it."""

    def __init__(
        self,
        path: Path,
        db: lancedb.AsyncConnection,
        table: Any,
        dimensions: int,
        settings: MaintenanceSettings,
    ) -> None:
        self._db = db
        self._table = table
        self.dimensions = dimensions
        self.settings = settings
        self._schema = self.schema(dimensions)
        self._vector_indexed = False
        self.created = False  # True when open() found no usable table and made an empty one
        self._ann_file = path / "vector_index.json"  # rows the ANN index was trained on

    @staticmethod
    def schema(dimensions: int) -> pa.Schema:
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

    @classmethod
    async def open(
        cls, path: Path, dimensions: int, settings: MaintenanceSettings | None = None
    ) -> MemoryIndex:
        """Open the index under `path`, creating it (with its scalar and text indexes) if new.

        An index of another vector size is replaced by an empty one: the caller rebuilds it.
        """
        db = await lancedb.connect_async(str(path))
        names = await _table_names(db)
        table: Any = None
        if TABLE in names:
            table = await db.open_table(TABLE)
            schema = await table.schema()
            if schema.field("vector").type.list_size != dimensions:
                table = None
        index = cls(path, db, table, dimensions, settings or MaintenanceSettings())
        if table is None:
            await index._create_empty()
            index.created = True
        await index._refresh_index_state()
        return index

    async def _create_empty(self) -> None:
        self._table = await self._db.create_table(TABLE, schema=self._schema, mode="overwrite")
        await self._ensure_scalar_indexes()

    async def _ensure_scalar_indexes(self) -> None:
        existing = {config.name for config in await self._table.list_indices()}
        for column in ("scope_key", "tenant_id", "status", "kind"):
            if f"{column}_idx" not in existing:
                await self._table.create_index(column, config=Bitmap())
        if "id_idx" not in existing:  # upserts and deletes look rows up by id
            await self._table.create_index("id", config=BTree())
        if "search_text_idx" not in existing:
            await self._table.create_index("search_text", config=FTS(with_position=False))

    async def _refresh_index_state(self) -> None:
        names = {config.name for config in await self._table.list_indices()}
        self._vector_indexed = "vector_idx" in names

    def _to_arrow(self, rows: Sequence[IndexRow]) -> pa.Table:
        matrix = np.stack([row.vector for row in rows]).astype(np.float32, copy=False)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), self.dimensions)
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
            schema=self._schema,
        )

    async def upsert(self, rows: Sequence[IndexRow]) -> None:
        if not rows:
            return
        data = self._to_arrow(rows)
        await (
            self._table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)
        )

    async def append(self, rows: Sequence[IndexRow]) -> None:
        """Add rows known to be new (bulk loads and rebuilds): cheaper than an upsert."""
        if rows:
            await self._table.add(self._to_arrow(rows))

    async def remove(self, memory_ids: Sequence[str]) -> None:
        for start in range(0, len(memory_ids), 1000):
            chunk = memory_ids[start : start + 1000]
            await self._table.delete(f"id IN ({_sql_list(chunk)})")

    async def count(self) -> int:
        return int(await self._table.count_rows())

    async def search_vector(
        self,
        vector: Sequence[float] | np.ndarray[Any, np.dtype[np.float32]],
        where: str,
        k: int,
    ) -> list[IndexHit]:
        query = (
            self._table.query()
            .nearest_to(np.asarray(vector, dtype=np.float32))
            .distance_type("dot")
            .where(where)
            .select(["id", "vector", "_distance"])
            .limit(k)
        )
        if self._vector_indexed:
            query = query.nprobes(self.settings.nprobes)
        result: pa.Table = await query.to_arrow()
        return _hits(result, "_distance")

    async def search_text(self, text: str, where: str, k: int) -> list[IndexHit]:
        if not text.strip():
            return []
        query = (
            self._table.query()
            .nearest_to_text(text, columns="search_text")
            .where(where)
            .select(["id", "vector", "_score"])
            .limit(k)
        )
        result: pa.Table = await query.to_arrow()
        return _hits(result, "_score")

    async def maintain(self) -> dict[str, Any]:
        """Fold new rows into the indexes, compact small fragments, prune old versions.

        Builds the ANN index once the table is large enough for a flat search to be slow.
        Returns what it did, for the log.
        """
        done: dict[str, Any] = {}
        rows = await self.count()
        if rows >= self.settings.vector_index_min_rows and await self._vector_index_stale(rows):
            await self.build_vector_index(rows)
            done["vector_index"] = rows
        await self._ensure_scalar_indexes()
        await self._table.delete(f"expires_at IS NOT NULL AND expires_at <= {time.time()!r}")
        stats = await self._table.optimize(cleanup_older_than=self.settings.prune_older_than)
        done["optimize"] = str(stats)
        return done

    async def _vector_index_stale(self, rows: int) -> bool:
        """No ANN index yet, or the table has doubled since it was trained (its partitions
        no longer fit the data); rows added in between are folded in by `optimize`."""
        if not self._vector_indexed:
            return True
        return rows >= 2 * max(self._trained_rows(), 1)

    def _trained_rows(self) -> int:
        try:
            return int(json.loads(self._ann_file.read_text())["trained_rows"])
        except (OSError, ValueError, KeyError):
            return 0

    async def build_vector_index(self, rows: int | None = None) -> None:
        rows = await self.count() if rows is None else rows
        partitions = max(1, rows // self.settings.rows_per_partition)
        await self._table.create_index(
            "vector",
            config=IvfFlat(distance_type="dot", num_partitions=partitions),
            replace=True,
        )
        self._vector_indexed = True
        self._ann_file.write_text(json.dumps({"trained_rows": rows, "partitions": partitions}))

    @property
    def vector_indexed(self) -> bool:
        """Whether an ANN index exists (else vector searches are exact, flat and prefiltered)."""
        return self._vector_indexed

    async def reset(self) -> None:
        """Drop every row and index (before a rebuild from SQLite)."""
        await self._create_empty()
        self._vector_indexed = False

    async def unindexed_rows(self) -> int:
        """Rows not yet folded into the full-text index (searched by a slower flat scan)."""
        stats = await self._table.index_stats("search_text_idx")
        return int(stats.num_unindexed_rows) if stats is not None else 0


def _hits(result: pa.Table, score_column: str) -> list[IndexHit]:
    if result.num_rows == 0:
        return []
    ids = result.column("id").to_pylist()
    scores = result.column(score_column).to_numpy()
    vectors = result.column("vector").combine_chunks()
    matrix = vectors.values.to_numpy(zero_copy_only=False).reshape(len(ids), -1)
    return [
        IndexHit(id=memory_id, score=float(score), vector=matrix[i])
        for i, (memory_id, score) in enumerate(zip(ids, scores, strict=True))
    ]


async def _table_names(db: lancedb.AsyncConnection) -> list[str]:
    listing = await db.list_tables()
    names = getattr(listing, "tables", listing)
    return list(names)


async def gather_searches(
    index: MemoryIndex,
    *,
    vector: Sequence[float] | np.ndarray[Any, np.dtype[np.float32]] | None,
    text: str,
    where: str,
    k: int,
) -> tuple[list[IndexHit], list[IndexHit]]:
    """Run the vector and the BM25 search concurrently (both on LanceDB's own threads)."""
    vector_task = index.search_vector(vector, where, k) if vector is not None else None
    text_task = index.search_text(text, where, k)
    if vector_task is None:
        return [], await text_task
    vector_hits, text_hits = await asyncio.gather(vector_task, text_task)
    return vector_hits, text_hits
