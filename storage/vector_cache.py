"""Exact vector search and BM25 for small and medium scopes, from rows held in memory.

LanceDB's flat search over a scope of thousands of rows is several times slower than numpy
scoring the same vectors in memory, and an IVF probe can miss a small scope's rows (figures:
docs/storage.md#search); its full-text query costs a few milliseconds of Python and Rust
around the search itself. So each scope (one tenant's user, or its shared records) of up
to `max_rows` records keeps its vectors, filter columns and BM25 posting lists
(`storage.scope_text`) in memory: loaded from SQLite on its first search and kept current by
the same outbox rows the LanceDB index receives. Scopes used least recently are dropped once
the cache holds more than `max_bytes`.

Like the index, the cache is derived data: it can only hide a record for a moment, never show one
it should not, because the store re-checks every hit against SQLite.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from storage.errors import whole_number
from storage.index_schema import IndexHit, IndexRow, ScopeRows, yielding
from storage.records import MEMORY_KINDS, MEMORY_STATUSES, MemoryKind, MemoryStatus
from storage.scope_text import ScopeText

_KIND_CODE: dict[str, int] = {kind: code for code, kind in enumerate(MEMORY_KINDS)}
_STATUS_CODE: dict[str, int] = {status: code for code, status in enumerate(MEMORY_STATUSES)}

ScopeKey = tuple[str, str | None]  # (tenant_id, user_id); None is the tenant-shared scope
# A scope of this many rows is scored in a worker thread, off the event loop: its product costs
# more than the thread hop (10k rows of 384 floats: ~0.6 ms, a hop ~0.1 ms), and numpy lets
# go of the GIL meanwhile, so the loop serves other work (a search's BM25 half) on the other core.
OFF_LOOP_SCAN_ROWS = 4096


@dataclass(frozen=True)
class VectorCacheSettings:
    # 10k vectors of 384 floats are 15 MB; exact scoring grows with the rows, and well past
    # this the ANN index is the faster path.
    max_rows: int = 20_000
    max_bytes: int = 256 << 20

    @classmethod
    def from_env(cls) -> VectorCacheSettings:
        """MEMENTO_VECTOR_CACHE_MB (0 turns the cache off) and MEMENTO_VECTOR_CACHE_MAX_ROWS."""
        return cls(
            max_rows=whole_number("MEMENTO_VECTOR_CACHE_MAX_ROWS", cls.max_rows),
            max_bytes=whole_number("MEMENTO_VECTOR_CACHE_MB", cls.max_bytes >> 20) << 20,
        )


class ScopeVectors:
    """One scope's searchable rows: vectors, index texts, kind, status and expiry."""

    def __init__(self, dimensions: int, capacity: int = 64) -> None:
        self.ids: list[str] = []
        self._position: dict[str, int] = {}
        self._matrix = np.empty((capacity, dimensions), dtype=np.float32)
        self._kinds = np.empty(capacity, dtype=np.int8)
        self._statuses = np.empty(capacity, dtype=np.int8)
        self._expires = np.empty(capacity, dtype=np.float64)  # +inf: never
        self.text = ScopeText(capacity)  # BM25 over the rows' index texts, by the same positions
        self.changes = 0  # bumped by every upsert and remove: a scan off the loop checks it

    @classmethod
    def of_rows(cls, dimensions: int, rows: ScopeRows, capacity: int) -> ScopeVectors:
        """The copy of `rows` (distinct records): what `upsert` of each would make, in
        whole-array steps."""
        made = cls(dimensions, max(capacity, len(rows)))
        n = len(rows)
        made.ids = list(rows.ids)
        made._position = {memory_id: at for at, memory_id in enumerate(made.ids)}
        made._matrix[:n] = rows.vectors
        made._kinds[:n] = [_KIND_CODE[kind] for kind in rows.kinds]
        made._statuses[:n] = [_STATUS_CODE[status] for status in rows.statuses]
        made._expires[:n] = [np.inf if at is None else at for at in rows.expires_at]
        made.text = ScopeText.of_texts(yielding(rows.search_texts), len(made._matrix))
        return made

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        arrays = (self._matrix, self._kinds, self._statuses, self._expires)
        return sum(array.nbytes for array in arrays) + 100 * len(self.ids) + self.text.nbytes

    def vector(self, memory_id: str) -> np.ndarray[Any, np.dtype[np.float32]] | None:
        at = self._position.get(memory_id)
        return None if at is None else self._matrix[at].copy()

    def upsert(self, row: IndexRow) -> None:
        self.changes += 1
        at = self._position.get(row.id)
        if at is None:
            at = len(self.ids)
            if at == len(self._matrix):
                self._grow()
            self.ids.append(row.id)
            self._position[row.id] = at
        self._matrix[at] = row.vector
        self._kinds[at] = _KIND_CODE[row.kind]
        self._statuses[at] = _STATUS_CODE[row.status]
        self._expires[at] = np.inf if row.expires_at is None else row.expires_at
        self.text.set(at, row.search_text)

    def remove(self, memory_id: str) -> None:
        at = self._position.pop(memory_id, None)
        if at is None:
            return
        self.changes += 1
        last = len(self.ids) - 1
        self.text.remove_last(at)
        if at != last:  # move the last row into the hole
            moved = self.ids[last]
            self.ids[at] = moved
            self._position[moved] = at
            for array in (self._matrix, self._kinds, self._statuses, self._expires):
                array[at] = array[last]
        self.ids.pop()

    def _grow(self) -> None:
        size = len(self._matrix) + max(64, len(self._matrix) // 4)
        self._matrix = _resized(self._matrix, size)
        self._kinds = _resized(self._kinds, size)
        self._statuses = _resized(self._statuses, size)
        self._expires = _resized(self._expires, size)

    async def search(
        self,
        query: np.ndarray[Any, np.dtype[np.float32]],
        k: int,
        *,
        kinds: Sequence[MemoryKind] | None,
        statuses: Sequence[MemoryStatus],
        now: float,
    ) -> list[IndexHit]:
        """The k rows nearest to `query` (a unit vector) that pass the filters; distance is the
        negated dot product, as the index reports it. A scope of `OFF_LOOP_SCAN_ROWS` rows or
        more is scored in a worker thread; an outbox batch may change its rows on the loop
        meanwhile, and then the scope is scored again here, so a hit is never a moved row."""
        if not self.ids or k <= 0:
            return []
        keep = self._passing(kinds, statuses, now)
        if len(keep) >= OFF_LOOP_SCAN_ROWS:
            before = self.changes
            found = await asyncio.to_thread(_nearest, self._matrix[: len(keep)], query, keep, k)
            if self.changes == before:
                return self._hits(*found)
            keep = self._passing(kinds, statuses, now)
        return self._hits(*_nearest(self._matrix[: len(keep)], query, keep, k))

    def _hits(self, scores: np.ndarray[Any, Any], picked: list[int]) -> list[IndexHit]:
        return [IndexHit(id=self.ids[i], score=-float(scores[i])) for i in picked]

    def match(
        self,
        query: str,
        k: int,
        *,
        kinds: Sequence[MemoryKind] | None,
        statuses: Sequence[MemoryStatus],
        now: float,
    ) -> list[IndexHit]:
        """The k rows that pass the filters with the highest BM25 score for `query` (rows
        matching no term of it are not hits), best first."""
        scores = self.text.scores(query) if k > 0 else None
        if scores is None:
            return []
        keep = self._passing(kinds, statuses, now) & (scores > 0)
        picked = _top(scores, keep, k)
        return [IndexHit(id=self.ids[i], score=float(scores[i])) for i in picked]

    def search_many(
        self,
        queries: np.ndarray[Any, np.dtype[np.float32]],
        k: int,
        *,
        kinds: Sequence[MemoryKind] | None,
        statuses: Sequence[MemoryStatus],
        now: float,
    ) -> list[list[IndexHit]]:
        """`search` for each row of `queries` (unit vectors), scored in one matrix product and
        ranked in whole-matrix operations: the write path's batches (an import's lines, 256
        at a time), run in a worker thread."""
        n = len(self.ids)
        if n == 0 or k <= 0:
            return [[] for _ in queries]
        keep = self._passing(kinds, statuses, now)
        scores = queries @ self._matrix[:n].T
        scores[:, ~keep] = -np.inf
        best, best_scores = _best_per_row(scores, k)
        ids = self.ids
        return [
            [
                IndexHit(id=ids[i], score=-score)
                for i, score in zip(row.tolist(), row_scores.tolist(), strict=True)
                if score != -np.inf
            ]
            for row, row_scores in zip(best, best_scores, strict=True)
        ]

    def _passing(
        self, kinds: Sequence[MemoryKind] | None, statuses: Sequence[MemoryStatus], now: float
    ) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Which rows pass a search's filters: kind, status, not expired."""
        n = len(self.ids)
        keep = self._expires[:n] > now
        if kinds:
            keep &= _allowed(_KIND_CODE, kinds)[self._kinds[:n]]
        if statuses:
            keep &= _allowed(_STATUS_CODE, statuses)[self._statuses[:n]]
        return keep


def _allowed(codes: dict[str, int], names: Sequence[str]) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """A lookup table by code: True for the codes of `names` (a gather over the rows' codes is
    several times cheaper than `np.isin`)."""
    table = np.zeros(len(codes), dtype=np.bool_)
    table[[codes[name] for name in names]] = True
    return table


def _resized(array: np.ndarray[Any, Any], size: int) -> np.ndarray[Any, Any]:
    grown = np.empty((size, *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def _nearest(
    matrix: np.ndarray[Any, np.dtype[np.float32]],
    query: np.ndarray[Any, np.dtype[np.float32]],
    keep: np.ndarray[Any, np.dtype[np.bool_]],
    k: int,
) -> tuple[np.ndarray[Any, Any], list[int]]:
    """Each row's dot product with `query`, and the positions of the k highest among the rows
    `keep` lets through, best first. einsum, not `@`: BLAS would spread this over threads that
    the embedder and LanceDB need, and on a busy box waiting for them costs more than the
    product itself."""
    scores = np.einsum("ij,j->i", matrix, query)
    return scores, _top(scores, keep, k)


def _top(
    scores: np.ndarray[Any, Any], keep: np.ndarray[Any, np.dtype[np.bool_]], k: int
) -> list[int]:
    """Positions of the k highest scores among the rows `keep` lets through, best first (the
    others' scores are set to -inf in place)."""
    scores[~keep] = -np.inf
    if len(scores) > k:
        best = np.argpartition(-scores, k - 1)[:k]
        order = best[np.argsort(-scores[best], kind="stable")]
    else:
        order = np.argsort(-scores, kind="stable")
    return [i for i in order.tolist() if keep[i]]


_BLOCK = 64  # columns per block in `_best_per_row`


def _best_per_row(
    scores: np.ndarray[Any, np.dtype[np.float32]], k: int
) -> tuple[np.ndarray[Any, np.dtype[np.intp]], np.ndarray[Any, np.dtype[np.float32]]]:
    """Each row's k highest scores and their columns, best first.

    A wide row is first cut into blocks of `_BLOCK` columns, and only its k blocks with the
    highest maxima are searched: each of those holds a score at least the k-th highest block
    maximum, so the row's k-th best is too, and every score above it lies in one of them. The
    exact selection then runs over k × `_BLOCK` columns, not the whole row: 256 queries over
    10,000 rows took 39 ms with one `argpartition` over each whole row, 9 ms this way."""
    rows, n = scores.shape
    columns = None
    blocks = -(-n // _BLOCK)
    if blocks > 2 * k:
        padded = scores
        if blocks * _BLOCK != n:
            padded = np.full((rows, blocks * _BLOCK), -np.inf, dtype=scores.dtype)
            padded[:, :n] = scores
        grouped = padded.reshape(rows, blocks, _BLOCK)
        chosen = np.argpartition(-grouped.max(axis=2), k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(grouped, chosen[:, :, None], axis=1).reshape(rows, -1)
        columns = (chosen[:, :, None] * _BLOCK + np.arange(_BLOCK)).reshape(rows, -1)
    if scores.shape[1] > k:
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        best = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    top = np.take_along_axis(scores, best, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    best = np.take_along_axis(best, order, axis=1)
    if columns is not None:
        best = np.take_along_axis(columns, best, axis=1)
    return best, np.take_along_axis(top, order, axis=1)


class VectorCache:
    """Scopes' vectors in memory, least recently searched dropped first past `max_bytes`."""

    def __init__(self, dimensions: int, settings: VectorCacheSettings | None = None) -> None:
        self.dimensions = dimensions
        self.settings = settings or VectorCacheSettings()
        self._scopes: OrderedDict[ScopeKey, ScopeVectors] = OrderedDict()
        self._owner: dict[str, ScopeKey] = {}  # memory id -> its cached scope

    @property
    def enabled(self) -> bool:
        return self.settings.max_bytes > 0 and self.settings.max_rows > 0

    def get(self, tenant_id: str, user_id: str | None) -> ScopeVectors | None:
        key = (tenant_id, user_id)
        scope = self._scopes.get(key)
        if scope is not None:
            self._scopes.move_to_end(key)
        return scope

    def load(self, tenant_id: str, user_id: str | None, rows: ScopeRows) -> ScopeVectors:
        """Cache a scope from all its index rows (read from SQLite)."""
        return self.adopt(tenant_id, user_id, self.build(rows))

    def build(self, rows: ScopeRows) -> ScopeVectors:
        """A scope's copy, not yet cached: touches nothing shared, so it can be built in a
        worker thread (thousands of texts analysed, vectors copied) and adopted on the loop."""
        # Room for the rows and an eighth more, not the next power of two: the byte budget
        # counts what is allocated.
        return ScopeVectors.of_rows(self.dimensions, rows, max(64, len(rows) + len(rows) // 8))

    def adopt(self, tenant_id: str, user_id: str | None, scope: ScopeVectors) -> ScopeVectors:
        """Cache `scope` (made by `build`) as the copy of (tenant_id, user_id)."""
        key = (tenant_id, user_id)
        self.drop(key)
        for memory_id in scope.ids:
            self._owner[memory_id] = key
        self._scopes[key] = scope
        self._evict()
        return scope

    def apply(self, rows: Iterable[IndexRow], gone: Iterable[str]) -> None:
        """Mirror one outbox batch: changed rows of cached scopes, erased or unindexed ids."""
        for memory_id in gone:
            key = self._owner.pop(memory_id, None)
            if key is not None and key in self._scopes:
                self._scopes[key].remove(memory_id)
        for row in rows:
            key = (row.tenant_id, row.user_id)  # a record never changes scope
            scope = self._scopes.get(key)
            if scope is None:
                continue
            if len(scope) >= self.settings.max_rows and row.id not in self._owner:
                self.drop(key)  # grew past what exact search is for: the index takes over
                continue
            scope.upsert(row)
            self._owner[row.id] = key
        self._evict()

    def tenants(self) -> set[str]:
        """The tenants with a scope in the cache."""
        return {tenant_id for tenant_id, _ in self._scopes}

    def drop(self, key: ScopeKey) -> None:
        scope = self._scopes.pop(key, None)
        if scope is not None:
            for memory_id in scope.ids:
                self._owner.pop(memory_id, None)

    def clear(self) -> None:
        self._scopes.clear()
        self._owner.clear()

    @property
    def nbytes(self) -> int:
        return sum(scope.nbytes for scope in self._scopes.values())

    def _evict(self) -> None:
        total = self.nbytes
        while total > self.settings.max_bytes and self._scopes:
            key = next(iter(self._scopes))
            total -= self._scopes[key].nbytes
            self.drop(key)
