"""The embedded store: SQLite (truth) + LanceDB (derived index) + an embedder, as one object that
satisfies MemoryStore, RequestStore and WriteQueue.

A write commits to SQLite together with an outbox entry, then the outbox is drained into the
index. A crash in between loses nothing: the outbox is replayed when the store opens. Searches
take ids from the index but records from SQLite, and re-check scope, status and expiry there, so
a stale index can hide a record for a moment but never show one it should not.

`reindex` may run while other processes serve the same folder: it builds a new generation of
the index beside the served one (an exclusive lock file makes it the only rebuild), applies the
outbox entries written meanwhile (which no process forgets while a rebuild runs), then switches
the generation pointer in SQLite in one transaction and drops the old tables. Every process
follows the pointer on its next index write or failed search. A search that fails otherwise
reports a problem (`problems`, and the attached health) and has maintenance rebuild the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np

from storage.api import Embedder, HealthReporter, IndexUnavailable
from storage.index import (
    IndexHit,
    IndexRow,
    MaintenanceSettings,
    MemoryIndex,
    scope_filter,
    scope_key,
)
from storage.records import (
    MEMORY_KINDS,
    MEMORY_STATUSES,
    JobState,
    MemoryKind,
    MemoryRecord,
    MemoryStatus,
    NewMemory,
    QueuedJob,
    RequestLog,
    Scope,
    SearchHit,
    SourceRole,
    TextEdit,
)
from storage.sqlite import (
    INDEX_BUILD_META,
    UPDATABLE_FIELDS,
    IndexSource,
    SQLiteDatabase,
    embedding_input,
)
from storage.vector_cache import ScopeVectors, VectorCache, VectorCacheSettings

log = logging.getLogger("memento.storage")

DB_FILE = "memento.db"
INDEX_DIR = "index"
REBUILD_LOCK_FILE = "reindex.lock"
WRITER_LOCK_FILE = "index.lock"
_EMBEDDER_META = "index_embedder"
# Sizes of scopes too large for the vector cache are re-counted at most this often.
SCOPE_SIZE_TTL_S = 30.0


class EmbedderMismatchError(RuntimeError):
    """The stored vectors were made by another embedder than the configured one."""


class ReindexRunningError(RuntimeError):
    """Another process is already rebuilding this folder's index."""


@contextlib.contextmanager
def _rebuild_lock(folder: Path) -> Iterator[None]:
    """Held for a whole rebuild. A lock on an open file, so it goes with the process that
    holds it, however that process ends."""
    with open(folder / REBUILD_LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ReindexRunningError(
                f"another process is rebuilding the index in {folder}; wait for it to finish "
                "(its new index is served as soon as it is complete)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _blob(vector: Sequence[float] | np.ndarray[Any, np.dtype[np.float32]]) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def _normalized(vector: Sequence[float]) -> np.ndarray[Any, np.dtype[np.float32]]:
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    if not math.isfinite(norm) or norm == 0:
        raise ValueError("vectors must be finite and non-zero")
    unit: np.ndarray[Any, np.dtype[np.float32]] = array / norm
    return unit


def _unblob(blob: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.frombuffer(blob, dtype=np.float32)


def _validate_new(memory: NewMemory) -> None:
    if memory.kind not in MEMORY_KINDS:
        raise ValueError(f"kind must be one of {MEMORY_KINDS}, got {memory.kind!r}")
    if memory.status not in MEMORY_STATUSES or memory.status == "deleted":
        raise ValueError(
            f"a new memory's status must be active, quarantined, rejected or "
            f"superseded, got {memory.status!r}"
        )
    if memory.source_role not in get_args(SourceRole):
        raise ValueError(f"source_role must be one of {get_args(SourceRole)}")
    if not memory.text.strip():
        raise ValueError("a memory needs a non-empty text")


class EmbeddedStore:
    """MemoryStore + RequestStore + WriteQueue + JobAdmin over one data folder."""

    def __init__(
        self,
        data_dir: Path,
        db: SQLiteDatabase,
        index: MemoryIndex,
        embedder: Embedder,
        *,
        maintenance_interval_s: float,
        vector_cache: VectorCacheSettings | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.db = db
        self.index = index
        self.embedder = embedder
        # In this process, one writer of the index at a time; across processes, the lock file
        # as well (`_index_writer`): two processes applying the same outbox entries at once
        # could commit a stale upsert after a deletion and bring an erased row back.
        self._index_lock = asyncio.Lock()
        self._writer_lock_file = open(data_dir / WRITER_LOCK_FILE, "a+")  # noqa: SIM115
        self._maintenance_interval_s = maintenance_interval_s
        self._maintenance_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.vector_cache = VectorCache(index.dimensions, vector_cache)
        self._scope_sizes: dict[tuple[str, str | None], tuple[int, float]] = {}
        # Outbox entries up to this sequence number are applied to this process's index
        # generation (they stay in the outbox while a rebuild in some process needs them).
        self._outbox_after = 0
        self._repair_wanted = False  # the index failed: the next maintenance pass rebuilds it
        # Open problems of the index, by component; mirrored to the attached health.
        self.problems: dict[str, str] = {}
        self._health: HealthReporter | None = None

    # -- health --------------------------------------------------------------------------------

    def attach_health(self, health: HealthReporter) -> None:
        """Report the index's problems (and their recovery) to `health` from now on."""
        self._health = health
        self.db.attach_health(health)
        for component, message in self.problems.items():
            health.report(component, message)

    def _report(self, component: str, message: str) -> None:
        if self.problems.get(component) != message:
            log.error("%s: %s", component, message)
        self.problems[component] = message
        if self._health is not None:
            self._health.report(component, message)

    def _clear(self, component: str) -> None:
        if self.problems.pop(component, None) is not None:
            log.warning("%s: recovered", component)
            if self._health is not None:
                self._health.clear(component)

    @contextlib.asynccontextmanager
    async def _index_writer(self) -> AsyncIterator[None]:
        """Exclusive right to write the index: this process's lock, then the folder's."""
        async with self._index_lock:
            handle = self._writer_lock_file
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another process is writing: wait for it off the loop
                await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Replay the outbox (changes committed but not yet indexed) and start maintenance."""
        await self.sync_index()
        if self._maintenance_interval_s > 0:
            self._maintenance_task = asyncio.create_task(
                self._maintenance_loop(), name="memento-index-maintenance"
            )

    async def close(self) -> None:
        if self._maintenance_task is not None:
            self._maintenance_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance_task
            self._maintenance_task = None
        try:
            await self.sync_index()
        finally:
            self._writer_lock_file.close()
            await self.db.close()

    async def _maintenance_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event fires, and close() would then wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._maintenance_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.maintain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("index maintenance failed; it will be retried")

    async def maintain(self) -> dict[str, Any]:
        """One maintenance pass: replay the outbox (following a rebuilt index), rebuild the
        index if a search found it broken, then fold, compact and prune it."""
        await self.sync_index()
        if self._repair_wanted:
            await self._repair()
        await self._forget_dead_rebuild()
        done: dict[str, Any] = {}
        if self.index.needs_maintenance:  # some tenant's table changed
            async with self._index_writer():
                try:
                    done = await self.index.maintain()
                except Exception as exc:
                    if not await self._follow_generation():
                        self._report(
                            "index.maintenance", f"index maintenance failed, rebuilding: {exc}"
                        )
                        self._repair_wanted = True  # at the next pass
                        raise
            log.info("index maintenance: %s", done)
        self._clear("index.maintenance")
        await self.db.prune_jobs(older_than=time.time() - 86_400)
        return done

    async def _repair(self) -> None:
        """Rebuild the index from SQLite after a search or maintenance found it broken."""
        self._repair_wanted = False
        try:
            report = await self.reindex()
        except ReindexRunningError:
            return  # another process's rebuild replaces the broken generation anyway
        log.warning("index rebuilt from SQLite after it failed: %s", report)
        self._clear("index.search")

    async def _forget_dead_rebuild(self) -> None:
        """A rebuild that died (its process killed) leaves its marker, which keeps the outbox
        from being emptied; the lock it held is free then, and the marker can go."""
        if await self.db.get_meta(INDEX_BUILD_META) is None:
            return
        with contextlib.suppress(ReindexRunningError), _rebuild_lock(self.data_dir):
            log.warning("an index rebuild in %s ended without finishing", self.data_dir)
            await self.db.end_index_build()

    def request_maintenance(self) -> None:
        """Run maintenance soon (after an erasure, so old index versions are pruned)."""
        self._wake.set()

    # -- the index outbox ----------------------------------------------------------------------

    def _index_row(self, source: IndexSource) -> IndexRow | None:
        if source.status == "deleted" or source.embedding is None:
            return None
        if source.embedding_model != self.embedder.model_id:
            return None  # made by another embedder: `reindex` re-embeds it
        return IndexRow(
            id=source.id,
            tenant_id=source.tenant_id,
            user_id=source.user_id,
            kind=source.kind,
            status=source.status,
            expires_at=source.expires_at,
            search_text=source.search_text,
            vector=_unblob(source.embedding),
        )

    async def sync_index(self) -> int:
        """Apply pending outbox entries to the index; returns how many records it touched.

        Concurrent writers batch naturally: whoever holds the lock applies everything pending.
        A rebuilt index (a new generation) is followed first. On an index error the entries
        stay and are retried by maintenance.
        """
        touched = 0
        async with self._index_writer():
            await self._follow_generation()
            while True:
                up_to, tenants = await self.db.outbox_batch(self._outbox_after)
                if not tenants:
                    self._clear("index.update")
                    return touched
                try:
                    await self._apply(self.index, tenants, to_cache=True)
                except Exception as exc:
                    if await self._follow_generation():
                        continue  # rebuilt meanwhile: apply to the new generation
                    log.exception(
                        "index update failed; %d changes stay in the outbox", len(tenants)
                    )
                    self._report("index.update", f"index update failed: {exc}")
                    return touched
                await self.db.outbox_ack(up_to, self.index.generation)
                self._outbox_after = up_to
                touched += len(tenants)

    async def _apply(
        self, index: MemoryIndex, tenants: dict[str, str | None], *, to_cache: bool
    ) -> None:
        """Bring `index` (and with `to_cache` the in-memory vectors) up to SQLite's current
        state of these records: upsert the live ones, remove the others."""
        ids = list(tenants)
        sources = await self.db.index_sources(ids)
        rows: list[IndexRow] = []
        for memory_id in ids:
            source = sources.get(memory_id)
            row = self._index_row(source) if source is not None else None
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

    async def _follow_generation(self) -> bool:
        """Switch to the index generation SQLite points at, if another one than this
        process's (a rebuild finished). The caller holds the index lock. True if it switched."""
        generation = await self.db.index_generation()
        if generation == self.index.generation:
            return False
        built_by = await self.db.get_meta(_EMBEDDER_META)
        if built_by is not None and built_by != _embedder_tag(self.embedder):
            self._report(
                "index.embedder",
                f"the index was rebuilt with embedder {built_by.rsplit('|', 1)[0]!r}, but this "
                f"process embeds with {self.embedder.model_id!r}: restart it with that "
                "embedder (MEMENTO_EMBEDDER)",
            )
            return False
        self.index = await MemoryIndex.open(
            self.data_dir / INDEX_DIR,
            self.index.dimensions,
            self.index.settings,
            generation=generation,
        )
        self.vector_cache.clear()  # the rebuild may have re-embedded records
        self._outbox_after = 0  # entries the old generation took may not be in the new one
        log.info("serving index generation %d", generation)
        return True

    async def _embed(self, texts: Sequence[str]) -> list[bytes]:
        if not texts:
            return []
        vectors = await self.embedder.embed(list(texts))
        return [_blob(vector) for vector in vectors]

    # -- MemoryStore ---------------------------------------------------------------------------

    def _new_record(self, scope: Scope, memory: NewMemory, now: float) -> MemoryRecord:
        created = memory.created_at if memory.created_at is not None else now
        return MemoryRecord(
            id=uuid.uuid4().hex,
            tenant_id=scope.tenant_id,
            user_id=scope.user_id,
            session_id=scope.session_id,
            agent_id=scope.agent_id,
            kind=memory.kind,
            text=memory.text,
            key_text=memory.key_text,
            fields=dict(memory.fields),
            metadata=dict(memory.metadata),
            keywords=list(memory.keywords),
            tags=list(memory.tags),
            source_role=memory.source_role,
            source_request_id=memory.source_request_id,
            trace_id=memory.trace_id,
            trust=float(memory.trust),
            trust_reasons=list(memory.trust_reasons),
            status=memory.status,
            version=1,
            supersedes=None,
            superseded_by=None,
            q=float(memory.q),
            q_visits=0,
            reward_ma=0.0,
            last_reward=None,
            n_pos=0,
            n_neg=0,
            created_at=created,
            updated_at=now,
            last_used_at=None,
            valid_from=memory.valid_from if memory.valid_from is not None else created,
            valid_to=None,
            expires_at=memory.expires_at,
            embedding_model=self.embedder.model_id,
            derived_from_ids=list(memory.derived_from_ids),
            evidence=list(memory.evidence),
            model=memory.model,
        )

    async def add(
        self,
        scope: Scope,
        memories: Sequence[NewMemory],
        *,
        vectors: Sequence[Sequence[float]] | None = None,
    ) -> list[MemoryRecord]:
        """Write new records in one transaction; they are searchable when this returns.

        `vectors` (optional) are the records' embeddings by this store's embedder, for imports
        that carry them; without it the records are embedded here.
        """
        if not memories:
            return []
        for memory in memories:
            _validate_new(memory)
        now = time.time()
        records = [self._new_record(scope, memory, now) for memory in memories]
        if vectors is not None:
            if len(vectors) != len(records) or any(
                len(vector) != self.index.dimensions for vector in vectors
            ):
                raise ValueError(
                    f"need one {self.index.dimensions}-dimensional vector per memory "
                    f"(made by {self.embedder.model_id})"
                )
            blobs = [_blob(_normalized(vector)) for vector in vectors]
        else:
            blobs = await self._embed([embedding_input(r.key_text, r.text) for r in records])
        await self.db.insert_memories(records, blobs, actor=f"write:{records[0].source_role}")
        await self.sync_index()
        return records

    async def import_records(
        self, tenant_id: str, records: Sequence[MemoryRecord], outcome: dict[str, Any]
    ) -> None:
        """Write complete records as an import gives them (ids, version links, times, Q and
        its counts kept) and the import's `outcome`, in one transaction. The vectors are made
        here, from each record's key text, by this store's embedder."""
        for record in records:
            if record.tenant_id != tenant_id:
                raise ValueError("every imported record must belong to the importing tenant")
            record.embedding_model = self.embedder.model_id
        blobs = await self._embed([embedding_input(r.key_text, r.text) for r in records])
        await self.db.import_memories(tenant_id, records, blobs, outcome)
        await self.sync_index()

    async def record_import(self, tenant_id: str, outcome: dict[str, Any]) -> None:
        """Keep the outcome of an import that wrote nothing (refused or cancelled)."""
        await self.db.record_import(tenant_id, outcome)

    async def imports(
        self, tenant_id: str, limit: int, *, after: str | None = None
    ) -> list[dict[str, Any]]:
        return await self.db.imports(tenant_id, limit, after=after)

    async def import_outcome(self, tenant_id: str, import_id: str) -> dict[str, Any] | None:
        return await self.db.import_outcome(tenant_id, import_id)

    async def existing_ids(self, memory_ids: Sequence[str]) -> dict[str, str]:
        return await self.db.existing_ids(memory_ids)

    async def same_content(
        self, scope: Scope, kind: MemoryKind, text: str, key_text: str
    ) -> str | None:
        return await self.db.same_content(scope, kind, text, key_text)

    async def get(self, scope: Scope, memory_id: str) -> MemoryRecord | None:
        return await self.db.get_memory(scope, memory_id)

    async def get_many(self, tenant_id: str, memory_ids: Sequence[str]) -> list[MemoryRecord]:
        return await self.db.get_many(tenant_id, memory_ids)

    async def edits(self, tenant_id: str, memory_id: str) -> list[TextEdit]:
        return await self.db.edits(tenant_id, memory_id)

    async def update(self, scope: Scope, memory_id: str, **changes: Any) -> MemoryRecord | None:
        unknown = changes.keys() - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(
                f"cannot update {sorted(unknown)}; updatable fields: {sorted(UPDATABLE_FIELDS)}"
            )
        if "kind" in changes and changes["kind"] not in MEMORY_KINDS:
            raise ValueError(f"kind must be one of {MEMORY_KINDS}")
        if "status" in changes and changes["status"] not in MEMORY_STATUSES:
            raise ValueError(f"status must be one of {MEMORY_STATUSES}")
        if changes.get("status") == "deleted":
            raise ValueError("use delete() to delete a memory: it erases the content")
        if not changes:
            return await self.get(scope, memory_id)
        embedding: bytes | None = None
        if "text" in changes or "key_text" in changes:
            current = await self.get(scope, memory_id)
            if current is None:
                return None
            text = changes.get("text", current.text)
            if not str(text).strip():
                raise ValueError("a memory needs a non-empty text")
            if "text" in changes and "key_text" not in changes:
                # The key is what search matches and what the vector is made of: a new text
                # with the old key would keep being found by what it no longer says.
                changes = {**changes, "key_text": text}
            key_text = changes.get("key_text", current.key_text)
            (embedding,) = await self._embed([embedding_input(key_text, text)])
        record = await self.db.update_memory(
            scope,
            memory_id,
            changes,
            embedding=embedding,
            embedding_model=self.embedder.model_id,
            actor="update",
        )
        if record is not None:
            await self.sync_index()
        return record

    async def supersede(
        self, scope: Scope, old_id: str, new: NewMemory, *, at: float | None = None
    ) -> MemoryRecord:
        _validate_new(new)
        at = time.time() if at is None else at
        record = self._new_record(scope, new, at)
        (blob,) = await self._embed([embedding_input(record.key_text, record.text)])
        written = await self.db.supersede(scope, old_id, record, blob, at=at, actor="supersede")
        await self.sync_index()
        return written

    async def delete(self, scope: Scope, memory_id: str, *, actor: str) -> bool:
        deleted = await self.db.delete_memory(scope, memory_id, actor=actor)
        if deleted:
            await self.sync_index()
            self.request_maintenance()
        return deleted

    async def delete_user(self, tenant_id: str, user_id: str, *, actor: str) -> int:
        count = await self.db.delete_user(tenant_id, user_id, actor=actor)
        await self.sync_index()
        self.request_maintenance()
        return count

    async def search(
        self,
        scope: Scope,
        *,
        query_text: str,
        query_vector: Sequence[float] | None = None,
        k: int = 30,
        kinds: Sequence[MemoryKind] | None = None,
        statuses: Sequence[MemoryStatus] = ("active",),
        include_shared: bool = False,
        now: float | None = None,
        with_vectors: bool = False,
        embed_query: bool = False,
    ) -> list[SearchHit]:
        """Top-k by BM25 ∪ top-k by vector within the scope, checked against SQLite.

        Vector search is exact, from the scopes' vectors in memory (`storage.vector_cache`),
        unless a scope is too large for that; then it goes through the LanceDB index. With
        `embed_query` and no `query_vector`, the store embeds `query_text` with its embedder.
        """
        if k <= 0:
            return []
        now = time.time() if now is None else now
        users: list[str | None] = [scope.user_id]
        if include_shared and scope.user_id is not None:
            users.append(None)
        where = scope_filter(
            [scope_key(scope.tenant_id, user) for user in users], kinds=kinds, statuses=statuses
        )
        # The query is embedded before the BM25 search starts, not during it: on two cores the
        # two fought for the CPU and the overlap was slower (hot path at 10k memories: 29-34 ms
        # p50 against 29-30 ms in turn). BM25 then runs on LanceDB's threads while the vector
        # search runs here.
        if query_vector is None and embed_query and query_text.strip():
            query_vector = (await self.embedder.embed([query_text]))[0]
        query = self._query_vector(query_vector)

        async def search_index() -> tuple[list[IndexHit], list[IndexHit]]:
            text_search = asyncio.ensure_future(
                self.index.search_text(scope.tenant_id, query_text, where, k)
            )
            try:
                vector_hits = await self._vector_search(
                    scope.tenant_id, users, where, query, k, kinds=kinds, statuses=statuses, now=now
                )
                return vector_hits, await text_search
            finally:
                text_search.cancel()  # only matters when something above failed

        searched = self.index
        try:
            vector_hits, text_hits = await search_index()
        except Exception as exc:
            async with self._index_lock:
                await self._follow_generation()
            if self.index is searched:  # not a generation dropped under this search
                self._report("index.search", f"search failed, rebuilding the index: {exc}")
                self._repair_wanted = True
                self._wake.set()
                raise IndexUnavailable(f"the search index failed ({type(exc).__name__})") from exc
            vector_hits, text_hits = await search_index()  # once more, on the new generation
        if "index.search" in self.problems:
            self._clear("index.search")
        vector_rank = {hit.id: rank for rank, hit in enumerate(vector_hits)}
        text_rank = {hit.id: rank for rank, hit in enumerate(text_hits)}
        ordered = list(dict.fromkeys([*vector_rank, *text_rank]))
        # Records and vectors from SQLite in one query: the truth, and cheaper than reading
        # the vectors out of LanceDB with the hits.
        found = await self.db.get_many_with_vectors(
            scope.tenant_id, ordered, embedding_model=self.embedder.model_id
        )
        hits: list[SearchHit] = []
        for record, blob in found:
            if not _visible(record, scope.tenant_id, users, kinds, statuses, now):
                continue
            vector = _unblob(blob) if blob is not None else None
            if vector is not None and vector.shape != (self.index.dimensions,):
                vector = None
            bm25 = text_rank.get(record.id)
            hits.append(
                SearchHit(
                    record=record,
                    bm25_score=text_hits[bm25].score if bm25 is not None else None,
                    bm25_rank=bm25,
                    cosine=float(vector @ query)
                    if query is not None and vector is not None
                    else None,
                    vector_rank=vector_rank.get(record.id),
                    vector=vector if with_vectors else None,
                )
            )
        return hits

    async def _cached_scopes(
        self, tenant_id: str, users: Sequence[str | None]
    ) -> list[ScopeVectors] | None:
        """The scopes' vectors in memory (loading them on first use), or None when one of them
        is too large for exact search or the cache is off."""
        if not self.vector_cache.enabled:
            return None
        scopes = []
        for user in users:
            cached = self.vector_cache.get(tenant_id, user)
            if cached is None:
                if await self._scope_size(tenant_id, user) > self.vector_cache.settings.max_rows:
                    return None
                cached = await self._load_scope_vectors(tenant_id, user)
            scopes.append(cached)
        return scopes

    async def _scope_size(self, tenant_id: str, user_id: str | None) -> int:
        key = (tenant_id, user_id)
        cached = self._scope_sizes.get(key)
        if cached is None or cached[1] < time.monotonic():
            size = await self.db.count_scope(tenant_id, user_id)
            cached = (size, time.monotonic() + SCOPE_SIZE_TTL_S)
            self._scope_sizes[key] = cached
        return cached[0]

    async def _load_scope_vectors(self, tenant_id: str, user_id: str | None) -> ScopeVectors:
        # Under the index lock: no outbox batch can be applied between the read and the cache
        # taking it, so the copy misses no change (a batch already in it re-applies harmlessly).
        async with self._index_lock:
            cached = self.vector_cache.get(tenant_id, user_id)
            if cached is None:
                rows = await self.db.scope_index_rows(
                    tenant_id, user_id, embedding_model=self.embedder.model_id
                )
                cached = self.vector_cache.load(
                    tenant_id,
                    user_id,
                    [
                        IndexRow(
                            memory_id, tenant_id, user_id, kind, status, expires, "", _unblob(blob)
                        )
                        for memory_id, kind, status, expires, blob in rows
                    ],
                )
            return cached

    async def _vector_search(
        self,
        tenant_id: str,
        users: Sequence[str | None],
        where: str,
        query: np.ndarray[Any, np.dtype[np.float32]] | None,
        k: int,
        *,
        kinds: Sequence[MemoryKind] | None,
        statuses: Sequence[MemoryStatus],
        now: float,
    ) -> list[IndexHit]:
        if query is None:
            return []
        cached = await self._cached_scopes(tenant_id, users)
        if cached is None:
            return await self.index.search_vector(tenant_id, query, where, k)
        hits = [
            hit
            for scope in cached
            for hit in scope.search(query, k, kinds=kinds, statuses=statuses, now=now)
        ]
        hits.sort(key=lambda hit: hit.score)  # distances: nearest first
        return hits[:k]

    def _query_vector(
        self, vector: Sequence[float] | None
    ) -> np.ndarray[Any, np.dtype[np.float32]] | None:
        if vector is None:
            return None
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (self.index.dimensions,):
            raise ValueError(
                f"query vector has shape {query.shape}, the index holds "
                f"{self.index.dimensions}-dimensional vectors of {self.embedder.model_id}"
            )
        norm = float(np.linalg.norm(query))
        if not math.isfinite(norm) or norm == 0:
            raise ValueError("query vector must be finite and non-zero")
        normalized: np.ndarray[Any, np.dtype[np.float32]] = query / norm
        return normalized

    async def vectors(self, tenant_id: str, memory_ids: Sequence[str]) -> dict[str, list[float]]:
        blobs = await self.db.vectors(tenant_id, memory_ids)
        return {memory_id: _unblob(blob).tolist() for memory_id, blob in blobs.items()}

    async def audit(
        self, tenant_id: str, limit: int = 100, *, action: str | None = None
    ) -> list[dict[str, Any]]:
        return await self.db.audit(tenant_id, limit, action=action)

    # -- RequestStore --------------------------------------------------------------------------

    async def log_request(self, entry: RequestLog) -> None:
        await self.db.log_request(entry)

    async def get_request(self, tenant_id: str, request_id: str) -> RequestLog | None:
        return await self.db.get_request(tenant_id, request_id)

    async def set_request(self, tenant_id: str, request_id: str, **changes: Any) -> None:
        await self.db.set_request(tenant_id, request_id, **changes)

    async def requests_by_client_id(self, tenant_id: str, client_request_id: str) -> list[str]:
        return await self.db.requests_by_client_id(tenant_id, client_request_id)

    async def record_feedback(
        self, tenant_id: str, request_id: str, source: str, reward: float, comment: str | None
    ) -> float | None:
        return await self.db.record_feedback(tenant_id, request_id, source, reward, comment)

    # -- WriteQueue ----------------------------------------------------------------------------

    async def enqueue(self, tenant_id: str, kind: str, payload: dict[str, Any]) -> int:
        return await self.db.enqueue(tenant_id, kind, payload)

    async def claim(
        self,
        worker: str,
        limit: int = 1,
        *,
        first: Sequence[int] = (),
        skip_tenants: Sequence[str] = (),
    ) -> list[QueuedJob]:
        return await self.db.claim(worker, limit, first=first, skip_tenants=skip_tenants)

    async def complete(self, job_id: int) -> None:
        await self.db.complete(job_id)

    async def fail(self, job_id: int, error: str, *, retry_in_s: float | None) -> None:
        await self.db.fail(job_id, error, retry_in_s=retry_in_s)

    async def pending(self) -> int:
        return await self.db.pending()

    async def unfinished(self, job_ids: Sequence[int]) -> set[int]:
        return await self.db.unfinished(job_ids)

    # -- JobAdmin ------------------------------------------------------------------------------

    async def list_jobs(
        self,
        tenant_id: str,
        *,
        state: JobState | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[QueuedJob]:
        return await self.db.list_jobs(tenant_id, state=state, limit=limit, after=after)

    async def retry_job(self, tenant_id: str, job_id: int) -> QueuedJob | None:
        return await self.db.retry_job(tenant_id, job_id)

    async def count_jobs(self, state: JobState) -> int:
        return await self.db.count_jobs(state)

    # -- reindex -------------------------------------------------------------------------------

    async def reindex(self, *, batch: int = 512) -> dict[str, Any]:
        """Rebuild the index from SQLite as a new generation, re-embedding records made by
        another embedder, and serve it once complete; safe while other processes serve.

        Raises ReindexRunningError when another process is rebuilding already.
        """
        started = time.perf_counter()
        with _rebuild_lock(self.data_dir):
            async with self._index_lock:
                await self._follow_generation()
            started_after = await self.db.begin_index_build()
            try:
                fresh = await self.index.new_generation(self.index.generation + 1)
                records, reembedded = await self._fill(fresh, batch)
                await fresh.maintain()
                # The changes written meanwhile, most of them outside the lock, the last ones
                # inside it, where the switch cannot miss one of this process's writes.
                applied = await self._catch_up(fresh, started_after)
                async with self._index_lock:
                    applied = await self._catch_up(fresh, applied)
                    await self.db.switch_index_generation(
                        fresh.generation, applied, {_EMBEDDER_META: _embedder_tag(self.embedder)}
                    )
                    self.index = fresh
                    self.vector_cache.clear()  # scopes reload from SQLite, with the new vectors
                    self._outbox_after = 0
            except BaseException:
                await self.db.end_index_build()
                raise
        async with self._index_writer():  # no process is writing the tables being dropped
            dropped = await fresh.drop_other_generations()
        return {
            "records": records,
            "reembedded": reembedded,
            "embedder": self.embedder.model_id,
            "generation": fresh.generation,
            "dropped_tables": len(dropped),
            "seconds": round(time.perf_counter() - started, 3),
        }

    async def _fill(self, index: MemoryIndex, batch: int) -> tuple[int, int]:
        """Every live record into `index`; returns (records, re-embedded)."""
        records = reembedded = 0
        async for sources in self.db.iter_index_sources(batch):
            stale = [
                s
                for s in sources
                if s.embedding is None or s.embedding_model != self.embedder.model_id
            ]
            if stale:
                blobs = await self._embed([s.embed_text for s in stale])
                await self.db.set_embeddings(
                    [(s.id, blob) for s, blob in zip(stale, blobs, strict=True)],
                    self.embedder.model_id,
                )
                fresh = await self.db.index_sources([s.id for s in stale])
                sources = [fresh.get(s.id, s) for s in sources]
                reembedded += len(stale)
            rows = [row for row in map(self._index_row, sources) if row is not None]
            await index.append(rows)
            records += len(rows)
        return records, reembedded

    async def _catch_up(self, index: MemoryIndex, after: int) -> int:
        """Apply the outbox entries after sequence number `after` to `index`; returns the last
        one applied."""
        while True:
            up_to, tenants = await self.db.outbox_batch(after)
            if not tenants:
                return after
            await self._apply(index, tenants, to_cache=False)
            after = up_to

    # `list` comes last: inside the class body its name would shadow the builtin type.
    async def list(
        self,
        scope: Scope,
        *,
        kinds: Sequence[MemoryKind] | None = None,
        statuses: Sequence[MemoryStatus] | None = None,
        limit: int = 100,
        offset: int = 0,
        all_users: bool = False,
        after: str | None = None,
    ) -> list[MemoryRecord]:
        return await self.db.list_memories(
            scope,
            kinds=kinds,
            statuses=statuses,
            limit=limit,
            offset=offset,
            all_users=all_users,
            after=after,
        )


def _visible(
    record: MemoryRecord,
    tenant_id: str,
    users: Sequence[str | None],
    kinds: Sequence[MemoryKind] | None,
    statuses: Sequence[MemoryStatus],
    now: float,
) -> bool:
    """SQLite's word on whether a record the index returned may be shown in this search."""
    if record.tenant_id != tenant_id or record.user_id not in users:
        return False
    if kinds and record.kind not in kinds:
        return False
    if statuses and record.status not in statuses:
        return False
    return record.expires_at is None or record.expires_at > now


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


def _embedder_tag(embedder: Embedder) -> str:
    return f"{embedder.model_id}|{embedder.dimensions}"


async def open_embedded_store(
    data_dir: str | Path,
    embedder: Embedder,
    *,
    check_embedder: bool = True,
    maintenance_interval_s: float = 30.0,
    maintenance: MaintenanceSettings | None = None,
    vector_cache: VectorCacheSettings | None = None,
    lease_s: float = 120.0,
) -> EmbeddedStore:
    """Open (creating, migrating, replaying the outbox) the store in `data_dir`.

    With `check_embedder`, a store whose vectors come from another embedder is refused with a
    message that says to run `memento-proxy reindex`; the reindex command passes False.
    """
    folder = Path(data_dir)
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    db = await SQLiteDatabase.open(folder / DB_FILE, lease_s=lease_s)
    try:
        if not embedder.dimensions:
            raise ValueError(f"embedder {embedder.model_id!r} does not know its dimensions yet")
        tag = _embedder_tag(embedder)
        stored = await db.get_meta(_EMBEDDER_META)
        index = await MemoryIndex.open(
            folder / INDEX_DIR,
            embedder.dimensions,
            maintenance or MaintenanceSettings.from_env(),
            generation=await db.index_generation(),
        )
        if stored != tag:
            if stored is None or await db.count_memories() == 0:
                await db.set_meta(_EMBEDDER_META, tag)
            elif check_embedder:
                stored_model = stored.rsplit("|", 1)[0]
                raise EmbedderMismatchError(
                    f"the memories in {folder} were embedded with {stored_model!r}, but the "
                    f"configured embedder is {embedder.model_id!r}. Run `memento-proxy reindex` "
                    "to re-embed them, or configure the previous embedder again."
                )
        store = EmbeddedStore(
            folder,
            db,
            index,
            embedder,
            maintenance_interval_s=maintenance_interval_s,
            vector_cache=vector_cache or VectorCacheSettings.from_env(),
        )
        if index.created and stored == tag and await db.count_memories():
            # The index folder was lost; it is derived data, so rebuild it from SQLite.
            log.warning("search index missing in %s; rebuilding it from SQLite", folder)
            await store.reindex()
        await store.start()
    except BaseException:
        await db.close()
        raise
    return store
