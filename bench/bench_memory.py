"""Memory benchmarks: hot-path latency, retrieval quality on LoCoMo, and learning from feedback.

1. Hot path: what memory adds before the upstream call (query → embed → hybrid search → rank →
   budget → inject, i.e. `MemoryPipeline.before_call`), p50/p99 at 1k and 10k memories per user
   (MSC persona facts), every query new so the embedder's cache never answers. Once the
   pipeline has started, the process settles as the proxy's does (`bench/in_process.py`).
2. LoCoMo (`/work/shared/data/locomo/`, `bench/locomo.py`): each conversation is one user's
   memory, one record per turn with its session date; every question is asked through the same
   ranking the hot path uses (`POST /v1/memories/search` semantics). Turn-level recall@5 / @10
   and block tokens per category, next to plain BM25 over the same turns, for the default and
   for each retrieval variant, with the fitted and the cross-validated (fit on four
   conversations, report on the fifth, rotated) choice among them.
3. Learning: look-alike pairs of cases where the wording favours the misleading one; a simulated
   client rewards a request +1 when it received the helpful case and −1 otherwise. Reported: how
   many feedback events until the helpful case is ranked first, and whether it stays there.
4. Case gate: the cosine below which a past case is not shown, calibrated on unrelated and
   related requests for the local embedder (`DEFAULT_CASE_MIN_COSINE` in proxy/memory/retrieve.py).
5. Replay: the first session of each LoCoMo conversation sent turn by turn through a chat
   call's memory hooks to the `echo` model, learned with the deterministic extractor: memories
   and cases stored, pairs of them at cosine ≥ 0.92, the share of block tokens that were cases.

Run: `python -m bench memory` (BENCH_SCALE scales the latency part); only some parts with
`BENCH_MEMORY_PARTS=locomo` (comma-separated: locomo, learning, case_gate, replay, hot_path),
which keeps the other parts' figures in the results file. Results: bench/results/memory.json.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "memory.json"
SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
# Which parts run (comma-separated): locomo, learning, case_gate, replay, hot_path; all by
# default.
# A partial run keeps the other parts' figures already in the results file.
_ALL_PARTS = "locomo,learning,case_gate,replay,hot_path"
# The process setting the proxy reads: `local` (int8), `local-fp32`, or a litellm model.
EMBEDDER = os.environ.get("MEMENTO_EMBEDDER", "local")
PARTS = os.environ.get("BENCH_MEMORY_PARTS", _ALL_PARTS).split(",")

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.in_process import as_after_start_up  # noqa: E402
from bench.locomo import bench_locomo  # noqa: E402
from bench.shared_data import DATA, persona_facts  # noqa: E402
from proxy.doors.chat import CHAT  # noqa: E402
from proxy.memory.learn import Learner  # noqa: E402
from proxy.memory.pipeline import MemoryPipeline  # noqa: E402
from proxy.memory.retrieve import retrieve  # noqa: E402
from proxy.memory.seam import CallContext  # noqa: E402
from proxy.memory.warmup import shared_embedder  # noqa: E402
from proxy.policy import ModelRoute, Policy  # noqa: E402
from proxy.settings import Settings  # noqa: E402
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


async def bench_hot_path(sizes: tuple[int, ...] = (1_000, 10_000)) -> list[dict[str, Any]]:
    """The hot path on each backend of BENCH_HOT_PATH_BACKENDS (default `embedded`; add
    `postgresql` for the source of truth in a PostgreSQL server of this run, its durability
    settings on, and the index in the folder)."""
    rows = []
    for backend in os.environ.get("BENCH_HOT_PATH_BACKENDS", "embedded").split(","):
        if backend == "embedded":
            rows += [{**row, "backend": backend} for row in await _hot_path(sizes, lambda: None)]
            continue
        from storage.postgres.url import DATABASE_URL_SETTING
        from tests.postgres_server import PostgresServer, server_binaries

        binaries = server_binaries()
        if binaries is None:
            print("PostgreSQL's server binaries are missing: its hot path is skipped")
            continue
        server = PostgresServer(binaries).start(durable=True)

        def fresh_database(server: PostgresServer = server) -> None:
            os.environ[DATABASE_URL_SETTING] = server.create_database()

        try:
            rows += [{**row, "backend": backend} for row in await _hot_path(sizes, fresh_database)]
        finally:
            os.environ.pop(DATABASE_URL_SETTING, None)
            server.stop()
    return rows


async def _hot_path(
    sizes: tuple[int, ...], fresh_store: Callable[[], None]
) -> list[dict[str, Any]]:
    facts = persona_facts()
    embedder = await shared_embedder(EMBEDDER)
    rows = []
    policy = _policy(retrieval={"deadline_ms": 60_000})
    queries = [f"{fact.rstrip('.')}? what else do you know" for fact in facts[-2000:]]
    for size in sizes:
        fresh_store()
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
            as_after_start_up()
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
    embedder = await shared_embedder(EMBEDDER)
    policy = _policy(retrieval={"k2_cases": 1, "deadline_ms": 60_000}, default_mode="read")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = await open_store(folder, embedder)
        upstreams = Upstreams(Settings())
        pipeline = MemoryPipeline(_Policies(policy), upstreams, store=store, workers=0)
        await pipeline.start()
        learner = Learner(store.memories, store.requests, store.locks)
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


# -- 4. case gate ------------------------------------------------------------------------------


async def bench_case_gate() -> dict[str, Any]:
    """The cosine a past case needs to be shown, calibrated for the local embedder: unrelated
    requests are every pair of distinct benign user prompts (WildGuard), related ones each
    learning scenario's question against its two cases' requests. The gate is the unrelated
    pairs' mean plus two standard deviations."""
    import numpy as np

    embedder = await shared_embedder(EMBEDDER)
    path = DATA / "wildguard_benign" / "wildguard_benign_dev.jsonl"
    with path.open(encoding="utf-8") as handle:
        prompts = [json.loads(line)["text"][:300] for line in handle if line.strip()]

    async def units(texts: list[str]) -> Any:
        vectors = np.asarray(await embedder.embed(texts), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    prompt_units = await units(prompts)
    unrelated = (prompt_units @ prompt_units.T)[np.triu_indices(len(prompts), 1)]
    related: list[float] = []
    for question, *cases in SCENARIOS:
        requests = [case.split(" → ")[0].removeprefix("Request: ") for case in cases]
        query, *keys = await units([question, *requests])
        related.extend(float(query @ key) for key in keys)
    mean, std = float(unrelated.mean()), float(unrelated.std())
    return {
        "unrelated_pairs": int(unrelated.size),
        "unrelated_mean": round(mean, 3),
        "unrelated_std": round(std, 3),
        "unrelated_p95": round(float(np.percentile(unrelated, 95)), 3),
        "unrelated_share_above_gate": round(float((unrelated >= mean + 2 * std).mean()), 3),
        "related_pairs": len(related),
        "related_min": round(min(related), 3),
        "gate": round(mean + 2 * std, 3),
    }


# -- 5. replay --------------------------------------------------------------------------------


async def bench_replay(sessions: int = 1) -> dict[str, Any]:
    """The first `sessions` sessions of each LoCoMo dev conversation sent turn by turn through
    a chat call's memory hooks, answered by the `echo` model, learned with the deterministic
    extractor: memories and cases stored per conversation, pairs of them at cosine ≥ 0.92, and
    the share of the injected blocks' tokens that went to cases."""
    import numpy as np

    from proxy.tokens import count_tokens
    from proxy.upstreams.echo import describe_request

    conversations = json.loads((DATA / "locomo" / "locomo10_dev.json").read_text())
    embedder = await shared_embedder(EMBEDDER)
    # Learned in the background, as a proxy does; the next call does not wait for it.
    policy = _policy(retrieval={"deadline_ms": 60_000, "wait_for_writes_ms": 0})
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store, upstreams = await open_store(folder, embedder), Upstreams(Settings())
        pipeline = MemoryPipeline(_Policies(policy), upstreams, store=store, workers=1)
        await pipeline.start()
        for conversation in conversations:
            user, block_tokens, case_tokens, calls = conversation["sample_id"], 0, 0, 0
            for number in range(1, sessions + 1):
                for turn in conversation["conversation"].get(f"session_{number}", []):
                    body = {"model": "m", "messages": [{"role": "user", "content": turn["text"]}]}
                    ctx = _context(f"{user}-{calls}", policy, ModelRoute(model="echo"), body, user)
                    calls += 1
                    prepared = await pipeline.before_call(ctx)
                    answer = {"role": "assistant", "content": describe_request(prepared.body)}
                    await pipeline.after_call(ctx, prepared, {"choices": [{"message": answer}]})
                    system = prepared.body["messages"][0]
                    block = system["content"] if system["role"] == "system" else ""
                    block_tokens += count_tokens(block, "o200k_base")
                    cases = [line for line in block.splitlines() if "(case, " in line]
                    case_tokens += sum(count_tokens(line, "o200k_base") for line in cases)
            rows.append([user, calls, block_tokens, case_tokens])
        await pipeline.aclose(drain_timeout_s=300)
        table = []
        for user, calls, block_tokens, case_tokens in rows:
            stored = await store.memories.list(Scope("bench", user), limit=1000)
            vectors = await store.memories.vectors("bench", [m.id for m in stored])
            pairs = 0
            if stored:
                units = np.asarray([vectors[m.id] for m in stored], dtype=np.float32)
                pairs = int(((units @ units.T >= 0.92).sum() - len(stored)) // 2)
            table.append(
                {
                    "conversation": user,
                    "calls": calls,
                    "memories": len(stored),
                    "cases": sum(1 for m in stored if m.kind == "case"),
                    "near_duplicate_pairs": pairs,
                    "case_share_of_block_tokens": round(case_tokens / max(1, block_tokens), 3),
                }
            )
        await store.close()
        await upstreams.aclose()
    return {"sessions_per_conversation": sessions, "rows": table}


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
            "embedder": EMBEDDER,
        },
    }
    if "locomo" in PARTS:
        print("\n# LoCoMo retrieval (turn-level recall; BM25 = plain Okapi over the same turns)")
        result["locomo"] = locomo = await bench_locomo(DATA)
        columns = ["category", "questions", "recall@5", "recall@10", "bm25_recall@5"]
        columns += ["bm25_recall@10", "top10_tokens"]
        print("default retrieval:")
        _print_table(locomo["table"], columns)
        print(f"fitted (best on all five): {locomo['fitted']['variant']}")
        _print_table(locomo["fitted"]["table"], columns)
        chosen = locomo["cross_validated"]["chosen"]
        print(f"cross-validated (best on the other four, scored on each): {chosen}")
        _print_table(locomo["cross_validated"]["table"], columns)
        fitted = locomo["fitted"]["variant"]
        print(f"multi-hop evidence turns under {fitted}: rank, and a word shared with the question")
        _print_table(
            locomo["variants"][fitted]["multi_hop_evidence"],
            ["rank", "shared_word", "turns", "share"],
        )
        print(
            f"block tokens (mean): {locomo['block_tokens_mean']}; "
            f"search p50 {locomo['search_p50_ms']} ms"
        )

    if "learning" in PARTS:
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

    if "case_gate" in PARTS:
        print("\n# Case gate: cosine of unrelated and related requests (local embedder)")
        result["case_gate"] = await bench_case_gate()
        print(result["case_gate"])

    if "replay" in PARTS:
        print("\n# Replay: LoCoMo turns through a chat call's memory hooks, echo model, rules")
        result["replay"] = await bench_replay()
        _print_table(result["replay"]["rows"], list(result["replay"]["rows"][0]))

    if "hot_path" in PARTS:
        print(
            "\n# Hot path added by memory (before_call: query, embed, search, rank, budget, inject)"
        )
        result["hot_path"] = await bench_hot_path()
        _print_table(
            result["hot_path"],
            [
                "backend",
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
    kept = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({**kept, **result}, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
