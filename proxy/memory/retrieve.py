"""Retrieve: hybrid candidates from storage, ranked by relevance, learned utility and trust.

Two phases (MEMORY-DESIGN.md, MemRL-shaped). Phase A recalls candidates by similarity only: the
top-k1 of BM25 and of vector search, fused by reciprocal rank fusion, gated on status, trust,
supersession and (for cases) a minimum cosine and utility. Phase B ranks them by value:

    s = (1 − λ_kind)·ẑ(rel) + λ_kind·ẑ_clip(Q) + β·recency + η·(trust − 0.5)

with z-scores over the current candidates, so no per-corpus calibration is needed. Near-duplicates
collapse to the best-ranked one so the block is not filled with the same thing said twice.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from opentelemetry import trace

from proxy.memory import lessons
from proxy.policy import MemoryPolicy, RetrievalSettings, SanitizerPolicy
from storage.api import MemoryStore
from storage.records import MemoryKind, MemoryRecord, Scope, SearchHit, Vector

# Cases below this cosine to the query are look-alikes in words only. MEMORY-DESIGN.md says to
# calibrate δ per embedder at μ_sim + 0.5σ; for all-MiniLM-L6-v2 unrelated sentence pairs sit
# near μ ≈ 0.05, σ ≈ 0.1, which gives 0.1. A policy's `retrieval.delta_sim` overrides it.
DEFAULT_CASE_MIN_COSINE = 0.1

# Floors for the spread used by the z-scores. Without one, two candidates whose fused relevance
# differs by one rank would always be ±1σ apart, and utility could never outrank relevance.
_REL_STD_FLOOR = 0.25  # in units of the best fused relevance; one rank apart at the top is ~0.14
_Q_STD_FLOOR = 0.05
_DAY_S = 86_400.0


@dataclass(frozen=True)
class ScoredMemory:
    """A candidate after ranking, with each part of its score (kept in the request's trace)."""

    record: MemoryRecord
    score: float
    rel: float
    z_rel: float
    z_q: float
    recency: float
    cosine: float | None
    vector: Vector | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """How a case is shown: `worked`, `failed` or `unrated`; other kinds their kind."""
        if self.record.kind != "case":
            return self.record.kind
        reward = self.record.fields.get("reward")
        if self.record.q > 0 or (isinstance(reward, int | float) and reward > 0):
            return "worked"
        if self.record.q < 0 or (isinstance(reward, int | float) and reward < 0):
            return "failed"
        return "unrated"

    def parts(self) -> dict[str, float | None]:
        """The score's components, rounded for traces and the request log."""
        return {
            "score": round(self.score, 4),
            "rel": round(self.rel, 5),
            "z_rel": round(self.z_rel, 3),
            "z_q": round(self.z_q, 3),
            "q": round(self.record.q, 4),
            "recency": round(self.recency, 3),
            "trust": round(self.record.trust, 3),
            "cosine": None if self.cosine is None else round(self.cosine, 4),
        }


def fused_relevance(hit: SearchHit, settings: RetrievalSettings) -> float:
    """Weighted reciprocal rank fusion: Σ w/(k + rank) over BM25 and vector, ranks from 1."""
    rel = 0.0
    if hit.bm25_rank is not None:
        rel += settings.bm25_weight / (settings.rrf_k + hit.bm25_rank + 1)
    if hit.vector_rank is not None:
        rel += settings.vector_weight / (settings.rrf_k + hit.vector_rank + 1)
    return rel


def passes_gate(hit: SearchHit, policy: MemoryPolicy, now: float) -> bool:
    """Phase A's hard filters: only active, trusted, current records; cases also by similarity."""
    record = hit.record
    settings = policy.retrieval
    if record.status != "active" or record.superseded_by is not None:
        return False
    if record.kind == "lesson":
        return False  # lessons guard the injected set; they are not recalled as memories
    if record.trust < settings.tau_trust:
        return False
    if record.valid_to is not None and record.valid_to <= now:
        return False
    if record.expires_at is not None and record.expires_at <= now:
        return False
    if record.kind == "case":
        min_cos = settings.delta_sim if settings.delta_sim is not None else DEFAULT_CASE_MIN_COSINE
        if hit.cosine is None or hit.cosine < min_cos:
            return False
        if record.q < settings.q_min:
            return False
    return True


def rank_hits(
    hits: Sequence[SearchHit],
    policy: MemoryPolicy,
    *,
    now: float | None = None,
    rng: random.Random | None = None,
) -> list[ScoredMemory]:
    """Gate, score, order and de-duplicate search hits; best first."""
    now = time.time() if now is None else now
    settings, scoring = policy.retrieval, policy.scoring
    kept = [hit for hit in hits if passes_gate(hit, policy, now)]
    if not kept:
        return []
    best_rel = (settings.bm25_weight + settings.vector_weight) / (settings.rrf_k + 1) or 1.0
    rels = [fused_relevance(hit, settings) / best_rel for hit in kept]
    qs = [hit.record.q for hit in kept]
    z_rels = _zscores(rels, _REL_STD_FLOOR, scoring.z_clip)
    z_qs = _zscores(qs, _Q_STD_FLOOR, scoring.z_clip)
    scored = []
    for hit, rel, z_rel, z_q in zip(kept, rels, z_rels, z_qs, strict=True):
        record = hit.record
        lam = scoring.lambda_.get(record.kind, 0.0)
        recency = 0.0
        if record.kind in ("fact", "preference"):
            seen = record.last_used_at or record.updated_at
            age_days = max(0.0, now - seen) / _DAY_S
            recency = math.exp(-age_days / scoring.recency_days)
        score = (
            (1 - lam) * z_rel
            + lam * z_q
            + scoring.beta_recency * recency
            + scoring.eta_trust * (record.trust - 0.5)
        )
        scored.append(ScoredMemory(record, score, rel, z_rel, z_q, recency, hit.cosine, hit.vector))
    scored.sort(key=lambda item: item.score, reverse=True)
    if settings.epsilon > 0 and len(scored) > 1:
        _explore(scored, settings.epsilon, rng or random.Random())
    return collapse_near_duplicates(scored, settings.dedup_cos)


def collapse_near_duplicates(scored: list[ScoredMemory], threshold: float) -> list[ScoredMemory]:
    """Keep the best of each group of near-identical memories (same text or cosine ≥ threshold)."""
    dims = next((len(item.vector) for item in scored if item.vector is not None), 0)
    has_vector = [item.vector is not None and len(item.vector) == dims for item in scored]
    units = np.zeros((len(scored), dims), dtype=np.float32)
    if dims and any(has_vector):
        rows = [i for i, has in enumerate(has_vector) if has]
        units[rows] = np.asarray([scored[i].vector for i in rows], dtype=np.float32)
        norms = np.linalg.norm(units, axis=1, keepdims=True)
        np.divide(units, norms, out=units, where=norms > 0)
    similar = units @ units.T >= threshold  # every pair at once; rows without a vector are 0
    kept: list[ScoredMemory] = []
    kept_rows: list[int] = []  # rows kept so far, for the cosine test
    seen_texts: set[str] = set()
    for i, item in enumerate(scored):
        text = " ".join(item.record.text.lower().split())
        if text in seen_texts:
            continue
        if has_vector[i] and kept_rows and similar[i, kept_rows].any():
            continue
        seen_texts.add(text)
        kept.append(item)
        if has_vector[i]:
            kept_rows.append(i)
    return kept


async def retrieve(
    store: MemoryStore,
    scope: Scope,
    query: str,
    policy: MemoryPolicy,
    *,
    guard_policy: SanitizerPolicy | None = None,
    include_shared: bool = False,
    limit: int | None = None,
    now: float | None = None,
) -> list[ScoredMemory]:
    """Embed the query, fetch hybrid candidates in scope, and rank them; best first.

    With `guard_policy`, candidates that resemble a known attack lesson are dropped first (the
    read-time guard); the current span records what was dropped and why.
    """
    if not query.strip():
        return []
    k = max(policy.retrieval.k1, limit or 0)
    hits = await store.search(
        scope,
        query_text=query,
        embed_query=True,
        k=k,
        kinds=("fact", "preference", "case"),
        include_shared=include_shared,
        now=now,
        with_vectors=True,
    )
    if include_shared:
        shared_kinds = set(policy.shared_kinds)
        hits = [hit for hit in hits if _in_scope(hit, shared_kinds)]
    if guard_policy is not None and hits:
        hits, drops = await lessons.guard(store, scope.tenant_id, hits, guard_policy)
        guarded = [[d.hit.record.id, d.reason] for d in drops if d.hit.record.kind != "lesson"]
        if guarded:
            trace.get_current_span().set_attribute("memento.guard.dropped", json.dumps(guarded))
    ranked = rank_hits(hits, policy, now=now)
    return ranked if limit is None else ranked[:limit]


def _in_scope(hit: SearchHit, shared_kinds: set[MemoryKind]) -> bool:
    return hit.record.user_id is not None or hit.record.kind in shared_kinds


def _zscores(values: Sequence[float], std_floor: float, clip: float) -> list[float]:
    if len(values) < 2:
        return [0.0 for _ in values]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    std = max(std, std_floor)
    return [max(-clip, min(clip, (v - mean) / std)) for v in values]


def _explore(scored: list[ScoredMemory], epsilon: float, rng: random.Random) -> None:
    """ε-greedy: now and then lift a lower-ranked candidate to the top so it can earn a reward."""
    if rng.random() < epsilon:
        index = rng.randrange(1, len(scored))
        scored.insert(0, scored.pop(index))
