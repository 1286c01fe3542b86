"""Index maintenance and rebuilds: the background pass, and `reindex` from SQLite.

`reindex` may run while other processes serve the same folder: it builds a new generation of
the index beside the served one (an exclusive lock file makes it the only rebuild), applies the
outbox entries written meanwhile (which no process forgets while a rebuild runs), then switches
the generation pointer in SQLite in one transaction and drops the old tables. A search or an
index write that fails has the next maintenance pass rebuild the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from storage.index import MemoryIndex
from storage.index_sync import EMBEDDER_META, IndexSync, embedder_tag, stop_if_cancelled
from storage.locks import LockHeld, StoreLocks
from storage.sqlite import Database
from storage.sqlite.outbox import (
    INDEX_BUILD_META,
    MIXED_VECTORS_META,
    OUTBOX_KEEP_S,
    IndexSource,
)

log = logging.getLogger("memento.storage")

REBUILD_LOCK = "reindex"  # the store lock a rebuild holds from start to end


class ReindexRunningError(RuntimeError):
    """Another process is already rebuilding this store's index."""


@contextlib.asynccontextmanager
async def _rebuild_lock(locks: StoreLocks, where: object) -> AsyncIterator[None]:
    """Held for a whole rebuild; `ReindexRunningError` at once when another process has it."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(locks.try_hold(REBUILD_LOCK))
        except LockHeld:
            raise ReindexRunningError(
                f"another process is rebuilding the index in {where}; wait for it to finish "
                "(its new index is served as soon as it is complete)"
            ) from None
        yield


class IndexMaintenance:
    """The background maintenance of the index this process serves, and its rebuilds."""

    def __init__(self, sync: IndexSync, db: Database, *, interval_s: float) -> None:
        self._sync = sync
        self._db = db
        self._interval_s = interval_s
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Run maintenance every `interval_s` (and when woken), and follow the writes of other
        processes sharing the store, unless the interval is 0."""
        if self._interval_s > 0:
            self._tasks = [
                asyncio.create_task(self._loop(), name="memento-index-maintenance"),
                asyncio.create_task(self._sync.follow_forever(), name="memento-index-follow"),
                asyncio.create_task(
                    self._db.connection.watch_outbox(self._sync.outbox_changed.set),
                    name="memento-outbox-watch",
                ),
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event fires, and close() would then wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._sync.wake.wait()
            self._sync.wake.clear()
            try:
                await self.maintain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("index maintenance failed; it will be retried")
            stop_if_cancelled()

    async def maintain(self) -> dict[str, Any]:
        """One maintenance pass: replay the outbox (following a rebuilt index), rebuild the
        index if a search found it broken, then fold, compact and prune it."""
        sync = self._sync
        await sync.sync()
        if sync.repair_wanted:
            await self._repair()
        await self._forget_dead_rebuild()
        await self._restore_mixed_vectors()
        done: dict[str, Any] = {}
        if sync.index.needs_maintenance:  # some tenant's table changed
            async with sync.writer():
                try:
                    done = await sync.index.maintain()
                except Exception as exc:
                    if not await sync.follow_generation():
                        sync.report(
                            "index.maintenance", f"index maintenance failed, rebuilding: {exc}"
                        )
                        sync.repair_wanted = True  # at the next pass
                        raise
            log.info("index maintenance: %s", done)
        sync.clear("index.maintenance")
        await self._db.outbox.prune_outbox(older_than=time.time() - OUTBOX_KEEP_S)
        await self._db.queue.prune_jobs(older_than=time.time() - 86_400)
        return done

    async def _repair(self) -> None:
        """Rebuild the index from SQLite after a search or maintenance found it broken (not
        when another embedder rebuilt it: this process would undo the switch)."""
        self._sync.repair_wanted = False
        if await self._sync.rebuilt_by_another_embedder():
            return
        try:
            report = await self.reindex()
        except ReindexRunningError:
            return  # another process's rebuild replaces the broken generation anyway
        log.warning("index rebuilt from SQLite after it failed: %s", report)
        self._sync.clear("index.search")

    async def _forget_dead_rebuild(self) -> None:
        """A rebuild that died (its process killed) leaves its marker, which keeps the outbox
        from being emptied; the lock it held is free then, and the marker can go."""
        if await self._db.connection.get_meta(INDEX_BUILD_META) is None:
            return
        with contextlib.suppress(ReindexRunningError):
            async with _rebuild_lock(self._sync.locks, self._sync.data_dir):
                log.warning("an index rebuild in %s ended without finishing", self._sync.data_dir)
                await self._db.outbox.end_index_build()

    async def _restore_mixed_vectors(self, batch: int = 512) -> None:
        """A rebuild to another embedder that died or was stopped left the records it had
        re-embedded with that embedder's vectors, which the store's searches do not read: they
        dropped out of in-process search. Embed them again with the store's own embedder (when
        it is this process's; no rebuild may be running)."""
        connection, sync = self._db.connection, self._sync
        if await connection.get_meta(MIXED_VECTORS_META) is None:
            return
        if await connection.get_meta(EMBEDDER_META) != embedder_tag(sync.embedder):
            return  # the store's embedder is another process's to restore
        with contextlib.suppress(ReindexRunningError):
            async with _rebuild_lock(sync.locks, sync.data_dir):
                restored = 0
                async for sources in self._db.outbox.iter_index_sources(batch):
                    restored += (await self._embedded(sources))[1]
                await connection.delete_meta(MIXED_VECTORS_META)
                async with sync.switching():
                    sync.vector_cache.clear()  # scopes reload from SQLite, every record in
                log.warning(
                    "a rebuild to another embedder did not finish; %d memories it had "
                    "re-embedded are embedded again with %s",
                    restored,
                    sync.embedder.model_id,
                )

    async def reindex(self, *, batch: int = 512) -> dict[str, Any]:
        """Rebuild the index from SQLite as a new generation, re-embedding records made by
        another embedder, and serve it once complete; safe while other processes serve.

        Raises ReindexRunningError when another process is rebuilding already.
        """
        sync, outbox = self._sync, self._db.outbox
        started = time.perf_counter()
        async with _rebuild_lock(sync.locks, sync.data_dir):
            async with sync.switching():
                await sync.follow_generation()
            started_after = await outbox.begin_index_build()
            connection, tag = self._db.connection, embedder_tag(sync.embedder)
            if await connection.get_meta(EMBEDDER_META) != tag:
                await connection.set_meta(MIXED_VECTORS_META, tag)  # gone at the switch
            try:
                fresh = await sync.index.new_generation(sync.index.generation + 1)
                records, reembedded = await self._fill(fresh, batch)
                await fresh.maintain()
                # The changes written meanwhile, most of them outside the lock, the last ones
                # inside it, where the switch cannot miss one of this process's writes.
                applied = await self._catch_up(fresh, started_after)
                async with sync.switching():
                    applied = await self._catch_up(fresh, applied)
                    await outbox.switch_index_generation(
                        fresh.generation, applied, {EMBEDDER_META: embedder_tag(sync.embedder)}
                    )
                    sync.index = fresh
                    sync.vector_cache.clear()  # scopes reload from SQLite, with the new vectors
            except BaseException:
                await outbox.end_index_build()
                raise
        async with sync.writer():  # no process is writing the tables being dropped
            dropped = await fresh.drop_other_generations()
        return {
            "records": records,
            "reembedded": reembedded,
            "embedder": sync.embedder.model_id,
            "generation": fresh.generation,
            "dropped_tables": len(dropped),
            "seconds": round(time.perf_counter() - started, 3),
        }

    async def _fill(self, index: MemoryIndex, batch: int) -> tuple[int, int]:
        """Every live record into `index`; returns (records, re-embedded)."""
        records = reembedded = 0
        async for sources in self._db.outbox.iter_index_sources(batch):
            sources, embedded = await self._embedded(sources)
            rows = [row for row in map(self._sync.index_row, sources) if row is not None]
            await index.append(rows)
            records += len(rows)
            reembedded += embedded
        return records, reembedded

    async def _embedded(self, sources: list[IndexSource]) -> tuple[list[IndexSource], int]:
        """`sources`, each with a vector of this process's embedder: those without one
        embedded (and stored) anew; and how many were."""
        model_id, outbox = self._sync.embedder.model_id, self._db.outbox
        stale = [s for s in sources if s.embedding is None or s.embedding_model != model_id]
        if not stale:
            return sources, 0
        blobs = await self._sync.embed([s.embed_text for s in stale])
        await outbox.set_embeddings(
            [(s.id, blob) for s, blob in zip(stale, blobs, strict=True)], model_id
        )
        fresh = await outbox.index_sources([s.id for s in stale])
        return [fresh.get(s.id, s) for s in sources], len(stale)

    async def _catch_up(self, index: MemoryIndex, after: int) -> int:
        """Apply the outbox entries after sequence number `after` to `index`; returns the last
        one applied."""
        while True:
            up_to, tenants = await self._db.outbox.outbox_batch(after)
            if not tenants:
                return after
            await self._sync.apply(index, tenants)
            after = up_to
