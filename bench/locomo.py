"""LoCoMo retrieval: turn-level recall per category, fitted and cross-validated.

Each dev conversation (`/work/shared/data/locomo/`) is one user's memory, one record per turn
with its session date, imported as the memory API imports (`source_role` import). Every question
is asked through the ranking the hot path uses (`POST /v1/memories/search` semantics), once per
retrieval variant in `VARIANTS` (policy overrides), and scored against its evidence turns:
recall@5 and @10 per category, next to plain BM25 over the same turns, with the tokens the
injected block of the top 10 takes.

Two figures per variant choice, so a parameter is never judged on the data that chose it:

- fitted: the variant best on all five conversations (mean of recall@5 + recall@10);
- cross-validated: for each conversation, the variant best on the other four, scored on it;
  the five held-out parts together make the figure.

Run alone with `BENCH_MEMORY_PARTS=locomo python -m bench memory`.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.memory.budget import fit_to_budget
from proxy.memory.inject import render_block
from proxy.memory.retrieve import retrieve
from proxy.memory.warmup import shared_embedder
from proxy.policy import Policy
from proxy.tokens import count_tokens
from storage import open_store
from storage.records import NewMemory, Scope

# The process setting the proxy reads: `local` (int8), `local-fp32`, or a litellm model.
EMBEDDER = os.environ.get("MEMENTO_EMBEDDER", "local")
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}


@dataclass(frozen=True)
class Variant:
    """One way of importing and searching the turns.

    `context`: how a turn is imported with the turn before it (the one it answers), indexed but
    not shown: `none`, `keywords` (BM25 text only) or `key_text` (BM25 text and vector).
    `retrieval`: `memory.retrieval` policy overrides.
    """

    context: str = "none"
    retrieval: tuple[tuple[str, Any], ...] = ()


# The variants cross-validation chooses among; the first is the product's default.
VARIANTS: dict[str, Variant] = {
    "default": Variant(),
    "context_keywords": Variant(context="keywords"),
    **{
        f"context_keywords_second_round_{seeds}": Variant(
            context="keywords", retrieval=(("second_round_seeds", seeds),)
        )
        for seeds in (2, 3, 5)
    },
}

_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    re.findall(
        r"\w+",
        "a an the and or but if of to in on at for with by from as is are was were be been being "
        "do does did have has had i you he she it we they me him her us them my your his its our "
        "their what when where who whom which why how that this these those there here not no",
    )
)


def _tokens(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOP]


class BM25:
    """Plain Okapi BM25 (k1 = 1.2, b = 0.75): the baseline the issue quotes."""

    def __init__(self, docs: list[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.docs = [Counter(_tokens(doc)) for doc in docs]
        self.lengths = [sum(doc.values()) for doc in self.docs]
        self.avg = sum(self.lengths) / max(1, len(self.lengths))
        df: Counter[str] = Counter()
        for doc in self.docs:
            df.update(doc.keys())
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        self.k1, self.b = k1, b

    def top(self, query: str, k: int) -> list[int]:
        terms = _tokens(query)
        scores = []
        for index, doc in enumerate(self.docs):
            norm = self.k1 * (1 - self.b + self.b * self.lengths[index] / self.avg)
            score = sum(
                self.idf.get(t, 0) * doc[t] * (self.k1 + 1) / (doc[t] + norm)
                for t in terms
                if t in doc
            )
            scores.append((score, index))
        scores.sort(reverse=True)
        return [index for _, index in scores[:k]]


def _session_time(text: str) -> float:
    parsed = datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y")
    return parsed.replace(tzinfo=UTC).timestamp()


def _evidence_ids(raw: list[str]) -> set[str]:
    ids = set()
    for item in raw:
        for part in str(item).split(";"):
            match = re.fullmatch(r"D(\d+):(\d+)", part.strip())
            if match:
                ids.add(f"D{int(match.group(1))}:{int(match.group(2))}")
    return ids


def _turns(conversation: dict[str, Any]) -> list[tuple[str, str, float, str]]:
    """(dia_id, text, session time, the session's turn before it) for every turn. The turn
    before is what was said, without who said it: its speaker is not this turn's."""
    turns = []
    number = 1
    while f"session_{number}" in conversation:
        when = _session_time(conversation[f"session_{number}_date_time"])
        before = ""
        for turn in conversation[f"session_{number}"]:
            said = turn["text"]
            if turn.get("blip_caption"):
                said += f" [shares a photo of {turn['blip_caption']}]"
            turns.append((turn["dia_id"], f"{turn['speaker']}: {said}", when, before))
            before = said
        number += 1
    return turns


def _memory(dia_id: str, text: str, when: float, before: str, context: str) -> NewMemory:
    """A turn as the memory API imports it, with the turn it answers as `context` says."""
    return NewMemory(
        kind="fact",
        text=text,
        key_text=f"{before}\n{text}" if context == "key_text" and before else "",
        keywords=[before] if context == "keywords" and before else [],
        created_at=when,
        valid_from=when,
        metadata={"dia_id": dia_id},
        source_role="import",
        trust=0.9,
    )


@dataclass(frozen=True)
class Answered:
    """One question's outcome under one variant."""

    conversation: str
    category: int
    recall5: float
    recall10: float
    tokens10: int
    search_ms: float


def _policy(retrieval: dict[str, Any]) -> Policy:
    return Policy.model_validate({"tenant": "bench", "memory": {"retrieval": retrieval}})


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 3) if values else 0.0


def _table(answers: list[Answered], baseline: list[Answered]) -> list[dict[str, Any]]:
    rows = []
    groups = [(f"{c} {name}", {c}) for c, name in CATEGORIES.items()] + [("all", set(CATEGORIES))]
    for label, categories in groups:
        mine = [a for a in answers if a.category in categories]
        base = [a for a in baseline if a.category in categories]
        rows.append(
            {
                "category": label,
                "questions": len(mine),
                "recall@5": _mean([a.recall5 for a in mine]),
                "recall@10": _mean([a.recall10 for a in mine]),
                "bm25_recall@5": _mean([a.recall5 for a in base]),
                "bm25_recall@10": _mean([a.recall10 for a in base]),
                "top10_tokens": round(statistics.mean(a.tokens10 for a in mine), 1) if mine else 0,
            }
        )
    return rows


def _best(variants: dict[str, list[Answered]], conversations: set[str]) -> str:
    """The variant with the highest mean recall@5 + recall@10 over these conversations."""

    def merit(name: str) -> float:
        chosen = [a for a in variants[name] if a.conversation in conversations]
        return statistics.mean(a.recall5 + a.recall10 for a in chosen)

    return max(variants, key=merit)


async def _ask(
    store: Any, scope: Scope, name: str, conversation: dict[str, Any], policy: Policy
) -> list[Answered]:
    answers = []
    for qa in conversation["qa"]:
        gold = _evidence_ids(qa.get("evidence") or [])
        if not gold:
            continue
        started = time.perf_counter()
        ranked = await retrieve(store.memories, scope, str(qa["question"]), policy.memory, limit=10)
        elapsed = (time.perf_counter() - started) * 1000
        found = [str(item.record.metadata.get("dia_id")) for item in ranked]
        tokens = count_tokens(render_block(ranked[:10]), "o200k_base") if ranked else 0
        answers.append(_scored(name, qa, gold, found, tokens, elapsed))
    return answers


def _scored(
    name: str, qa: dict[str, Any], gold: set[str], found: list[str], tokens: int, ms: float
) -> Answered:
    """A question's recall@5 and @10 of its evidence turns in `found`."""
    recall5 = len(gold & set(found[:5])) / len(gold)
    recall10 = len(gold & set(found[:10])) / len(gold)
    return Answered(name, int(qa["category"]), recall5, recall10, tokens, ms)


def _bm25_answers(name: str, conversation: dict[str, Any]) -> list[Answered]:
    turns = _turns(conversation["conversation"])
    bm25 = BM25([text for _, text, _, _ in turns])
    ids = [dia_id for dia_id, *_ in turns]
    answers = []
    for qa in conversation["qa"]:
        gold = _evidence_ids(qa.get("evidence") or [])
        if gold:
            order = [ids[i] for i in bm25.top(str(qa["question"]), 10)]
            answers.append(_scored(name, qa, gold, order, 0, 0.0))
    return answers


async def bench_locomo(data: Path, variants: dict[str, Variant] | None = None) -> dict[str, Any]:
    """Recall per category for every variant, the fitted and the cross-validated choice."""
    variants = VARIANTS if variants is None else variants
    conversations = json.loads((data / "locomo" / "locomo10_dev.json").read_text())
    embedder = await shared_embedder(EMBEDDER)
    answered: dict[str, list[Answered]] = {name: [] for name in variants}
    evidence: dict[str, Counter[tuple[str, str]]] = {name: Counter() for name in variants}
    baseline = [a for c in conversations for a in _bm25_answers(c["sample_id"], c)]
    budget_tokens: list[int] = []
    for context in dict.fromkeys(variant.context for variant in variants.values()):
        with tempfile.TemporaryDirectory() as folder:
            store = await open_store(folder, embedder)
            for conversation in conversations:
                name = conversation["sample_id"]
                scope = Scope("bench", name)
                memories = [
                    _memory(*turn, context) for turn in _turns(conversation["conversation"])
                ]
                for start in range(0, len(memories), 256):
                    await store.memories.add(scope, memories[start : start + 256])
                await store.maintenance.maintain()  # as background maintenance would
                for variant_name, variant in variants.items():
                    if variant.context == context:
                        policy = _policy(dict(variant.retrieval))
                        answers = await _ask(store, scope, name, conversation, policy)
                        answered[variant_name].extend(answers)
                        found = await _multi_hop_evidence(store, scope, conversation, policy)
                        evidence[variant_name].update(found)
                if context == "none":
                    budget_tokens.extend(await _budget_tokens(store, scope, conversation))
            await store.close()
    names = sorted({a.conversation for a in baseline})
    fitted = _best(answered, set(names))
    held_out: list[Answered] = []
    chosen = {}
    for name in names:
        pick = _best(answered, set(names) - {name})
        chosen[name] = pick
        held_out.extend(a for a in answered[pick] if a.conversation == name)
    default = answered[next(iter(variants))]
    return {
        "table": _table(default, baseline),
        "variants": {
            name: {
                "context": variant.context,
                "retrieval": dict(variant.retrieval),
                "all": _table(answered[name], baseline)[-1],
                "table": _table(answered[name], baseline),
                "multi_hop_evidence": _evidence_rows(evidence[name]),
                "search_p50_ms": round(statistics.median(a.search_ms for a in answered[name]), 2),
            }
            for name, variant in variants.items()
        },
        "fitted": {"variant": fitted, "table": _table(answered[fitted], baseline)},
        "cross_validated": {"chosen": chosen, "table": _table(held_out, baseline)},
        "block_tokens_mean": {
            "top10": round(statistics.mean(a.tokens10 for a in default), 1),
            "budget": round(statistics.mean(budget_tokens), 1) if budget_tokens else 0,
        },
        "search_p50_ms": round(statistics.median(a.search_ms for a in default), 2),
    }


async def _budget_tokens(store: Any, scope: Scope, conversation: dict[str, Any]) -> list[int]:
    """What the budget takes of the default ranking, for the first questions."""
    policy = _policy({})
    used = []
    for qa in conversation["qa"][:40]:
        ranked = await retrieve(store.memories, scope, str(qa["question"]), policy.memory)
        plan = fit_to_budget(
            ranked,
            policy.memory.budget.max_tokens,
            policy.memory.budget,
            k2_cases=4,
            encoding_name="o200k_base",
        )
        used.append(plan.used_tokens)
    return used


_BANDS = ((10, "top 10"), (20, "11-20"), (50, "21-50"))


async def _multi_hop_evidence(
    store: Any, scope: Scope, conversation: dict[str, Any], policy: Policy
) -> Counter[tuple[str, str]]:
    """Where each multi-hop evidence turn ranks (top 10, 11-20, 21-50, beyond 50), and whether
    it shares a content word with the question (speakers' names aside, crude stems): in its own
    text, only in the turn it answers, or nowhere, which no word match can bridge."""
    turns = {
        dia_id: (text, before) for dia_id, text, _, before in _turns(conversation["conversation"])
    }
    names = {str(conversation["conversation"][k]).lower() for k in ("speaker_a", "speaker_b")}

    def words(text: str) -> set[str]:
        return {re.sub(r"(ing|ed|es|s)$", "", w) for w in _tokens(text) if len(w) > 2} - names

    counts: Counter[tuple[str, str]] = Counter()
    for qa in conversation["qa"]:
        gold = _evidence_ids(qa.get("evidence") or [])
        if qa["category"] != 1 or not gold:
            continue
        question = str(qa["question"])
        ranked = await retrieve(store.memories, scope, question, policy.memory, limit=50)
        order = [str(item.record.metadata.get("dia_id")) for item in ranked]
        for dia_id in gold:
            rank = order.index(dia_id) + 1 if dia_id in order else 10**6
            band = next((label for top, label in _BANDS if rank <= top), "beyond 50")
            text, before = turns.get(dia_id, ("", ""))
            if words(question) & words(text):
                shared = "in the turn"
            elif words(question) & words(before):
                shared = "only in the turn it answers"
            else:
                shared = "none"
            counts[(band, shared)] += 1
    return counts


def _evidence_rows(counts: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
    total = sum(counts.values()) or 1
    return [
        {"rank": band, "shared_word": shared, "turns": n, "share": round(n / total, 3)}
        for (band, shared), n in sorted(counts.items())
    ]
