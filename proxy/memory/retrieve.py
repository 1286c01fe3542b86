"""Retrieve: hybrid candidates from storage, ranked by relevance, learned utility and trust.

Two phases (docs/design.md, MemRL-shaped). Phase A recalls candidates by similarity only: the
top-k1 of BM25 and of vector search, fused by reciprocal rank fusion, gated on status, trust,
supersession and (for cases) a minimum cosine and utility; with `second_round_seeds`, a second
search from the best of them adds its ranks (`recall.py`). Phase B ranks them by value:

    s = (1 − λ_kind)·ẑ(rel) + λ_kind·ẑ_clip(Q) + β·recency + η·(trust − 0.5)

with z-scores over the current candidates, so no per-corpus calibration is needed. Near-duplicates
collapse to the best-ranked one so the block is not filled with the same thing said twice.

Each candidate keeps its four weighted terms (`ScoreTerms`), which add up to its score, and the
retrieve span records every candidate left out and why (`Exclusion`), so the trace can answer
"why this memory, and why not that one?" without re-deriving the formula.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opentelemetry import trace

from proxy.memory.particulars import particulars_of
from proxy.memory.query_period import period_relevance
from proxy.memory.recall import fused_relevance, search_guarded, second_round
from proxy.policy import MemoryPolicy, Policy
from storage.api import MemoryStore
from storage.records import MemoryRecord, Scope, SearchHit, Vector

# Cases below this cosine to the query are not similar requests. Calibrated per embedder at the
# mean plus two standard deviations of unrelated requests' cosine: for all-MiniLM-L6-v2, over
# every pair of 486 benign user prompts, 0.093 + 2 × 0.106 ≈ 0.3, which 96% of unrelated pairs
# fall below and every related pair of the learning benchmark (lowest 0.53) is above
# (`python -m bench memory`, `case_gate`). A policy's `retrieval.delta_sim` overrides it.
DEFAULT_CASE_MIN_COSINE = 0.3

# Floors for the spread used by the z-scores. Without one, two candidates whose fused relevance
# differs by one rank would always be ±1σ apart, and utility could never outrank relevance.
_REL_STD_FLOOR = 0.25  # in units of the best fused relevance; one rank apart at the top is ~0.14
_Q_STD_FLOOR = 0.05
_DAY_S = 86_400.0
_TRACED_EXCLUSIONS = 20  # as many as the pipeline traces scores for


@dataclass(frozen=True)
class ScoreTerms:
    """A score's four weighted terms; they add up to the score."""

    relevance: float  # (1 − λ_kind)·ẑ(rel)
    utility: float  # λ_kind·ẑ_clip(Q)
    recency: float  # β·recency
    trust: float  # η·(trust − 0.5)

    @property
    def total(self) -> float:
        return self.relevance + self.utility + self.recency + self.trust


@dataclass(frozen=True)
class Exclusion:
    """A search hit left out before budgeting, and why: `reason` is one word (trust, relevance,
    utility, duplicate, lesson, inactive, expired), `detail` a sentence with the numbers."""

    record: MemoryRecord
    reason: str
    detail: str
    duplicate_of: str | None = None  # the id of the memory kept in its place

    def as_dict(self) -> dict[str, Any]:
        record = self.record
        entry = {
            "id": record.id,
            "kind": record.kind,
            "date": record.valid_from or record.created_at,
            "reason": self.reason,
            "detail": self.detail,
        }
        return entry if self.duplicate_of is None else {**entry, "duplicate_of": self.duplicate_of}


@dataclass(frozen=True)
class ScoredMemory:
    """A candidate after ranking, with each part of its score (kept in the request's trace)."""

    record: MemoryRecord
    terms: ScoreTerms
    rel: float
    z_rel: float
    z_q: float
    recency: float
    cosine: float | None
    vector: Vector | None = field(default=None, repr=False, compare=False)

    @property
    def score(self) -> float:
        return self.terms.total

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

    def parts(self) -> dict[str, Any]:
        """The score, its weighted `terms` (which add up to it) and the raw signals behind them,
        rounded for traces and the request log; with the memory's kind and date (as the model
        sees them) so a trace can say what each candidate was."""
        return score_parts([self])[0]


# The parts of a score as traces show them, with the digits each keeps; `terms` come first.
_TERMS = ("relevance", "utility", "recency", "trust")
_SIGNALS = {"rel": 5, "z_rel": 3, "z_q": 3, "q": 4, "recency": 3, "trust": 3, "cosine": 4}


def score_parts(items: Sequence[ScoredMemory]) -> list[dict[str, Any]]:
    """`ScoredMemory.parts()` of many candidates, rounded in one numpy pass instead of a dozen
    `round` calls each. The rounded terms still add up to the rounded score: the term that
    rounding moved most takes up the difference (a unit or two of the last digit)."""
    if not items:
        return []
    terms = np.array(
        [[i.terms.relevance, i.terms.utility, i.terms.recency, i.terms.trust] for i in items]
    )
    shown = np.round(terms, 3)
    totals = np.round(terms.sum(axis=1), 3)
    gaps = np.round(totals - shown.sum(axis=1), 3)
    for row in np.flatnonzero(gaps):
        moved = int(np.argmax(np.abs(terms[row] - shown[row])))
        shown[row, moved] = np.round(shown[row, moved] + gaps[row], 3)
    signals = np.array(
        [
            [
                i.rel,
                i.z_rel,
                i.z_q,
                i.record.q,
                i.recency,
                i.record.trust,
                np.nan if i.cosine is None else i.cosine,
            ]
            for i in items
        ]
    )
    for column, digits in enumerate(_SIGNALS.values()):
        signals[:, column] = np.round(signals[:, column], digits)
    parts = []
    for item, total, term_row, signal_row in zip(
        items, totals.tolist(), shown.tolist(), signals.tolist(), strict=True
    ):
        named = dict(zip(_SIGNALS, signal_row, strict=True))
        if item.cosine is None:
            named["cosine"] = None
        parts.append(
            {
                "score": total,
                "terms": dict(zip(_TERMS, term_row, strict=True)),
                "kind": item.record.kind,
                "date": item.record.valid_from or item.record.created_at,
                **named,
            }
        )
    return parts


def passes_gate(hit: SearchHit, policy: MemoryPolicy, now: float) -> bool:
    """Phase A's hard filters: only active, trusted, current records; cases also by similarity."""
    return gate_exclusion(hit, policy, now) is None


def gate_exclusion(hit: SearchHit, policy: MemoryPolicy, now: float) -> Exclusion | None:
    """Why Phase A's hard filters leave `hit` out, or None when it passes them."""
    record = hit.record
    settings = policy.retrieval
    if record.status != "active" or record.superseded_by is not None:
        state = "superseded" if record.superseded_by is not None else record.status
        return Exclusion(record, "inactive", f"the memory is {state}, not active")
    if record.kind == "lesson":
        # Lessons guard the injected set; they are not recalled as memories.
        return Exclusion(record, "lesson", "lessons guard the block; they are not recalled")
    if record.trust < settings.tau_trust:
        floor = settings.tau_trust
        detail = f"trust {record.trust:.2f} is below the floor retrieval.tau_trust {floor:g}"
        return Exclusion(record, "trust", detail)
    ended = [t for t in (record.valid_to, record.expires_at) if t is not None and t <= now]
    if ended:
        return Exclusion(record, "expired", "the memory's validity or time to live has ended")
    if record.kind == "case":
        min_cos = settings.delta_sim if settings.delta_sim is not None else DEFAULT_CASE_MIN_COSINE
        if hit.cosine is None or hit.cosine < min_cos:
            cosine = "no vector" if hit.cosine is None else f"cosine {hit.cosine:.2f}"
            detail = (
                f"a past case with {cosine} to the request, below the relevance gate {min_cos:g}"
            )
            return Exclusion(record, "relevance", detail)
        if record.q < settings.q_min:
            q_min = settings.q_min
            detail = f"a past case with utility q {record.q:.2f}, below retrieval.q_min {q_min:g}"
            return Exclusion(record, "utility", detail)
    return None


@dataclass
class Ranking:
    """Candidates best first, and the hits left out by the gate or as near-duplicates."""

    ranked: list[ScoredMemory]
    excluded: list[Exclusion] = field(default_factory=list)


def rank_hits(
    hits: Sequence[SearchHit],
    policy: MemoryPolicy,
    *,
    now: float | None = None,
    rng: random.Random | None = None,
) -> list[ScoredMemory]:
    """Gate, score, order and de-duplicate search hits; best first."""
    return rank_candidates(hits, policy, now=now, rng=rng).ranked


def rank_candidates(
    hits: Sequence[SearchHit],
    policy: MemoryPolicy,
    *,
    now: float | None = None,
    rng: random.Random | None = None,
    extra_rel: dict[str, float] | None = None,
) -> Ranking:
    """`rank_hits`, also saying which hits were left out and why. `extra_rel` adds to a hit's
    fused relevance (a second search round's ranks), by memory id."""
    now = time.time() if now is None else now
    settings, scoring = policy.retrieval, policy.scoring
    kept: list[SearchHit] = []
    excluded: list[Exclusion] = []
    for hit in hits:
        exclusion = gate_exclusion(hit, policy, now)
        if exclusion is None:
            kept.append(hit)
        else:
            excluded.append(exclusion)
    if not kept:
        return Ranking([], excluded)
    best_rel = (settings.bm25_weight + settings.vector_weight) / (settings.rrf_k + 1) or 1.0
    extra_rel = extra_rel or {}
    rels = [
        (fused_relevance(hit, settings) + extra_rel.get(hit.record.id, 0.0)) / best_rel
        for hit in kept
    ]
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
        terms = ScoreTerms(
            relevance=(1 - lam) * z_rel,
            utility=lam * z_q,
            recency=scoring.beta_recency * recency,
            trust=scoring.eta_trust * (record.trust - 0.5),
        )
        scored.append(ScoredMemory(record, terms, rel, z_rel, z_q, recency, hit.cosine, hit.vector))
    scored.sort(key=lambda item: item.score, reverse=True)
    if settings.epsilon > 0 and len(scored) > 1:
        _explore(scored, settings.epsilon, rng or random.Random())
    ranked, duplicates = collapse_near_duplicates(scored, settings.dedup_cos)
    return Ranking(ranked, excluded + duplicates)


def collapse_near_duplicates(
    scored: list[ScoredMemory], threshold: float
) -> tuple[list[ScoredMemory], list[Exclusion]]:
    """Keep the best of each group of near-identical memories (same text, or cosine ≥ threshold
    and the same particulars: numbers, dates and names); the others come back as exclusions
    naming the memory they repeat.

    Cosine alone cannot tell a paraphrase from a distinct fact that differs in one number or
    name ("… on day 0." and "… on day 10." sit above 0.95): those are different facts, and
    each is kept."""
    dims = next((len(item.vector) for item in scored if item.vector is not None), 0)
    has_vector = [item.vector is not None and len(item.vector) == dims for item in scored]
    units = np.zeros((len(scored), dims), dtype=np.float32)
    if dims and any(has_vector):
        rows = [i for i, has in enumerate(has_vector) if has]
        units[rows] = np.asarray([scored[i].vector for i in rows], dtype=np.float32)
        norms = np.linalg.norm(units, axis=1, keepdims=True)
        np.divide(units, norms, out=units, where=norms > 0)
    # Every pair at once (rows without a vector are 0); einsum, not `@`, whose BLAS threads
    # wait for a busy CPU (as in `storage.vector_cache`).
    similarity = np.einsum("ij,kj->ik", units, units)
    # Which rows have a close row ranked above them: only those need the test in the loop.
    close_above = np.triu(similarity >= threshold, k=1).any(axis=0).tolist()
    particulars: dict[int, frozenset[str]] = {}  # by row, computed only for close pairs

    def particulars_at(row: int) -> frozenset[str]:
        if row not in particulars:
            particulars[row] = particulars_of(scored[row].record.text)
        return particulars[row]

    kept: list[ScoredMemory] = []
    kept_rows: list[int] = []  # rows kept so far, for the cosine test
    kept_texts: dict[str, str] = {}  # normalized text → id of the memory kept with it
    duplicates: list[Exclusion] = []
    for i, item in enumerate(scored):
        text = " ".join(item.record.text.lower().split())
        if text in kept_texts:
            detail = "the same text as a memory that ranked higher"
            duplicates.append(Exclusion(item.record, "duplicate", detail, kept_texts[text]))
            continue
        close: list[int] = []
        if has_vector[i] and kept_rows and close_above[i]:
            near = similarity[i, kept_rows] >= threshold  # one vector test for all kept rows
            close = [kept_rows[j] for j in np.flatnonzero(near)]
        alike = [row for row in close if particulars_at(row) == particulars_at(i)]
        if alike:
            best = max(alike, key=lambda row: similarity[i, row])
            detail = (
                f"cosine {similarity[i, best]:.2f} to a memory that ranked higher "
                f"(retrieval.dedup_cos {threshold:g})"
            )
            same = scored[best].record.id
            duplicates.append(Exclusion(item.record, "duplicate", detail, same))
            continue
        kept_texts[text] = item.record.id
        kept.append(item)
        if has_vector[i]:
            kept_rows.append(i)
    return kept, duplicates


async def retrieve(
    store: MemoryStore,
    scope: Scope,
    query: str,
    policy: MemoryPolicy,
    *,
    guard_policy: Policy | None = None,
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
    hits, dropped = await search_guarded(
        store,
        scope,
        query,
        policy,
        k=k,
        guard_policy=guard_policy,
        include_shared=include_shared,
        now=now,
    )
    in_period = period_relevance(hits, query, policy.retrieval)
    ranking = rank_candidates(hits, policy, now=now, extra_rel=in_period)
    seeds = [(item.record, item.vector) for item in ranking.ranked]
    if policy.retrieval.second_round_seeds and seeds:
        seeds = seeds[: policy.retrieval.second_round_seeds]
        hits, extra, more = await second_round(
            store,
            scope,
            query,
            hits,
            seeds,
            policy,
            guard_policy=guard_policy,
            include_shared=include_shared,
            now=now,
        )
        dropped += more
        for memory_id, rel in period_relevance(hits, query, policy.retrieval).items():
            extra[memory_id] = extra.get(memory_id, 0.0) + rel
        ranking = rank_candidates(hits, policy, now=now, extra_rel=extra)
    if dropped:
        trace.get_current_span().set_attribute(
            "memento.guard.dropped", json.dumps([[record.id, why] for record, why in dropped])
        )
    excluded = [Exclusion(record, "lesson", reason) for record, reason in dropped]
    excluded.extend(ranking.excluded)
    if excluded:
        trace.get_current_span().set_attribute(
            "memento.memory.excluded",
            json.dumps([e.as_dict() for e in excluded[:_TRACED_EXCLUSIONS]]),
        )
    ranked = ranking.ranked
    return ranked if limit is None else ranked[:limit]


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
