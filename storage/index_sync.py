"""Keeping the derived index in step with SQLite: the outbox applied, generations followed.

A write commits to SQLite together with an outbox entry, then the outbox is drained into the
index (the served LanceDB generation and the in-memory vectors of `storage.vector_cache`). A
crash in between loses nothing: the outbox is replayed when the store opens. Every process
follows the generation pointer in SQLite on its next index write or failed search, so a rebuild
by another process (`storage.maintenance`) is picked up without a restart. Problems of the index
are kept by component in `problems` and mirrored to the attached health.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.api import Embedder, HealthReporter
from storage.index import MemoryIndex
from storage.index_schema import IndexRow
from storage.sqlite import Database
from storage.sqlite.outbox import IndexSource
from storage.vector_cache import VectorCache, VectorCacheSettings

log = logging.getLogger("memento.storage")

INDEX_DIR = "index"
WRITER_LOCK_FILE = "index.lock"
EMBEDDER_META = "index_embedder"


def blob(vector: Sequence[float] | np.ndarray[Any, np.dtype[np.float32]]) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def unblob(data: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.frombuffer(data, dtype=np.float32)


def embedder_tag(embedder: Embedder) -> str:
    return f"{embedder.model_id}|{embedder.dimensions}"


class IndexSync:
    """The index generation this process serves, its vector cache, and the outbox applied to
    them; one writer of the index at a time, in this process and across processes."""

    def __init__(
        self,
        data_dir: Path,
        db: Database,
        index: MemoryIndex,
        embedder: Embedder,
        *,
        vector_cache: VectorCacheSettings | None = None,
    ) -> None:
        self.data_dir = data_dir
        self._db = db
        self.index = index
        self.embedder = embedder
        # In this process, one writer of the index at a time; across processes, the lock file
        # as well (`writer`): two processes applying the same outbox entries at once could
        # commit a stale upsert after a deletion and bring an erased row back.
        self.lock = asyncio.Lock()
        self._writer_lock_file = open(data_dir / WRITER_LOCK_FILE, "a+")  # noqa: SIM115
        self.vector_cache = VectorCache(index.dimensions, vector_cache)
        # Outbox entries up to this sequence number are applied to this process's index
        # generation (they stay in the outbox while a rebuild in some process needs them).
        self.outbox_after = 0
        self.repair_wanted = False  # the index failed: the next maintenance pass rebuilds it
        self.wake = asyncio.Event()  # set to have maintenance run soon
        # Open problems of the index, by component; mirrored to the attached health.
        self.problems: dict[str, str] = {}
        self._health: HealthReporter | None = None

    def close(self) -> None:
        self._writer_lock_file.close()

    # -- health --------------------------------------------------------------------------------

    def attach_health(self, health: HealthReporter) -> None:
        """Report the index's problems (and their recovery) to `health` from now on."""
        self._health = health
        for component, message in self.problems.items():
            health.report(component, message)

    def report(self, component: str, message: str) -> None:
        if self.problems.get(component) != message:
            log.error("%s: %s", component, message)
        self.problems[component] = message
        if self._health is not None:
            self._health.report(component, message)

    def clear(self, component: str) -> None:
        if self.problems.pop(component, None) is not None:
            log.warning("%s: recovered", component)
            if self._health is not None:
                self._health.clear(component)

    @contextlib.asynccontextmanager
    async def writer(self) -> AsyncIterator[None]:
        """Exclusive right to write the index: this process's lock, then the folder's."""
        async with self.lock:
            handle = self._writer_lock_file
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another process is writing: wait for it off the loop
                await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- the index outbox ----------------------------------------------------------------------

    def index_row(self, source: IndexSource) -> IndexRow | None:
        if source.status == "deleted" or source.embedding is None:
            return None
        if source.embedding_model != self.embedder.model_id:
            return None  # made by another embedder: `reindex` re-embeds it
        scope = (source.id, source.tenant_id, source.user_id)
        filters = (source.kind, source.status, source.expires_at)
        return IndexRow(*scope, *filters, source.search_text, unblob(source.embedding))

    async def scope_rows(self, tenant_id: str, user_id: str | None) -> list[IndexRow]:
        """What the index holds of one scope, read from SQLite: a scope's in-memory copy."""
        sources = await self._db.outbox.scope_index_sources(tenant_id, user_id)

        def rows() -> list[IndexRow]:
            return [row for source in sources if (row := self.index_row(source)) is not None]

        return await asyncio.to_thread(rows)  # thousands of them: not on the event loop

    async def sync(self) -> int:
        """Apply pending outbox entries to the index; returns how many records it touched.

        Concurrent writers batch naturally: whoever holds the lock applies everything pending.
        A rebuilt index (a new generation) is followed first. On an index error the entries
        stay and are retried by maintenance.
        """
        touched = 0
        async with self.writer():
            await self.follow_generation()
            while True:
                up_to, tenants = await self._db.outbox.outbox_batch(self.outbox_after)
                if not tenants:
                    self.clear("index.update")
                    return touched
                try:
                    await self.apply(self.index, tenants, to_cache=True)
                except Exception as exc:
                    if await self.follow_generation():
                        continue  # rebuilt meanwhile: apply to the new generation
                    log.exception(
                        "index update failed; %d changes stay in the outbox", len(tenants)
                    )
                    self.report("index.update", f"index update failed: {exc}")
                    return touched
                await self._db.outbox.outbox_ack(up_to, self.index.generation)
                self.outbox_after = up_to
                touched += len(tenants)

    async def apply(
        self, index: MemoryIndex, tenants: dict[str, str | None], *, to_cache: bool
    ) -> None:
        """Bring `index` (and with `to_cache` the in-memory vectors) up to SQLite's current
        state of these records: upsert the live ones, remove the others."""
        ids = list(tenants)
        sources = await self._db.outbox.index_sources(ids)
        rows: list[IndexRow] = []
        for memory_id in ids:
            source = sources.get(memory_id)
            row = self.index_row(source) if source is not None else None
            if row is not None:
                rows.append(row)
        kept = {row.id for row in rows}
        gone = [memory_id for memory_id in ids if memory_id not in kept]
        if to_cache:
            # The in-memory vectors first: instant, and what small scopes search, so a new
            # memory is found without waiting for LanceDB's write (applying a batch again,
            # after an index error, changes nothing).
            self.vector_cache.apply(rows, gone)
        for tenant_id, gone_ids in _by_tenant(gone, sources, tenants).items():
            await index.remove(tenant_id, gone_ids)
        await index.upsert(rows)

    async def follow_generation(self) -> bool:
        """Switch to the index generation SQLite points at, if another one than this
        process's (a rebuild finished). The caller holds the index lock. True if it switched."""
        generation = await self._db.outbox.index_generation()
        if generation == self.index.generation:
            return False
        if await self.rebuilt_by_another_embedder():
            return False
        self.index = await MemoryIndex.open(
            self.data_dir / INDEX_DIR,
            self.index.dimensions,
            self.index.settings,
            generation=generation,
        )
        self.vector_cache.clear()  # the rebuild may have re-embedded records
        self.outbox_after = 0  # entries the old generation took may not be in the new one
        log.info("serving index generation %d", generation)
        return True

    async def rebuilt_by_another_embedder(self) -> bool:
        """Whether another process rebuilt the index with another embedder (`reindex
        --embedder`): this process can neither follow it nor rebuild it with its own embedder
        (that would undo the switch), so it reports `index.embedder` until it is restarted."""
        built_by = await self._db.connection.get_meta(EMBEDDER_META)
        if built_by is None or built_by == embedder_tag(self.embedder):
            return False
        self.report(
            "index.embedder",
            f"the index was rebuilt with embedder {built_by.rsplit('|', 1)[0]!r}, but this "
            f"process embeds with {self.embedder.model_id!r}: restart it with that "
            "embedder (MEMENTO_EMBEDDER)",
        )
        return True

    async def embed(self, texts: Sequence[str]) -> list[bytes]:
        """Vectors of `texts` by this store's embedder, as SQLite stores them."""
        if not texts:
            return []
        vectors = await self.embedder.embed(list(texts))
        return [blob(vector) for vector in vectors]


def _by_tenant(
    memory_ids: Sequence[str],
    sources: dict[str, IndexSource],
    outbox_tenants: dict[str, str | None],
) -> dict[str | None, list[str]]:
    """Ids leaving the index, by tenant: the record's, else the outbox entry's (an erased
    record). None only for erasures queued before the outbox named tenants: the index then
    looks for them in every tenant's table."""
    grouped: dict[str | None, list[str]] = {}
    for memory_id in memory_ids:
        source = sources.get(memory_id)
        tenant = source.tenant_id if source is not None else outbox_tenants.get(memory_id)
        grouped.setdefault(tenant, []).append(memory_id)
    return grouped
