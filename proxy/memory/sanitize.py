"""Sanitize: give every candidate memory a trust score and a verdict before anything is written.

The text signals and their fusion are pure functions (proxy/memory/trust.py, which states the
formula); this module adds what needs the store: consensus with the scope's memories, resemblance
to the tenant's lessons, the session's write bursts and rates, and the optional LLM judge for the
uncertain middle.

`assess` never writes the candidates. Unless `dry_run`, rejections that content signals caused are
distilled into lessons (proxy/memory/lessons.py), so later variants are caught faster.

Each verdict is logged at DEBUG on `memento.sanitize`: kind, source, verdict, trust and the
names of the signals that moved it. Memory text (and the reasons' details, which quote what
matched) is logged only when the tenant's policy sets `logging.log_content`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from proxy.memory import lessons
from proxy.memory.candidates import Candidate, Reason, TrustVerdict
from proxy.memory.signals import CONTENT_SIGNALS, Hit, consensus, resemblance, session
from proxy.memory.signals import judge as llm_judge
from proxy.memory.trust import fuse, part_hits, shared_scope_gate, verdict_for
from proxy.metrics import SANITIZER_VERDICTS
from proxy.policy import SanitizerPolicy
from storage.api import MemoryStore
from storage.records import MemoryKind, Scope, SearchHit

log = logging.getLogger("memento.sanitize")

NEIGHBOURS = 5  # active neighbours for the consensus check (docs/design.md#consensus)
EMBED_CHARS = 1000  # ~200 tokens: enough to place a memory; attack essays cost less
DAY_S = 86_400.0
_MEMORY_KINDS: list[MemoryKind] = ["fact", "preference", "case"]  # what consensus compares with


@dataclass
class _Pending:
    """One candidate's state while its signals are gathered."""

    candidate: Candidate
    prior: float
    prior_hits: list[Hit]
    hits: list[Hit]
    text: str
    adjustments: list[Reason] = field(default_factory=list)
    vector: list[float] | None = None


class Sanitizer:
    """Decides accept / quarantine / reject for candidates of one scope.

    Without a store only the text signals and the source prior run (dry runs in tests and the
    offline benchmark); with one, consensus, lessons and session signals join in.
    """

    def __init__(
        self,
        store: MemoryStore | None = None,
        call_model: llm_judge.CallModel | None = None,
        *,
        log_content: bool = False,
    ) -> None:
        self.store = store
        # How the judge reaches the tenant's models; without one the judge is not asked.
        self.call_model = call_model
        self.log_content = log_content  # the tenant's logging.log_content

    async def assess(
        self,
        scope: Scope,
        candidates: Sequence[Candidate],
        policy: SanitizerPolicy,
        *,
        dry_run: bool = False,
        each_alone: bool = False,
        vectors: Sequence[list[float]] | None = None,
    ) -> list[TrustVerdict]:
        """One verdict per candidate, in order. Never writes the candidates; unless `dry_run`,
        records a lesson for each rejection that content signals caused.

        The candidates are those of one write: each counts towards the rate limits and burst
        check of the ones after it. With `each_alone` (an import, whose lines keep their own
        times), each is judged as the next write to the store as it is, as in a dry run.
        `vectors`, one per candidate, are their `embed` when the caller has them already (an
        import embeds its next batch while this one is assessed); otherwise the candidates are
        embedded here, and only when there is something to compare them with."""
        pending = []
        for candidate in candidates:
            prior, prior_hits, hits, others, text = part_hits(candidate, scope, policy)
            pending.append(_Pending(candidate, prior, prior_hits, hits, text, others))

        if self.store is not None and pending:
            alone = dry_run or each_alone
            await self._memory_signals(
                self.store, scope, pending, policy, alone=alone, given=vectors
            )

        verdicts = []
        for item in pending:
            trust, reasons, hard = fuse(
                item.prior_hits, item.prior, item.hits, item.adjustments, policy
            )
            verdict = verdict_for(trust, policy, hard=hard)
            if verdict == "quarantine" and policy.judge_model and self.call_model is not None:
                opinion = await llm_judge.judge(
                    policy.judge_model, item.candidate.text, self.call_model
                )
                reasons.append(opinion)
                trust = min(max(item.prior, trust), max(0.0, trust + opinion.delta))
                verdict = verdict_for(trust, policy, hard=hard)
            if verdict == "accept" and scope.user_id is None:
                gate = shared_scope_gate(item.candidate, trust, policy)
                if gate is not None:
                    reasons.append(gate)
                    verdict = "quarantine"
            verdicts.append(TrustVerdict(verdict, round(trust, 4), reasons, item.text))

        if log.isEnabledFor(logging.DEBUG):
            for item, judged in zip(pending, verdicts, strict=True):
                log_verdict(scope, item.candidate, judged, log_content=self.log_content)
        if not dry_run:
            for item, judged in zip(pending, verdicts, strict=True):
                counted = {
                    "tenant": scope.tenant_id,
                    "verdict": judged.verdict,
                    "source": item.candidate.source_role,
                }
                SANITIZER_VERDICTS.add(1, counted)
        if not dry_run and self.store is not None:
            await self._distil_lessons(self.store, scope, pending, verdicts, policy)
        return verdicts

    async def embed(self, candidates: Sequence[Candidate]) -> list[list[float]]:
        """The vectors the memory signals compare the candidates by: those of their
        `embedded_texts`, by the store's embedder."""
        if self.store is None:
            raise ValueError("a sanitizer without a store embeds nothing")
        return await self.store.embedder.embed(self.embedded_texts(candidates))

    @staticmethod
    def embedded_texts(candidates: Sequence[Candidate]) -> list[str]:
        """What is embedded of each candidate: its text, cut at `EMBED_CHARS`."""
        return [c.text[:EMBED_CHARS] for c in candidates]

    async def _memory_signals(
        self,
        store: MemoryStore,
        scope: Scope,
        pending: list[_Pending],
        policy: SanitizerPolicy,
        *,
        alone: bool,
        given: Sequence[list[float]] | None,
    ) -> None:
        """Consensus, lessons and session signals: they need the scope's memories.

        Candidates are embedded only when there is something to compare them with, and each is
        compared with its nearest memories of the scope as the store finds them (`nearest`, k
        small, scored off the event loop), so a check costs the same in a scope of a hundred
        memories or of a hundred thousand. A batch that will be written counts its own earlier
        candidates towards the rate limits and the burst check; `alone` (a dry run, an import)
        judges each candidate as the next write to the store as it is.
        """
        known = await lessons.load_lessons(store, scope.tenant_id)
        has_memories = await _has_memories(store, scope)
        session_vectors, session_writes = await self._session_history(store, scope)
        writes_today = await self._writes_today(store, scope, policy)
        in_session = scope.session_id is not None and scope.user_id is not None
        if not (known or has_memories or in_session):
            self._text_only_session_signals(
                scope, pending, policy, session_writes, writes_today, alone=alone
            )
            return

        # A hard rule already rejects: no memory signal can change that, so skip the embedding.
        open_positions = [n for n, item in enumerate(pending) if not any(h.hard for h in item.hits)]
        open_items = [pending[n] for n in open_positions]
        if given is None:
            vectors = await self.embed([item.candidate for item in open_items])
        else:
            vectors = [given[n] for n in open_positions]
        nearest: list[list[SearchHit]] = [[] for _ in vectors]
        if has_memories and vectors:
            nearest = await _nearest_of_family(store, scope, open_items, vectors)
        if not in_session:
            # Outside a session, a vector only matters if the candidate can resemble a lesson or
            # a memory near it, which needs at least one distinctive word in common.
            seen: dict[str, set[str]] = {}  # a neighbour's words, by id: many share neighbours
            resembling = [
                index
                for index, item in enumerate(open_items)
                if _could_resemble(
                    resemblance.content_words(item.candidate.text),
                    known.words | _words_of(nearest[index], seen),
                )
            ]
            open_items = [open_items[index] for index in resembling]
            vectors = [vectors[index] for index in resembling]
            nearest = [nearest[index] for index in resembling]
        for item, vector in zip(open_items, vectors, strict=True):
            item.vector = vector
        batch_vectors = [*session_vectors, *vectors]

        for index, item in enumerate(open_items):
            candidate, vector = item.candidate, vectors[index]
            item.adjustments.extend(lessons.match(known, candidate.text, vector, policy))
            neighbours = [
                consensus.Neighbour(hit.record, hit.cosine or 0.0, hit.vector)
                for hit in nearest[index]
            ]
            neighbours = consensus.independent(candidate, neighbours)[:NEIGHBOURS]
            if candidate.kind == "case":
                item.adjustments.extend(consensus.case_consensus(vector, neighbours, policy))
            elif candidate.kind in ("fact", "preference"):
                item.adjustments.extend(consensus.fact_consensus(candidate, neighbours, policy))
            if in_session:
                position = len(session_vectors) + index
                history = [*session_vectors, vector] if alone else batch_vectors[: position + 1]
                if hit := session.burst(
                    history,
                    len(history) - 1,
                    policy.session_burst.cos,
                    policy.session_burst.count,
                ):
                    item.hits.append(hit)
        self._text_only_session_signals(
            scope, pending, policy, session_writes, writes_today, alone=alone
        )

    @staticmethod
    def _text_only_session_signals(
        scope: Scope,
        pending: list[_Pending],
        policy: SanitizerPolicy,
        session_writes: int,
        writes_today: int,
        *,
        alone: bool,
    ) -> None:
        for position, item in enumerate(pending):
            index = 0 if alone else position  # earlier candidates of the batch, once written
            candidate = item.candidate
            user_text = " ".join(e.span for e in candidate.evidence if e.role == "user")
            if candidate.source_role != "user" and (
                bridge := session.bridging_claim(candidate.text, user_text)
            ):
                item.hits.append(bridge)
            in_session = scope.session_id is not None and scope.user_id is not None
            if in_session and (
                hit := session.over_rate(session_writes + index, policy.rate.per_session)
            ):
                item.hits.append(hit)
            if hit := session.over_daily_rate(writes_today + index, policy.rate.per_day):
                item.hits.append(hit)

    async def _writes_today(self, store: MemoryStore, scope: Scope, policy: SanitizerPolicy) -> int:
        """How many memories this user wrote in the last 24 hours (up to the daily limit)."""
        if scope.user_id is None or not policy.rate.per_day:
            return 0
        return await store.count_written(
            Scope(scope.tenant_id, scope.user_id),
            since=time.time() - DAY_S,
            limit=policy.rate.per_day,
        )

    async def _session_history(
        self, store: MemoryStore, scope: Scope
    ) -> tuple[list[list[float]], int]:
        """Vectors of this session's earlier writes (any status), and how many there were."""
        if scope.session_id is None or scope.user_id is None:
            return [], 0
        records = await store.list(scope, statuses=["active", "quarantined", "rejected"], limit=200)
        mine = [r for r in records if r.session_id == scope.session_id and r.kind != "lesson"]
        if not mine:
            return [], 0
        vectors = await store.vectors(scope.tenant_id, [r.id for r in mine])
        return [vectors[r.id] for r in mine if r.id in vectors], len(mine)

    async def _distil_lessons(
        self,
        store: MemoryStore,
        scope: Scope,
        pending: Sequence[_Pending],
        verdicts: Sequence[TrustVerdict],
        policy: SanitizerPolicy,
    ) -> None:
        for item, verdict in zip(pending, verdicts, strict=True):
            if verdict.verdict != "reject" or not _content_driven(verdict.reasons):
                continue
            try:
                await lessons.record_lesson(
                    store,
                    scope,
                    item.candidate.text,
                    verdict.reasons,
                    origin="sanitizer",
                    sweep_cos=policy.lesson_cos_read,
                )
            except Exception:  # a lesson is a bonus; losing one must not fail the write path
                log.exception("could not record a lesson for a rejected candidate")


def log_verdict(
    scope: Scope, candidate: Candidate, verdict: TrustVerdict, *, log_content: bool
) -> None:
    """One DEBUG line per verdict: ids, kind, verdict, trust and signal names; the memory text
    and the reasons' details (they quote what matched) only with `log_content`."""
    moved = sorted({r.signal for r in verdict.reasons if r.delta < 0 or r.hard})
    line = "candidate %s from %s for tenant %s user %s: %s at trust %.2f (signals: %s)"
    args: list[object] = [
        candidate.kind,
        candidate.source_role,
        scope.tenant_id,
        scope.user_id,
        verdict.verdict,
        verdict.trust,
        ", ".join(moved) or "none",
    ]
    if log_content:
        line += "; text %r; reasons %s"
        args += [verdict.text, [f"{r.signal}: {r.detail}" for r in verdict.reasons]]
    log.debug(line, *args)


def _content_driven(reasons: Sequence[Reason]) -> bool:
    """A rejection caused by what the text says (not only by its source or a redaction)."""
    return any(r.signal in CONTENT_SIGNALS and (r.hard or r.delta <= -0.1) for r in reasons)


async def _has_memories(store: MemoryStore, scope: Scope) -> bool:
    """Whether the scope (the user's and the tenant-shared) holds any active memory to compare
    a candidate with: one indexed row at most per scope, whatever its size."""
    scopes = (
        [scope.shared()]
        if scope.user_id is None
        else [Scope(scope.tenant_id, scope.user_id), scope.shared()]
    )
    for each in scopes:
        if await store.list(each, kinds=_MEMORY_KINDS, statuses=["active"], limit=1):
            return True
    return False


async def _nearest_of_family(
    store: MemoryStore, scope: Scope, items: Sequence[_Pending], vectors: Sequence[list[float]]
) -> list[list[SearchHit]]:
    """Each candidate's nearest active memories of its family (`comparable_kinds`), in the
    user's and the tenant-shared scope: one search per family. Twice `NEIGHBOURS`, so that
    dropping the candidate's own versions and copies (`consensus.independent`) still leaves
    `NEIGHBOURS`."""
    families: dict[tuple[MemoryKind, ...], list[int]] = {}
    for index, item in enumerate(items):
        families.setdefault(tuple(item.candidate.comparable_kinds), []).append(index)
    nearest: list[list[SearchHit]] = [[] for _ in items]
    for kinds, indexes in families.items():
        found = await store.nearest(
            Scope(scope.tenant_id, scope.user_id),
            [vectors[index] for index in indexes],
            k=NEIGHBOURS * 2,
            kinds=kinds,
            include_shared=True,
        )
        for index, hits in zip(indexes, found, strict=True):
            nearest[index] = hits
    return nearest


def _words_of(hits: Sequence[SearchHit], seen: dict[str, set[str]]) -> set[str]:
    """The content words of the hits' texts; `seen` keeps each record's, for the next call."""
    words: set[str] = set()
    for hit in hits:
        record = hit.record
        if (known := seen.get(record.id)) is None:
            known = seen[record.id] = resemblance.content_words(record.text)
        words |= known
    return words


def _could_resemble(words: set[str], vocabulary: set[str]) -> bool:
    """Whether a candidate shares enough distinctive words with the known texts to come near
    one in embedding space: two words, or one when the candidate has only one or two."""
    shared = len(words & vocabulary)
    return shared >= 2 or (shared == 1 and len(words) <= 2)
