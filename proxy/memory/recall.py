"""Recall: candidates from the store for one query, guarded, and the optional second round.

The first round searches the query text (BM25) and its vector in the scope. With
`retrieval.second_round_seeds`, a second round searches from the first round's best hits
(pseudo-relevance feedback, for questions whose answer is spread over several memories): the
query with the seeds' names and numbers, and the seeds' mean vector. Its hits join the
candidates, and its ranks add to their fused relevance with `second_round_weight`. Every
round's hits pass the read-time lesson guard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from proxy.memory import lessons
from proxy.memory.particulars import particulars_of
from proxy.policy import MemoryPolicy, Policy, RetrievalSettings
from storage.api import MemoryStore
from storage.records import MemoryKind, MemoryRecord, Scope, SearchHit, Vector


def fused_relevance(hit: SearchHit, settings: RetrievalSettings) -> float:
    """Weighted reciprocal rank fusion: Σ w/(k + rank) over BM25 and vector, ranks from 1."""
    rel = 0.0
    if hit.bm25_rank is not None:
        rel += settings.bm25_weight / (settings.rrf_k + hit.bm25_rank + 1)
    if hit.vector_rank is not None:
        rel += settings.vector_weight / (settings.rrf_k + hit.vector_rank + 1)
    return rel


async def search_guarded(
    store: MemoryStore,
    scope: Scope,
    query: str,
    policy: MemoryPolicy,
    *,
    k: int,
    kinds: tuple[MemoryKind, ...] = ("fact", "preference", "case"),
    query_vector: Sequence[float] | None = None,
    guard_policy: Policy | None = None,
    include_shared: bool = False,
    now: float | None = None,
) -> tuple[list[SearchHit], list[tuple[MemoryRecord, str]]]:
    """Hits in scope (the query embedded unless `query_vector` is given), and the ones the
    lesson guard dropped, with its reason."""
    hits = await store.search(
        scope,
        query_text=query,
        query_vector=query_vector,
        embed_query=query_vector is None,
        k=k,
        kinds=kinds,
        include_shared=include_shared,
        now=now,
        with_vectors=True,
    )
    if include_shared:
        shared_kinds = set(policy.shared_kinds)
        hits = [hit for hit in hits if _in_scope(hit, shared_kinds)]
    if guard_policy is None or not hits:
        return hits, []
    hits, drops = await lessons.guard(store, scope.tenant_id, hits, guard_policy)
    return hits, [(d.hit.record, d.reason) for d in drops if d.hit.record.kind != "lesson"]


async def second_round(
    store: MemoryStore,
    scope: Scope,
    query: str,
    hits: list[SearchHit],
    seeds: Sequence[tuple[MemoryRecord, Vector | None]],
    policy: MemoryPolicy,
    *,
    guard_policy: Policy | None = None,
    include_shared: bool = False,
    now: float | None = None,
) -> tuple[list[SearchHit], dict[str, float], list[tuple[MemoryRecord, str]]]:
    """Search again from `seeds` (the first round's best, with their vectors). Returns the
    hits of both rounds, each second-round hit's added relevance by memory id, and what the
    guard dropped."""
    settings = policy.retrieval
    names = sorted(set().union(*(particulars_of(record.text) for record, _ in seeds)))
    vectors = [vector for _, vector in seeds if vector is not None]
    centroid = np.mean(np.asarray(vectors, dtype=np.float32), axis=0) if vectors else None
    if centroid is None or not np.linalg.norm(centroid) > 0:
        return hits, {}, []
    again, dropped = await search_guarded(
        store,
        scope,
        " ".join([query, *names]),
        policy,
        k=settings.k1,
        kinds=("fact", "preference"),  # a case is recalled by its request, not by association
        query_vector=centroid.tolist(),
        guard_policy=guard_policy,
        include_shared=include_shared,
        now=now,
    )
    known = {hit.record.id for hit in hits}
    merged = list(hits)
    extra: dict[str, float] = {}
    for hit in again:
        extra[hit.record.id] = settings.second_round_weight * fused_relevance(hit, settings)
        if hit.record.id not in known:
            # Found only by association: no rank or cosine of its own for the query.
            merged.append(dataclasses.replace(hit, bm25_rank=None, vector_rank=None, cosine=None))
    return merged, extra, dropped


def _in_scope(hit: SearchHit, shared_kinds: set[MemoryKind]) -> bool:
    return hit.record.user_id is not None or hit.record.kind in shared_kinds
