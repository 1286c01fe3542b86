"""Both halves of a hybrid search, and SQLite's word on which hits may be shown.

Vector search is exact and BM25 in process, from the scopes' rows in memory
(`storage.vector_cache`, `storage.scope_text`), unless a scope is too large for that; then both
go through the LanceDB index. A scope's rows are loaded from SQLite on first use, under the
index lock, so the copy misses no change; searches made while it loads go through the index.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from storage.index import MemoryIndex
from storage.index_schema import MAKE_WAY, IndexHit
from storage.index_sync import IndexSync
from storage.records import MemoryKind, MemoryRecord, MemoryStatus
from storage.sqlite.memories import MemoryRows
from storage.vector_cache import ScopeVectors

# Sizes of scopes too large for the vector cache are re-counted at most this often.
SCOPE_SIZE_TTL_S = 30.0


class VectorSearch:
    """Nearest vectors within some scopes of one tenant, from memory or from the index."""

    def __init__(self, sync: IndexSync, rows: MemoryRows) -> None:
        self._sync = sync
        self._rows = rows
        self._scope_sizes: dict[tuple[str, str | None], tuple[int, float]] = {}
        self._loading: dict[tuple[str, str | None], asyncio.Future[ScopeVectors]] = {}

    @property
    def index(self) -> MemoryIndex:
        """The LanceDB generation served now (a rebuild replaces it)."""
        return self._sync.index

    async def nearest(
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
        cached = await self.cached_scopes(tenant_id, users)
        if cached is None:
            return await (await self.served_index()).search_vector(tenant_id, query, where, k)
        found = [
            await scope.search(query, k, kinds=kinds, statuses=statuses, now=now)
            for scope in cached
        ]
        return best_of(found, k, by_distance=True)

    async def served_index(self) -> MemoryIndex:
        """The generation served, once every write committed before is in it (writes reach
        the index in the background, `IndexSync.publish`)."""
        await self._sync.caught_up()
        return self._sync.index

    async def cached_scopes(
        self, tenant_id: str, users: Sequence[str | None], *, wait: bool = False
    ) -> list[ScopeVectors] | None:
        """The scopes' rows in memory, or None when the search goes to the index instead: the
        cache is off, a scope is too large for it, or a scope is not in memory yet and the index
        can answer at once.

        A scope not in memory starts loading (once, in the background). Unless `wait`, the
        search goes to the index meanwhile when LanceDB is connected in this process and
        reports no problem: loading 10k memories takes about half a second, twice a chat
        call's retrieval deadline. The index is first brought up to date with every commit, as
        the copy would be (other processes' commits reach a table handle up to half a second
        late). Otherwise the search waits for the copy, which needs only the source of truth:
        connecting LanceDB for one search would take longer still, and a process that only
        ever searches hot scopes never loads it.
        """
        cache = self._sync.vector_cache
        if not cache.enabled:
            return None
        scopes = []
        for user in users:
            cached = cache.get(tenant_id, user)
            if cached is None:
                size = await self._scope_size(tenant_id, user)
                if not self._fits(size):
                    return None
                # The index answers meanwhile, or the search waits for the copy.
                by_index = not wait and self._sync.index.connected and not self._sync.problems
                loading = self._load_scope_vectors(tenant_id, user, make_way=by_index)
                if by_index:
                    await (await self.served_index()).see_latest(tenant_id)
                    return None
                cached = await asyncio.shield(loading)
            scopes.append(cached)
        return scopes

    async def stop_loading(self) -> None:
        """Give up the scopes still loading (the store closes): a copy is only ever a cache."""
        loads = list(self._loading.values())
        for loading in loads:
            loading.cancel()
        await asyncio.gather(*loads, return_exceptions=True)

    async def warm(self, tenant_id: str, users: Sequence[str | None]) -> None:
        """Have the scopes that fit the cache in memory now, rather than after the search
        that first finds them missing."""
        await self.cached_scopes(tenant_id, users, wait=True)

    def _fits(self, rows: int) -> bool:
        """Whether a scope of `rows` records is searched in memory: not past the cache's row
        limit, nor larger alone than its byte budget (it would be dropped as soon as loaded)."""
        settings = self._sync.vector_cache.settings
        vectors = rows * self._sync.vector_cache.dimensions * 4
        return rows <= settings.max_rows and vectors <= settings.max_bytes

    async def _scope_size(self, tenant_id: str, user_id: str | None) -> int:
        key = (tenant_id, user_id)
        cached = self._scope_sizes.get(key)
        if cached is None or cached[1] < time.monotonic():
            size = await self._rows.count_scope(tenant_id, user_id)
            cached = (size, time.monotonic() + SCOPE_SIZE_TTL_S)
            self._scope_sizes[key] = cached
        return cached[0]

    def _load_scope_vectors(
        self, tenant_id: str, user_id: str | None, *, make_way: bool = False
    ) -> asyncio.Future[ScopeVectors]:
        """The scope's copy, loaded once however many searches ask for it meanwhile. The load
        runs as its own task: a search that gives up (its retrieval deadline) must not cancel
        it, or a scope whose load takes longer than the deadline would never be cached and
        every search would start it again. With `make_way` (the index answers meanwhile) its
        worker threads pause now and then for the event loop (`yielding`)."""
        key = (tenant_id, user_id)
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(tenant_id, user_id, make_way))
            self._loading[key] = loading

            def forget(done: asyncio.Future[ScopeVectors]) -> None:
                self._loading.pop(key, None)
                if not done.cancelled():
                    done.exception()  # seen here even if every search waiting for it gave up

            loading.add_done_callback(forget)
        return loading

    async def _load(self, tenant_id: str, user_id: str | None, make_way: bool) -> ScopeVectors:
        MAKE_WAY.set(make_way)  # this task's own context, and its worker threads'
        # Under the index lock: no outbox batch can be applied between the read and the cache
        # taking it, so the copy misses no change (a batch already in it re-applies harmlessly).
        cache = self._sync.vector_cache
        async with self._sync.lock:
            cached = cache.get(tenant_id, user_id)
            if cached is None:
                rows = await self._sync.scope_rows(tenant_id, user_id)
                # Thousands of rows copied and texts analysed in a thread, not on the event
                # loop; the cache itself is changed here, where the hot path reads it.
                cached = cache.adopt(tenant_id, user_id, await asyncio.to_thread(cache.build, rows))
            return cached

    async def nearest_many(
        self,
        tenant_id: str,
        users: Sequence[str | None],
        where: str,
        queries: np.ndarray[Any, np.dtype[np.float32]],
        k: int,
        *,
        kinds: Sequence[MemoryKind] | None,
        statuses: Sequence[MemoryStatus],
        now: float,
    ) -> list[list[IndexHit]]:
        """`nearest` for several queries at once, with the scoring in a worker thread: the
        write path's checks, which must not hold the event loop for a scope's worth of products.

        The cache's scopes change only under the index lock (outbox batches, loads, evictions),
        so holding it while the thread reads keeps the rows and their ids consistent.
        """
        if not len(queries):
            return []
        # The write path waits for a scope's copy: its checks are exact and off the hot path.
        cached = await self.cached_scopes(tenant_id, users, wait=True)
        if cached is None:
            index = await self.served_index()
            return [await index.search_vector(tenant_id, q, where, k) for q in queries]
        scopes = cached

        def score() -> list[list[IndexHit]]:
            per_scope = [
                scope.search_many(queries, k, kinds=kinds, statuses=statuses, now=now)
                for scope in scopes
            ]
            return [
                best_of([scope_hits[position] for scope_hits in per_scope], k, by_distance=True)
                for position in range(len(queries))
            ]

        async with self._sync.lock:
            return await asyncio.to_thread(score)


class TextSearch:
    """Best BM25 matches within some scopes of one tenant: in process for scopes the vector
    cache holds, from the index's full-text tables otherwise."""

    def __init__(self, vectors: VectorSearch) -> None:
        self._vectors = vectors

    async def matches(
        self,
        tenant_id: str,
        users: Sequence[str | None],
        where: str,
        text: str,
        k: int,
        *,
        kinds: Sequence[MemoryKind] | None,
        statuses: Sequence[MemoryStatus],
        now: float,
    ) -> list[IndexHit]:
        if not text.strip():
            return []
        cached = await self._vectors.cached_scopes(tenant_id, users)
        if cached is None:
            return await (await self._vectors.served_index()).search_text(tenant_id, text, where, k)
        found = [scope.match(text, k, kinds=kinds, statuses=statuses, now=now) for scope in cached]
        return best_of(found, k, by_distance=False)


def best_of(per_scope: Sequence[list[IndexHit]], k: int, *, by_distance: bool) -> list[IndexHit]:
    """The k best of several scopes' hits: the nearest when scores are distances, else the
    highest (BM25)."""
    hits = [hit for hits in per_scope for hit in hits]
    hits.sort(key=lambda hit: hit.score if by_distance else -hit.score)
    return hits[:k]


def normalized(
    vector: Sequence[float], *, what: str = "vectors"
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """`vector` scaled to length 1; a vector of no finite length is refused."""
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    if not math.isfinite(norm) or norm == 0:
        raise ValueError(f"{what} must be finite and non-zero")
    unit: np.ndarray[Any, np.dtype[np.float32]] = array / norm
    return unit


def query_unit_vector(
    vector: Sequence[float], dimensions: int, model_id: str
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A search's query vector scaled to length 1, refused unless it has `dimensions`."""
    unit: np.ndarray[Any, np.dtype[np.float32]] = query_unit_rows([vector], dimensions, model_id)[0]
    return unit


def query_unit_rows(
    vectors: Sequence[Sequence[float]], dimensions: int, model_id: str
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Queries' vectors as the rows of one matrix, each scaled to length 1; refused unless
    each has `dimensions`, and a finite, non-zero length."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != dimensions:
        shape = matrix.shape[1:] if matrix.ndim >= 2 else matrix.shape
        raise ValueError(
            f"query vector has shape {shape}, the index holds "
            f"{dimensions}-dimensional vectors of {model_id}"
        )
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not (np.isfinite(norms).all() and norms.all()):
        raise ValueError("query vector must be finite and non-zero")
    unit: np.ndarray[Any, np.dtype[np.float32]] = matrix / norms
    return unit


def visible(
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
