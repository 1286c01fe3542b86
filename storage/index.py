"""LanceDB: the derived hybrid index (vectors + BM25 full text) over the memory records.

One table per tenant. A search opens only its own tenant's table, so another tenant's rows are
not merely filtered out but physically elsewhere, and each table's full-text posting lists,
bitmaps and IVF partitions cover one tenant: a search's cost follows its tenant's size, not the
whole store's (at 10 tenants x 100k rows, one shared table made every search probe partitions
and posting lists nine tenths of which it then filtered away). Within a table, `scope_key`
(tenant and user, unambiguously encoded) has a bitmap index and the scope filter is applied
before the search (prefilter), never after. The index holds only what search needs: ids, scope,
kind, status, expiry, the BM25 text and the vector. Record content comes from SQLite.

Everything here can be rebuilt from SQLite (`reindex` in `storage.maintenance`). A rebuild
writes a new *generation* of tables beside the one being served (generation g's tables are named
`g<g>_` plus the usual name; generation 0 has no prefix), so a search never sees a half-built
table; the store switches its pointer in SQLite once the new generation is complete, and the old
one is dropped after. Maintenance (folding new rows into the full-text and vector indexes,
building a table's IVF index once it is large, compaction, dropping expired rows, pruning old
versions so erased content leaves the storage) runs in the background over the tables that
changed, called by the store, never on the request path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from storage.index_location import IndexLocation
from storage.index_schema import (
    LAYOUT,
    LAYOUT_FILE,
    IndexHit,
    IndexRow,
    ann_file_name,
    arrow_batch,
    generation_of,
    hits_of,
    ids_in,
    rows_by_tenant,
    table_name,
    table_schema,
    text_query,
    vector_query,
)
from storage.index_settings import MaintenanceSettings
from storage.lance import READ_CONSISTENCY_S, connect, ensure_scalar_indexes, holds_any, table_names

if TYPE_CHECKING:
    import lancedb

log = logging.getLogger("memento.storage.index")


class MemoryIndex:
    """The per-tenant LanceDB tables and the operations the store needs on them."""

    def __init__(
        self,
        location: IndexLocation,
        db: lancedb.AsyncConnection | None,
        dimensions: int,
        settings: MaintenanceSettings,
        generation: int = 0,
        session: lancedb.Session | None = None,
    ) -> None:
        self._db = db
        self.location = location
        self.generation = generation
        self._session = session  # the caches `db` was opened with
        self._session_floor = 0  # what they held after the last recycle (`_recycle_session`)
        self.dimensions = dimensions
        self.settings = settings
        self._schema = table_schema(dimensions)
        self._tables: dict[str, Any] = {}  # table name -> open table
        # Tables a search found missing, and when (monotonic): another process may create
        # them, so they are looked for again once READ_CONSISTENCY_S has passed.
        self._missing: dict[str, float] = {}
        self._vector_indexed: set[str] = set()  # tables with an IVF index
        # Tables changed since maintenance last finished with them, and when (monotonic).
        self._changed: dict[str, float] = {}
        self.created = False  # True when open() found no usable index and made an empty one
        self._connecting = asyncio.Lock()
        self._drop_older = db is None  # older generations' tables go once LanceDB is connected
        # Rows each table's IVF was trained on; one file per generation, as each has its writer.
        self._ann_file = ann_file_name(generation)

    def _layout(self) -> dict[str, Any]:
        return {"layout": LAYOUT, "dimensions": self.dimensions}

    @classmethod
    async def open(
        cls,
        location: IndexLocation,
        dimensions: int,
        settings: MaintenanceSettings | None = None,
        *,
        generation: int = 0,
    ) -> MemoryIndex:
        """Open generation `generation` of the index at `location`, emptying it if it is
        missing, of another layout or of another vector size (`created` is then True: the
        caller rebuilds it from SQLite). Older generations' tables are dropped; newer ones are
        a rebuild under way in some process and are left alone."""
        settings = settings or MaintenanceSettings()
        index = cls(location, None, dimensions, settings, generation)
        try:
            text = await asyncio.to_thread(location.read_text, LAYOUT_FILE)
            layout = json.loads(text or "null")
        except (OSError, ValueError):
            layout = None
        if layout != index._layout():
            await index.reset()
            index.created = True
            return index
        return index  # LanceDB loads when the index is first used (`_connection`)

    async def _lancedb_has_work(self) -> bool:
        """Connected already, or the location holds tables: else LanceDB need not be loaded
        yet (`storage.lance` says why it waits)."""
        return self._db is not None or await asyncio.to_thread(self.location.holds_tables)

    @property
    def connected(self) -> bool:
        """Whether LanceDB is connected in this process (it is, once anything needed it)."""
        return self._db is not None

    async def _connection(self) -> lancedb.AsyncConnection:
        """LanceDB, connected on first need: a write, a search of a scope too large to be
        held in process, an erasure. Hot scopes are searched in process, so a restarted proxy
        that only reads them never loads LanceDB (`storage.lance` says what that saves)."""
        async with self._connecting:
            if self._db is None:
                session, db = await connect(self.location, self.settings)
                await self._adopt_tables(db)
                self._session, self._db = session, db
                self._session_floor = int(session.size_bytes)
        if self._drop_older:
            self._drop_older = False
            await self.drop_other_generations(older_only=True)
        return self._db

    async def _adopt_tables(self, db: lancedb.AsyncConnection) -> None:
        """Open this generation's tables that an earlier process left."""
        for name in await table_names(db):
            if generation_of(name) == self.generation and name not in self._tables:
                table = await db.open_table(name)
                self._tables[name] = table
                if "vector_idx" in {config.name for config in await table.list_indices()}:
                    self._vector_indexed.add(name)
                # Rows written by an earlier process may never have been folded in.
                self._changed[name] = time.monotonic()

    async def _all_tables(self) -> dict[str, Any]:
        """Every table of this generation, LanceDB connected first if the location holds any."""
        if await self._lancedb_has_work():
            await self._connection()
        return self._tables

    async def new_generation(self, generation: int) -> MemoryIndex:
        """An empty generation `generation` beside this one, on the same connection, for a
        rebuild to fill; tables a failed earlier rebuild left under that number are dropped."""
        db = await self._connection()
        for name in await table_names(db):
            if generation_of(name) == generation:
                await db.drop_table(name)
        fresh = MemoryIndex(
            self.location, db, self.dimensions, self.settings, generation, self._session
        )
        await asyncio.to_thread(self.location.remove, fresh._ann_file)
        return fresh

    async def drop_other_generations(self, *, older_only: bool = False) -> list[str]:
        """Drop the tables of every other generation (with `older_only`, of older ones), once
        this generation is the one served. Best effort: a table another process is still
        writing can refuse to go (it goes at the next open), which is logged, not raised."""
        dropped: list[str] = []
        if not await self._lancedb_has_work():
            return dropped
        db = await self._connection()
        for name in await table_names(db):
            generation = generation_of(name)
            if generation is None or generation == self.generation:
                continue
            if older_only and generation > self.generation:
                continue
            try:
                await db.drop_table(name)
            except Exception as exc:
                log.warning(
                    "could not drop index table %s of generation %s: %s", name, generation, exc
                )
                continue
            dropped.append(name)
            await asyncio.to_thread(self.location.remove, ann_file_name(generation))
        return dropped

    async def reset(self) -> None:
        """Drop every table (before a rebuild from SQLite)."""
        if await self._lancedb_has_work():
            await (await self._connection()).drop_all_tables()
        self._tables.clear()
        self._vector_indexed.clear()
        self._changed.clear()
        await asyncio.to_thread(self._write_layout)

    def _write_layout(self) -> None:
        for name in self.location.names():
            if name.startswith("vector_index") and name.endswith(".json"):
                self.location.remove(name)
        self.location.write_text(LAYOUT_FILE, json.dumps(self._layout()))

    async def _table_for_write(self, tenant_id: str) -> Any:
        name = table_name(tenant_id, self.generation)
        db = await self._connection()  # first: it opens the tables an earlier process left
        table = self._tables.get(name)
        if table is None:
            # exist_ok: a table whose creation failed before its indexes were made is reused.
            table = await db.create_table(name, schema=self._schema, exist_ok=True)
            await ensure_scalar_indexes(table)
            self._tables[name] = table
        self._changed[name] = time.monotonic()
        return table

    async def _table_for_read(self, name: str) -> Any:
        """The open table `name`, else opened if another process (a replica) created it since
        this one looked; None while it does not exist."""
        db = await self._connection()  # first: it opens the tables an earlier process left
        table = self._tables.get(name)
        if table is not None:
            return table
        looked = self._missing.get(name)
        if looked is not None and time.monotonic() - looked < READ_CONSISTENCY_S:
            return None
        try:
            table = await db.open_table(name)
        except ValueError:  # LanceDB's "was not found"
            self._missing[name] = time.monotonic()
            return None
        self._missing.pop(name, None)
        if "vector_idx" in {config.name for config in await table.list_indices()}:
            self._vector_indexed.add(name)
        return self._tables.setdefault(name, table)

    async def upsert(self, rows: Sequence[IndexRow]) -> None:
        """Insert or replace rows, each in its own tenant's table. A batch of new rows only (most
        are) is appended: merging one row into 100k took 10-19 ms here, lookup and append 7-9."""
        for tenant_id, tenant_rows in rows_by_tenant(rows).items():
            table = await self._table_for_write(tenant_id)
            data = await arrow_batch(tenant_rows, self._schema)
            if not await holds_any(table, [row.id for row in tenant_rows]):
                await table.add(data)
                continue
            await (
                table.merge_insert("id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(data)
            )

    async def append(self, rows: Sequence[IndexRow]) -> None:
        """Add rows known to be new (bulk loads and rebuilds): cheaper than an upsert."""
        for tenant_id, tenant_rows in rows_by_tenant(rows).items():
            table = await self._table_for_write(tenant_id)
            await table.add(await arrow_batch(tenant_rows, self._schema))

    async def remove(self, tenant_id: str | None, memory_ids: Sequence[str]) -> None:
        """Remove rows by id from `tenant_id`'s table.

        `tenant_id=None` is for records SQLite no longer has (erased users), whose tenant is
        unknown: every table is looked at, and only those holding one of the ids are changed.
        """
        if not memory_ids:
            return
        tables = await self._all_tables()
        if tenant_id is None:
            names = list(tables)
        else:
            name = table_name(tenant_id, self.generation)
            names = [name] if name in tables else []
        for where in ids_in(memory_ids):
            for name in names:
                table = self._tables[name]
                if tenant_id is None and not await table.count_rows(where):
                    continue  # a delete commits a new version even when it matches nothing
                await table.delete(where)
                self._changed[name] = time.monotonic()

    @property
    def cache_bytes(self) -> int:
        """What LanceDB holds in its index and metadata caches for this index, in bytes."""
        return int(self._session.size_bytes) if self._session is not None else 0

    async def count(self, tenant_id: str | None = None) -> int:
        """Rows in one tenant's table, or in all of them."""
        tables = await self._all_tables()
        if tenant_id is not None:
            table = tables.get(table_name(tenant_id, self.generation))
            return int(await table.count_rows()) if table is not None else 0
        return sum([int(await table.count_rows()) for table in tables.values()])

    async def search_vector(
        self,
        tenant_id: str,
        vector: Sequence[float] | np.ndarray[Any, np.dtype[np.float32]],
        where: str,
        k: int,
    ) -> list[IndexHit]:
        name = table_name(tenant_id, self.generation)
        table = await self._table_for_read(name)
        if table is None:
            return []
        nprobes = self.settings.nprobes if name in self._vector_indexed else None
        result: pa.Table = await vector_query(table, vector, where, k, nprobes).to_arrow()
        return hits_of(result, "_distance")

    async def see_latest(self, tenant_id: str) -> None:
        """The tenant's table with every commit so far (others' show READ_CONSISTENCY_S late)."""
        table = await self._table_for_read(table_name(tenant_id, self.generation))
        if table is not None:
            await table.checkout_latest()

    async def search_text(self, tenant_id: str, text: str, where: str, k: int) -> list[IndexHit]:
        table = await self._table_for_read(table_name(tenant_id, self.generation))
        if table is None or not text.strip():
            return []
        result: pa.Table = await text_query(table, text, where, k).to_arrow()
        return hits_of(result, "_score")

    @property
    def needs_maintenance(self) -> bool:
        """Whether some table changed since maintenance last finished with it."""
        return bool(self._changed)

    async def maintain(self) -> dict[str, Any]:
        """Fold new rows into the indexes, compact, drop expired rows and prune old versions,
        in each table that changed. Returns what it did per table, for the log.

        A table stays on the list until a pass runs `prune_older_than` after its last change:
        only then are the versions holding erased content old enough to be pruned.
        """
        done: dict[str, Any] = {}
        prune_after_s = self.settings.prune_older_than.total_seconds()
        for name, changed_at in list(self._changed.items()):
            done[name] = await self._maintain_table(name)
            if time.monotonic() - changed_at > prune_after_s and (
                self._changed.get(name) == changed_at
            ):
                del self._changed[name]
        if self._session is not None and self._session.size_bytes > max(
            self._session_floor + self.settings.recycle_after_bytes, 2 * self._session_floor
        ):
            done["caches_recycled_bytes"] = int(self._session.size_bytes)
            await self._recycle_session()
        return done

    async def _recycle_session(self) -> None:
        """Reopen every table in a new Session, so the cache entries of superseded table
        versions and index ids go with the old one. Called under the store's writer lock: no
        write is in flight on the old handles, so the new ones see every committed version.
        Searches already running finish on the old handles, which keep the old Session alive
        until then."""
        session, db = await connect(self.location, self.settings)
        tables = {name: await db.open_table(name) for name in self._tables}
        for name, table in tables.items():
            await self._prewarm(name, table)
        self._db, self._session, self._tables = db, session, tables
        self._session_floor = int(session.size_bytes)

    async def _maintain_table(self, name: str) -> dict[str, Any]:
        table = self._tables[name]
        done: dict[str, Any] = {}
        rows = int(await table.count_rows())
        if rows >= self.settings.vector_index_min_rows and await self._vector_index_stale(
            name, rows
        ):
            await self._build_vector_index(name, rows)
            done["vector_index"] = rows
        await ensure_scalar_indexes(table)
        await table.delete(f"expires_at IS NOT NULL AND expires_at <= {time.time()!r}")
        stats = await table.optimize(cleanup_older_than=self.settings.prune_older_than)
        done["optimize"] = str(stats)
        await self._prewarm(name, table)
        return done

    async def _prewarm(self, name: str, table: Any) -> None:
        if not self.settings.prewarm_indexes:
            return
        try:
            if name in self._vector_indexed:
                await table.prewarm_index("vector_idx")
            await table.prewarm_index("search_text_idx")
        except RuntimeError as exc:  # LanceDB refuses when the index cache is too small
            log.warning("indexes of %s not prewarmed (raise MEMENTO_INDEX_CACHE_MB): %s", name, exc)

    async def _vector_index_stale(self, name: str, rows: int) -> bool:
        """No IVF index yet, or the table has doubled since it was trained (its partitions
        no longer fit the data); rows added in between are folded in by `optimize`."""
        if name not in self._vector_indexed:
            return True
        return rows >= 2 * max((await self._trained_rows()).get(name, 0), 1)

    async def _trained_rows(self) -> dict[str, int]:
        try:
            text = await asyncio.to_thread(self.location.read_text, self._ann_file)
            trained = json.loads(text or "{}")
            return {name: int(entry["trained_rows"]) for name, entry in trained.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    async def _build_vector_index(self, name: str, rows: int) -> None:
        # A target size, not a partition count: `optimize` splits and joins partitions towards
        # the index's target, and an index given only a count gets the default target (~8k
        # rows), so its small partitions were joined back (500 became 7 at 100k rows).
        from lancedb.index import IvfFlat

        await self._tables[name].create_index(
            "vector",
            config=IvfFlat(
                distance_type="dot", target_partition_size=self.settings.rows_per_partition
            ),
            replace=True,
        )
        self._vector_indexed.add(name)
        trained = await self._trained_rows()
        trained[name] = rows
        text = json.dumps({n: {"trained_rows": r} for n, r in sorted(trained.items())})
        await asyncio.to_thread(self.location.write_text, self._ann_file, text)

    @property
    def vector_indexed(self) -> bool:
        """Whether some table opened so far has an IVF index (the others are searched flat,
        exactly)."""
        return bool(self._vector_indexed)

    async def unindexed_rows(self) -> int:
        """Rows not yet folded into the full-text indexes (searched by a slower flat scan)."""
        total = 0
        for table in (await self._all_tables()).values():
            stats = await table.index_stats("search_text_idx")
            total += int(stats.num_unindexed_rows) if stats is not None else 0
        return total
