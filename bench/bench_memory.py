"""Memory benchmarks: hot-path latency, retrieval quality on LoCoMo, and learning from feedback.

1. Hot path: what memory adds before the upstream call (query → embed → hybrid search → rank →
   budget → inject, i.e. `MemoryPipeline.before_call`), p50/p99 at 1k and 10k memories per user
   (MSC persona facts), every query new so the embedder's cache never answers.
2. LoCoMo (`/work/shared/data/locomo/`): each conversation is one user's memory, one record per
   turn with its session date; every question is asked through the same ranking the hot path
   uses (`POST /v1/memories/search` semantics). Turn-level recall@5 / @10 per category, next to
   plain BM25 over the same turns, and the tokens the injected block takes.
3. Learning: look-alike pairs of cases where the wording favours the misleading one; a simulated
   client rewards a request +1 when it received the helpful case and −1 otherwise. Reported: how
   many feedback events until the helpful case is ranked first, and whether it stays there.

Run: `python -m bench memory` (BENCH_SCALE scales the latency part). Results:
bench/results/memory.json.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import re
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "memory.json"
DATA = Path(os.environ.get("MEMENTO_SHARED_DATA", "/work/shared/data"))
SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from proxy.doors.chat import CHAT  # noqa: E402
from proxy.memory.budget import fit_to_budget  # noqa: E402
from proxy.memory.inject import render_block  # noqa: E402
from proxy.memory.learn import Learner  # noqa: E402
from proxy.memory.pipeline import MemoryPipeline  # noqa: E402
from proxy.memory.retrieve import retrieve  # noqa: E402
from proxy.memory.seam import CallContext  # noqa: E402
from proxy.memory.warmup import shared_embedder  # noqa: E402
from proxy.policy import ModelRoute, Policy  # noqa: E402
from proxy.settings import Settings  # noqa: E402
from proxy.tokens import count_tokens  # noqa: E402
from proxy.upstreams.registry import Upstreams  # noqa: E402
from storage import open_store  # noqa: E402
from storage.records import NewMemory, Scope  # noqa: E402


class _Policies:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def get(self, tenant: str) -> Policy | None:
        return self.policy if tenant == self.policy.tenant else None


def _policy(**memory: Any) -> Policy:
    return Policy.model_validate({"tenant": "bench", "memory": memory})


def _context(
    request_id: str, policy: Policy, route: ModelRoute, body: dict[str, Any], user: str
) -> CallContext:
    """A chat call for user `user` as the chat route hands it to the memory hooks."""
    return CallContext(
        request_id=request_id,
        policy=policy,
        model_alias="m",
        route=route,
        body=body,
        user_id=user,
        session_id=None,
        mode_header=None,
        stream=False,
        door=CHAT,
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


# -- 1. hot path ------------------------------------------------------------------------------


def _persona_facts() -> list[str]:
    path = DATA / "msc_personas" / "msc_persona_facts_dev.jsonl"
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


async def bench_hot_path(sizes: tuple[int, ...] = (1_000, 10_000)) -> list[dict[str, Any]]:
    facts = _persona_facts()
    embedder = await shared_embedder("local")
    rows = []
    policy = _policy(retrieval={"deadline_ms": 60_000})
    queries = [f"{fact.rstrip('.')}? what else do you know" for fact in facts[-2000:]]
    for size in sizes:
        with tempfile.TemporaryDirectory() as folder:
            store = await open_store(folder, embedder)
            scope = Scope("bench", "user-1")
            started = time.perf_counter()
            for start in range(0, size, 500):
                batch = [facts[i % len(facts)] for i in range(start, min(size, start + 500))]
                await store.memories.add(
                    scope, [NewMemory(kind="fact", text=text) for text in batch]
                )
            load_s = time.perf_counter() - started
            # The steady state of a running proxy: background maintenance (every 30 s) has
            # folded the new rows into the full-text and vector indexes.
            await store.maintenance.maintain()
            upstreams = Upstreams(Settings())
            pipeline = MemoryPipeline(_Policies(policy), upstreams, store=store, workers=0)
            await pipeline.start()  # as the proxy does before serving: the paths, warmed up
            route = ModelRoute(model="openai/gpt-4o-mini")
            count = max(20, int(200 * SCALE))
            timings, embed_ms, injected = [], [], []
            for number in range(count + 10):
                query = queries[(number + size) % len(queries)] + f" #{number}-{size}"
                body = {"model": "m", "messages": [{"role": "user", "content": query}]}
                ctx = _context(f"req-{size}-{number}", policy, route, body, "user-1")
                t0 = time.perf_counter()
                await embedder.embed([query + " probe"])
                t1 = time.perf_counter()
                prepared = await pipeline.before_call(ctx)
                t2 = time.perf_counter()
                if number >= 10:  # the first calls warm caches
                    embed_ms.append((t1 - t0) * 1000)
                    timings.append((t2 - t1) * 1000)
                    injected.append(prepared.injected_count)
            await pipeline.aclose()
            await upstreams.aclose()
            await store.close()
            rows.append(
                {
                    "memories_per_user": size,
                    "requests": len(timings),
                    "p50_ms": round(statistics.median(timings), 2),
                    "p99_ms": round(_percentile(timings, 0.99), 2),
                    # The same model on a similar text, alone: before_call embeds its query
                    # first, then searches, so this is part of p50_ms.
                    "embed_p50_ms": round(statistics.median(embed_ms), 2),
                    "mean_injected": round(statistics.mean(injected), 2),
                    "load_s": round(load_s, 1),
                }
            )
    return rows


# -- 2. LoCoMo --------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = set(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "by",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "do",
        "does",
        "did",
        "have",
        "has",
        "had",
        "i",
        "you",
        "he",
        "she",
        "it",
        "we",
        "they",
        "me",
        "him",
        "her",
        "us",
        "them",
        "my",
        "your",
        "his",
        "its",
        "our",
        "their",
        "what",
        "when",
        "where",
        "who",
        "whom",
        "which",
        "why",
        "how",
        "that",
        "this",
        "these",
        "those",
        "there",
        "here",
        "not",
        "no",
    ]
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


def _turns(conversation: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(dia_id, text, session time) for every turn."""
    turns = []
    number = 1
    while f"session_{number}" in conversation:
        when = _session_time(conversation[f"session_{number}_date_time"])
        for turn in conversation[f"session_{number}"]:
            text = f"{turn['speaker']}: {turn['text']}"
            if turn.get("blip_caption"):
                text += f" [shares a photo of {turn['blip_caption']}]"
            turns.append((turn["dia_id"], text, when))
        number += 1
    return turns


async def bench_locomo() -> dict[str, Any]:
    conversations = json.loads((DATA / "locomo" / "locomo10_dev.json").read_text())
    embedder = await shared_embedder("local")
    policy = _policy()
    hits: dict[str, dict[int, list[float]]] = {
        "memento": defaultdict(list),
        "bm25": defaultdict(list),
    }
    hits10: dict[str, dict[int, list[float]]] = {
        "memento": defaultdict(list),
        "bm25": defaultdict(list),
    }
    block_tokens: dict[str, list[int]] = {"top5": [], "top10": [], "budget": []}
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        store = await open_store(folder, embedder)
        for conversation in conversations:
            scope = Scope("bench", conversation["sample_id"])
            turns = _turns(conversation["conversation"])
            memories = [
                NewMemory(
                    kind="fact",
                    text=text,
                    created_at=when,
                    valid_from=when,
                    metadata={"dia_id": dia_id},
                    source_role="import",
                    trust=0.9,
                )
                for dia_id, text, when in turns
            ]
            for start in range(0, len(memories), 256):
                await store.memories.add(scope, memories[start : start + 256])
            await (
                store.maintenance.maintain()
            )  # as background maintenance would, before the questions
            bm25 = BM25([text for _, text, _ in turns])
            ids = [dia_id for dia_id, _, _ in turns]
            for qa in conversation["qa"]:
                gold = _evidence_ids(qa.get("evidence") or [])
                if not gold:
                    continue
                category = int(qa["category"])
                started = time.perf_counter()
                ranked = await retrieve(
                    store.memories, scope, str(qa["question"]), policy.memory, limit=10
                )
                latencies.append((time.perf_counter() - started) * 1000)
                found = [str(item.record.metadata.get("dia_id")) for item in ranked]
                baseline = [ids[i] for i in bm25.top(str(qa["question"]), 10)]
                for name, order in (("memento", found), ("bm25", baseline)):
                    hits[name][category].append(len(gold & set(order[:5])) / len(gold))
                    hits10[name][category].append(len(gold & set(order[:10])) / len(gold))
                for label, top in (("top5", ranked[:5]), ("top10", ranked[:10])):
                    if top:
                        block_tokens[label].append(count_tokens(render_block(top), "o200k_base"))
                plan = fit_to_budget(
                    ranked,
                    policy.memory.budget.max_tokens,
                    policy.memory.budget,
                    k2_cases=4,
                    encoding_name="o200k_base",
                )
                block_tokens["budget"].append(plan.used_tokens)
        await store.close()

    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 3) if values else 0.0

    table = []
    for category in sorted(CATEGORIES):
        table.append(
            {
                "category": f"{category} {CATEGORIES[category]}",
                "questions": len(hits["memento"][category]),
                "recall@5": mean(hits["memento"][category]),
                "recall@10": mean(hits10["memento"][category]),
                "bm25_recall@5": mean(hits["bm25"][category]),
                "bm25_recall@10": mean(hits10["bm25"][category]),
            }
        )
    every = {name: [v for c in sorted(CATEGORIES) for v in hits[name][c]] for name in hits}
    every10 = {name: [v for c in sorted(CATEGORIES) for v in hits10[name][c]] for name in hits10}
    table.append(
        {
            "category": "all",
            "questions": len(every["memento"]),
            "recall@5": mean(every["memento"]),
            "recall@10": mean(every10["memento"]),
            "bm25_recall@5": mean(every["bm25"]),
            "bm25_recall@10": mean(every10["bm25"]),
        }
    )
    return {
        "table": table,
        "block_tokens_mean": {
            k: round(statistics.mean(v), 1) for k, v in block_tokens.items() if v
        },
        "search_p50_ms": round(statistics.median(latencies), 2),
    }


# -- 3. learning ------------------------------------------------------------------------------

SCENARIOS = [
    (
        "How do I book a table for dinner on Friday?",
        "Request: reserve a dinner table for Friday → Answer: phoned the restaurant, it worked.",
        "Request: book a table for dinner on Friday → Answer: used the booking site, it was down.",
    ),
    (
        "How can I reset my router password?",
        "Request: change the router's admin password → Answer: used the label's default login.",
        "Request: reset my router password → Answer: factory reset, which wiped the settings.",
    ),
    (
        "What is the best way to learn Spanish verbs?",
        "Request: memorise Spanish verb forms → Answer: spaced-repetition cards, ten a day.",
        "Request: best way to learn Spanish verbs → Answer: read the grammar book cover to cover.",
    ),
    (
        "How do I fix a slow Python test suite?",
        "Request: speed up slow pytest runs → Answer: profiled, made the DB fixture session-wide.",
        "Request: fix a slow Python test suite → Answer: added more CPU cores to CI.",
    ),
    (
        "How should I store fresh basil?",
        "Request: keep basil fresh → Answer: stems in a glass of water on the counter.",
        "Request: how should I store fresh basil → Answer: in the fridge, where it went black.",
    ),
    (
        "How do I get my toddler to sleep earlier?",
        "Request: earlier bedtime for a small child → Answer: dinner and bath 30 minutes earlier.",
        "Request: get my toddler to sleep earlier → Answer: skipped the afternoon nap.",
    ),
]


async def bench_learning(max_events: int = 10, distractors: int = 1) -> dict[str, Any]:
    embedder = await shared_embedder("local")
    policy = _policy(retrieval={"k2_cases": 1, "deadline_ms": 60_000}, default_mode="read")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = await open_store(folder, embedder)
        upstreams = Upstreams(Settings())
        pipeline = MemoryPipeline(_Policies(policy), upstreams, store=store, workers=0)
        await pipeline.start()
        learner = Learner(store.memories, store.requests)
        route = ModelRoute(model="openai/gpt-4o-mini")
        for number, (question, helpful_text, misleading_text) in enumerate(SCENARIOS):
            user = f"learner-{number}"
            scope = Scope("bench", user)
            misleading = [misleading_text] + [
                f"{misleading_text} Tried again on day {day}, same result."
                for day in range(2, distractors + 1)
            ]
            helpful, *_ = await store.memories.add(
                scope,
                [
                    NewMemory(kind="case", text=t, key_text=t, source_role="import", trust=0.9)
                    for t in (helpful_text, *misleading)
                ],
            )
            first_before = None
            events_to_first = None
            shown: list[str] = []
            for event in range(max_events + 1):
                body = {"model": "m", "messages": [{"role": "user", "content": question}]}
                ctx = _context(f"learn-{number}-{event}", policy, route, body, user)
                prepared = await pipeline.before_call(ctx)
                await pipeline.flush_request_logs()
                ranked = await retrieve(store.memories, scope, question, policy.memory, limit=2)
                top = ranked[0].record.id if ranked else None
                if first_before is None:
                    first_before = "helpful" if top == helpful.id else "misleading"
                if top == helpful.id and events_to_first is None:
                    events_to_first = event
                injected = [i.id for i in prepared.state.injected]
                shown.append("H" if helpful.id in injected else "M")
                if event == max_events:
                    break
                # The simulated client: the helpful case makes the answer work.
                reward = 1.0 if helpful.id in injected else -1.0
                await learner.apply("bench", ctx.request_id, reward, policy.memory.feedback)
            stays = events_to_first is not None and all(s == "H" for s in shown[events_to_first:])
            rows.append(
                {
                    "scenario": question,
                    "distractors": distractors,
                    "first_before_feedback": first_before,
                    "feedback_events_until_helpful_first": events_to_first,
                    "stays_first": stays,
                    "injected_sequence": "".join(shown),
                }
            )
        await pipeline.aclose()
        await upstreams.aclose()
        await store.close()
    return {"rows": rows}


# -- report -----------------------------------------------------------------------------------


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True)))


async def run() -> dict[str, Any]:
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "embed_threads": int(os.environ.get("MEMENTO_EMBED_THREADS", "1")),
        },
    }
    print("\n# LoCoMo retrieval (turn-level recall; BM25 = plain Okapi over the same turns)")
    result["locomo"] = await bench_locomo()
    _print_table(
        result["locomo"]["table"],
        ["category", "questions", "recall@5", "recall@10", "bm25_recall@5", "bm25_recall@10"],
    )
    print(
        f"block tokens (mean): {result['locomo']['block_tokens_mean']}; "
        f"search p50 {result['locomo']['search_p50_ms']} ms"
    )

    print(
        "\n# Learning from feedback (k2 = 1 case per request; "
        "reward +1 iff the helpful case was injected)"
    )
    result["learning"] = {
        "rows": [
            *(await bench_learning(distractors=1))["rows"],
            *(await bench_learning(distractors=3))["rows"],
        ]
    }
    _print_table(
        result["learning"]["rows"],
        [
            "scenario",
            "distractors",
            "first_before_feedback",
            "feedback_events_until_helpful_first",
            "stays_first",
            "injected_sequence",
        ],
    )

    print("\n# Hot path added by memory (before_call: query, embed, search, rank, budget, inject)")
    result["hot_path"] = await bench_hot_path()
    _print_table(
        result["hot_path"],
        [
            "memories_per_user",
            "requests",
            "p50_ms",
            "p99_ms",
            "embed_p50_ms",
            "mean_injected",
            "load_s",
        ],
    )
    return result


def main() -> None:
    result = asyncio.run(run())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
