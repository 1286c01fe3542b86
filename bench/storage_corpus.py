"""What the storage benchmarks search and how they time it: synthetic topic-clustered memories,
the exact top-k that vector recall is measured against, and a timed run of hybrid, vector-only
and BM25-only searches over one scope per query.

Bulk rows carry synthetic vectors and texts (embedding a million texts with MiniLM would take
hours on this machine); words and vector of a record share its topic, so BM25 and vector search
find the same neighbourhoods, as with real embeddings.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from storage import EmbeddedStore
from storage.records import Scope

TOPICS = 400
DIM = 384


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class Corpus:
    """Topic-clustered synthetic memories: words and vectors of a record share its topic."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qui", "dro"]
        vocab: set[str] = set()
        while len(vocab) < 6_000:
            parts = self.rng.choice(syllables, size=int(self.rng.integers(2, 5)))
            vocab.add("".join(parts))
        self.vocab = np.asarray(sorted(vocab))
        self.topic_matrix = np.stack(
            [self.rng.choice(len(self.vocab), size=40, replace=False) for _ in range(TOPICS)]
        )
        centers = self.rng.standard_normal((TOPICS, DIM)).astype(np.float32)
        self.centers = centers / np.linalg.norm(centers, axis=1, keepdims=True)
        zipf = 1.0 / np.arange(1, len(self.vocab) + 1)
        self.background = zipf / zipf.sum()

    def _vectors(self, topics: np.ndarray[Any, Any], noise: float) -> np.ndarray[Any, Any]:
        vectors = self.centers[topics] + noise * self.rng.standard_normal(
            (len(topics), DIM)
        ).astype(np.float32) / np.sqrt(DIM)
        unit: np.ndarray[Any, Any] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return unit

    def memories(self, count: int) -> tuple[list[str], np.ndarray[Any, Any]]:
        topics = self.rng.integers(0, TOPICS, size=count)
        own = self.topic_matrix[topics[:, None], self.rng.integers(0, 40, size=(count, 4))]
        common = self.rng.choice(len(self.vocab), size=(count, 6), p=self.background)
        words = self.vocab[np.concatenate([own, common], axis=1)]
        texts = [" ".join(row) for row in words.tolist()]
        return texts, self._vectors(topics, noise=0.9)

    def queries(self, count: int) -> list[tuple[str, list[float]]]:
        topics = self.rng.integers(0, TOPICS, size=count)
        vectors = self._vectors(topics, noise=0.9)
        own = self.topic_matrix[topics[:, None], self.rng.integers(0, 40, size=(count, 2))]
        common = self.rng.choice(len(self.vocab), size=(count, 1), p=self.background)
        words = self.vocab[np.concatenate([own, common], axis=1)]
        return [
            (" ".join(row), vector.tolist())
            for row, vector in zip(words.tolist(), vectors, strict=True)
        ]


class SearchedScopes:
    """Ids and vectors of every searched scope (one user's plus the tenant-shared records),
    by a key of the caller's choice, for the exact top-k that recall is measured against."""

    def __init__(self) -> None:
        self._ids: dict[Hashable, list[str]] = {}
        self._parts: dict[Hashable, list[np.ndarray[Any, Any]]] = {}
        self._matrix: dict[Hashable, np.ndarray[Any, Any]] = {}

    def add(self, key: Hashable, ids: list[str], vectors: np.ndarray[Any, Any]) -> None:
        self._ids.setdefault(key, []).extend(ids)
        self._parts.setdefault(key, []).append(vectors.astype(np.float32))
        self._matrix.pop(key, None)

    def first_id(self, key: Hashable) -> str:
        return self._ids[key][0]

    def exact_top(self, key: Hashable, query: list[float], k: int) -> set[str]:
        matrix = self._matrix.get(key)
        if matrix is None:
            matrix = self._matrix[key] = np.concatenate(self._parts[key])
            self._parts[key] = [matrix]
        scores = matrix @ np.asarray(query, dtype=np.float32)
        top = np.argpartition(-scores, k)[:k] if len(scores) > k else np.arange(len(scores))
        ids = self._ids[key]
        return {ids[i] for i in top}


async def search_latencies(
    store: EmbeddedStore,
    queries: list[tuple[str, list[float]]],
    scopes: SearchedScopes,
    scope_of: Callable[[int], tuple[Scope, Hashable]],
) -> dict[str, float]:
    """Hybrid, vector-only and BM25-only `store.memories.search` (k=30, tenant-shared records
    included, as the proxy asks) for each query, in the scope `scope_of(n)` names for the n-th
    (with its key in `scopes`); p50/p99 in ms, hits, and the vector candidates' recall against
    the exact top 30 of that scope."""
    hybrid: list[float] = []
    vector_only: list[float] = []
    text_only: list[float] = []
    found: list[int] = []
    recall: list[float] = []
    for n, (text, vector) in enumerate(queries):
        scope, key = scope_of(n)
        for bucket, query_text, query_vector in (
            (hybrid, text, vector),
            (vector_only, "", vector),
            (text_only, text, None),
        ):
            started = time.perf_counter()
            hits = await store.memories.search(
                scope,
                query_text=query_text,
                query_vector=query_vector,
                k=30,
                include_shared=True,
            )
            bucket.append((time.perf_counter() - started) * 1000)
            if bucket is hybrid:
                found.append(len(hits))
                candidates = {hit.record.id for hit in hits if hit.vector_rank is not None}
                exact = scopes.exact_top(key, vector, 30)
                recall.append(len(candidates & exact) / len(exact))
    return {
        "hybrid_p50_ms": percentile(hybrid, 50),
        "hybrid_p99_ms": percentile(hybrid, 99),
        "vector_p50_ms": percentile(vector_only, 50),
        "bm25_p50_ms": percentile(text_only, 50),
        "hits_mean": statistics.fmean(found),
        "vector_recall_at_30": statistics.fmean(recall),
        "vector_recall_at_30_min": min(recall),
    }
