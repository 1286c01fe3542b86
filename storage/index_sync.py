"""Keeping the derived index in step with SQLite: the outbox applied, followed, generations too.

A write commits to SQLite together with an outbox entry, then the outbox is applied to the
served LanceDB generation by whichever process holds the writer lock, from where the last one
stopped (`index_applied_seq`). A crash in between loses nothing: the outbox is replayed when the
store opens, and by maintenance. Every process also follows the outbox by sequence number into
its in-memory copies of hot scopes (`storage.vector_cache`): at once for its own writes, and
for the writes of the other processes sharing the store when they say so (`announce_outbox`),
at the latest every `FOLLOW_INTERVAL_S`, so what one process accepted or erased is seen by
every other within that interval. Every process follows
the generation pointer on its next index write or failed search, so a rebuild by another
process (`storage.maintenance`) is picked up without a restart. Problems of the index are kept
by component in `problems` and mirrored to the attached health.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.api import Embedder, HealthReporter
from storage.index import MemoryIndex
from storage.index_schema import IndexRow, ScopeRows, on_loop_or_thread
from storage.locks import StoreLocks
from storage.sqlite import Database
from storage.sqlite.outbox import IndexSource
from storage.vector_cache import VectorCache, VectorCacheSettings

log = logging.getLogger("memento.storage")

WRITER_LOCK = "index"  # the store lock of the one process writing the index
EMBEDDER_META = "index_embedder"
# How often a process looks for outbox entries other processes wrote.
FOLLOW_INTERVAL_S = 0.25
# How long outbox entries may wait for whoever wrote them before another process applies them.
TAKE_OVER_S = 2.0


def blob(vector: Sequence[float] | np.ndarray[Any, np.dtype[np.float32]]) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def unblob(data: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.frombuffer(data, dtype=np.float32)


def stop_if_cancelled() -> None:
    """Raise the current task's cancellation if one was asked for and an await let it pass
    unraised (seen with PostgreSQL's driver): a background loop stops all the same, rather than
    wait again and hold up the store's close forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


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
        locks: StoreLocks,
        *,
        vector_cache: VectorCacheSettings | None = None,
    ) -> None:
        self.data_dir = data_dir
        self._db = db
        self.index = index
        self.embedder = embedder
        self.locks = locks
        # In this process, one writer of the index at a time; across processes, the store's
        # lock as well (`writer`): two processes applying the same outbox entries at once could
        # commit a stale upsert after a deletion and bring an erased row back.
        self._writing = asyncio.Lock()
        # The vector cache's lock: outbox entries followed, scopes loaded and evicted, the
        # generation switched. Held briefly, never across an index write, so the hot path and
        # the write path's checks do not wait for LanceDB.
        self.lock = asyncio.Lock()
        self._applying: asyncio.Task[None] | None = None  # the background apply (`publish`)
        self._apply_again = False  # an entry arrived while it ran
        self._closing = False  # the store closes: its `sync` applies what is left
        self.vector_cache = VectorCache(index.dimensions, vector_cache)
        # Outbox entries up to this sequence number are mirrored in the vector cache.
        self.cache_after = 0
        self.repair_wanted = False  # the index failed: the next maintenance pass rebuilds it
        self.wake = asyncio.Event()  # set to have maintenance run soon
        self.outbox_changed = asyncio.Event()  # set when another process says it wrote
        # Open problems of the index, by component; mirrored to the attached health.
        self.problems: dict[str, str] = {}
        self._health: HealthReporter | None = None

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
        """Exclusive right to write the index: this process's lock, then the store's."""
        async with self._writing, self.locks.hold(WRITER_LOCK):
            yield

    @contextlib.asynccontextmanager
    async def switching(self) -> AsyncIterator[None]:
        """The right to replace the served generation (`index`): no index write of this
        process in flight, and the vector cache held (a switch empties it)."""
        async with self._writing, self.lock:
            yield

    # -- the index outbox ----------------------------------------------------------------------

    def index_row(self, source: IndexSource) -> IndexRow | None:
        if source.status == "deleted" or source.embedding is None:
            return None
        if source.embedding_model != self.embedder.model_id:
            return None  # made by another embedder: `reindex` re-embeds it
        scope = (source.id, source.tenant_id, source.user_id)
        filters = (source.kind, source.status, source.expires_at)
        return IndexRow(*scope, *filters, source.search_text, unblob(source.embedding))

    async def scope_rows(self, tenant_id: str, user_id: str | None) -> ScopeRows:
        """What the index holds of one scope, read from SQLite: a scope's in-memory copy."""
        model_id, dimensions = self.embedder.model_id, self.index.dimensions
        return await self._db.outbox.scope_rows(tenant_id, user_id, model_id, dimensions)

    async def sync(self) -> int:
        """Mirror new outbox entries in the vector cache, then apply the pending ones to the
        index; returns how many records the index update touched.

        Concurrent writers batch naturally: whoever holds the lock applies everything pending,
        from any process. A rebuilt index (a new generation) is followed first. On an index
        error the entries stay pending and are retried by maintenance.
        """
        touched = 0
        async with self.writer():
            async with self.lock:
                await self.follow_generation()
                read = await self._follow()  # mostly the records of the index's batch: reused
            outbox = self._db.outbox
            applied = await outbox.applied_seq()
            while True:
                up_to, tenants = await outbox.outbox_batch(applied)
                if not tenants:
                    self.clear("index.update")
                    return touched
                try:
                    await self.apply(self.index, tenants, read=read)
                except Exception as exc:
                    async with self.lock:
                        switched = await self.follow_generation()
                    if switched:
                        applied = await outbox.applied_seq()
                        continue  # rebuilt meanwhile: apply to the new generation
                    log.exception(
                        "index update failed; %d changes stay in the outbox", len(tenants)
                    )
                    self.report("index.update", f"index update failed: {exc}")
                    return touched
                await outbox.outbox_ack(up_to, self.index.generation)
                applied = up_to
                touched += len(tenants)

    async def publish(self) -> None:
        """After a write committed: mirror it in this process's copies of hot scopes now (their
        searches see it when this returns), and apply it to the index soon, in the background,
        with whatever else is written meanwhile: one LanceDB commit for many writes, and no
        writer waiting for one. A search that goes to the index waits for it (`flushed`); a
        crash before it loses nothing (the outbox is replayed when the store opens)."""
        self._db.connection.announce_outbox()  # the other processes follow it now too
        await self.follow()
        if self._closing:
            return
        if self._applying is None or self._applying.done():
            self._apply_again = False
            self._applying = asyncio.create_task(self._apply_pending(), name="memento-index")
        else:
            self._apply_again = True

    async def _apply_pending(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception as exc:  # the entries stay in the outbox: maintenance retries
                self.report("index.update", f"index update failed: {exc}")
                return
            if not self._apply_again:
                return
            self._apply_again = False

    async def settle(self) -> None:
        """No more background applies (the store closes); the one running ends first."""
        self._closing = True
        await self.flushed()

    async def flushed(self) -> None:
        """Until what this process wrote is in the index (its background apply ended; if it
        failed, the index is reported and maintenance retries)."""
        while self._applying is not None and not self._applying.done():
            await asyncio.shield(self._applying)

    async def caught_up(self) -> None:
        """Until every write committed so far, by this process or another, is in the index:
        what a search of the index needs to read the writes before it."""
        await self.flushed()
        outbox = self._db.outbox
        _, waiting = await outbox.outbox_batch(await outbox.applied_seq(), limit=1)
        if waiting:
            await self.sync()

    async def follow(self) -> None:
        """Mirror in the vector cache the outbox entries written since it last looked, by
        this process or any other sharing the store."""
        async with self.lock:
            await self._follow()

    async def _follow(self) -> dict[str, IndexSource | None]:
        """`follow`, the index lock held (loads and evictions of scopes happen under it too,
        so no entry falls between a scope's load and the cache taking it). Returns what it read
        of the records: by id, their source, or None for one erased."""
        outbox, cache = self._db.outbox, self.vector_cache
        read: dict[str, IndexSource | None] = {}
        if not cache.tenants():
            # Nothing cached to keep current; a scope loaded later reads the truth.
            self.cache_after = await outbox.latest_seq()
            return read
        if await outbox.pruned_seq() > self.cache_after:
            # Entries this process never read are gone: start the copies over.
            log.warning("outbox entries were pruned before this process read them")
            self.cache_after = await outbox.latest_seq()
            cache.clear()
            return read
        while True:
            up_to, tenants = await outbox.outbox_batch(self.cache_after)
            if not tenants:
                return read
            cached = cache.tenants()
            wanted = [memory_id for memory_id, tenant in tenants.items() if tenant in cached]
            if wanted:
                rows, gone, sources = await self._current(wanted)
                cache.apply(rows, gone)
                read.update({memory_id: sources.get(memory_id) for memory_id in wanted})
            self.cache_after = up_to

    async def follow_forever(self, interval_s: float = FOLLOW_INTERVAL_S) -> None:
        """`follow` when another process says it wrote (`outbox_changed`), else every
        `interval_s`, for the writes of other processes (this process's own are followed as
        they are made); and take over applying the outbox to the index when
        nobody has for `TAKE_OVER_S` (the process that wrote the entries died, say), rather
        than at the next maintenance pass."""
        stalled_at: tuple[int, float] | None = None  # (applied seq, since) while entries wait
        while True:
            stop_if_cancelled()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self.outbox_changed.wait()
            self.outbox_changed.clear()
            try:
                await self.follow()
                applied = await self._db.outbox.applied_seq()
                _, waiting = await self._db.outbox.outbox_batch(applied, limit=1)
                if not waiting:
                    stalled_at = None
                elif stalled_at is None or stalled_at[0] != applied:
                    stalled_at = (applied, time.monotonic())
                elif time.monotonic() - stalled_at[1] >= TAKE_OVER_S:
                    self.wake.set()  # maintenance applies them now
                    stalled_at = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is busy or gone: next time
                self.report("index.follow", f"following other processes' writes failed: {exc}")
            else:
                self.clear("index.follow")

    async def _current(
        self, memory_ids: Sequence[str], read: dict[str, IndexSource | None] | None = None
    ) -> tuple[list[IndexRow], list[str], dict[str, IndexSource]]:
        """SQLite's current state of these records: index rows of the live ones, the ids of
        the others (erased, deleted, or not indexed), and the sources read. `read` holds
        sources read a moment ago under the same lock (None for an erased record): those are
        not read again."""
        known = read or {}
        missing = [memory_id for memory_id in memory_ids if memory_id not in known]
        sources = await self._db.outbox.index_sources(missing) if missing else {}
        sources.update({i: source for i, source in known.items() if source is not None})

        def live() -> list[IndexRow]:
            found = (sources.get(memory_id) for memory_id in memory_ids)
            return [row for s in found if s is not None and (row := self.index_row(s)) is not None]

        rows = await on_loop_or_thread(len(memory_ids), live)
        kept = {row.id for row in rows}
        return rows, [memory_id for memory_id in memory_ids if memory_id not in kept], sources

    async def apply(
        self,
        index: MemoryIndex,
        tenants: dict[str, str | None],
        *,
        read: dict[str, IndexSource | None] | None = None,
    ) -> None:
        """Bring `index` up to SQLite's current state of these records: upsert the live ones,
        remove the others (`read`: as `_current`)."""
        rows, gone, sources = await self._current(list(tenants), read)
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
            self.index.location,
            self.index.dimensions,
            self.index.settings,
            generation=generation,
        )
        self.vector_cache.clear()  # the rebuild may have re-embedded records
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
