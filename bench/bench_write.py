"""Write-path benchmarks: what one learned exchange costs as the user's scope grows, the import
rate into a populated scope, and exchanges learned per second through the durable queue.

1. Per-write cost: a user's scope of N memories (1k, 10k, 100k; MSC persona facts, vectors of
   the real local embedder, repeated texts numbered so that none is an exact duplicate), then
   one exchange at a time through the write path's job handler (`learn_from_exchange`: extract
   → sanitize → consolidate → write), each a persona fact the scope does not hold. Reported:
   p50 and mean per exchange, and the event loop's longest stall meanwhile (a 5 ms ticker's
   worst lateness): the write path must not hold the loop the hot path serves on. As the proxy
   does once started, what is loaded by then leaves the garbage collector's generations.
2. Import: JSONL of fresh persona facts sent to `POST /v1/memories/import` of a real proxy
   process whose data folder already holds a 10k-memory scope for the same user.
3. Queue: exchanges queued durably (as `after_call` queues them: a fact, and for half of them a
   request with an answer that takes an approach, so a case too) for the 10k-memory user, then
   the write workers (2, the default) started; exchanges learned per second until the queue is
   empty, and the queue's depth each second. One user's exchanges are learned one at a time
   (each consolidates against what the one before wrote), so with one user the second worker
   idles; `BENCH_WRITE_USERS=N` spreads the exchanges over N users in turn, the 10k memories
   split evenly between their scopes, to measure the workers side by side.

Run: `python -m bench write`; `BENCH_SCALE` (default 1.0) scales the scope sizes, the number of
exchanges and of imported lines; `BENCH_WRITE_PARTS=import` (comma-separated: per_write, import,
queue) runs only some parts; `BENCH_WRITE_LINES` sets the number of imported lines;
`BENCH_WRITE_USERS` (default 1) the users the queue part's exchanges belong to. Against
another checkout (for before/after figures): copy this file to `<dir>/bench/bench_write.py` and
run it with `PYTHONPATH=<checkout>`; results go to `<dir>/bench/results/write.json`. Results:
bench/results/write.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.in_process import as_after_start_up
from bench.shared_data import persona_facts
from proxy.memory.exchange_job import EXCHANGE_JOB, ExchangeJob
from proxy.memory.extract import build_exchange, extract_with_rules
from proxy.memory.pipeline import MemoryPipeline
from proxy.memory.warmup import shared_embedder
from proxy.policy import Policy
from proxy.settings import Settings
from proxy.upstreams.registry import Upstreams
from storage import EmbeddedStore, open_store
from storage.api import Embedder
from storage.records import NewMemory, QueuedJob, Scope
from tests.harness import ServerProcess, write_tenant

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "write.json"
SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
SIZES = sorted({max(500, int(size * SCALE)) for size in (1_000, 10_000, 100_000)})
PARTS = os.environ.get("BENCH_WRITE_PARTS", "per_write,import,queue").split(",")
POPULATED = max(500, int(10_000 * SCALE))  # the scope the import and the queue write into
QUEUE_USERS = max(1, int(os.environ.get("BENCH_WRITE_USERS", "1")))  # the queue part's users
TENANT, USER, KEY = "bench", "u0", "bench-write-key"
POOL = 4_000  # distinct facts embedded for real; larger scopes repeat them, numbered
HELD_OUT = 2_000  # the file's last facts: never in a scope, what the exchanges state
ANSWER = "Start with five minutes a day, then add a minute each week; note what worked."


class _Policies:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def get(self, tenant: str) -> Policy | None:
        return self.policy if tenant == self.policy.tenant else None


def _learnable(statements: list[str]) -> list[str]:
    """The statements the rules extractor learns a fact from (so every exchange writes)."""
    settings = Policy.model_validate({"tenant": TENANT}).memory.extraction
    kept = []
    for text in statements:
        messages = [{"role": "user", "content": text}]
        response = {"choices": [{"message": {"role": "assistant", "content": "Noted."}}]}
        if extract_with_rules(build_exchange(messages, response, []), settings):
            kept.append(text)
    return kept


async def _pool_vectors(embedder: Embedder, texts: list[str]) -> np.ndarray:
    vectors = []
    for start in range(0, len(texts), 256):
        vectors += await embedder.embed(texts[start : start + 256])
    return np.asarray(vectors, dtype=np.float32)


async def _populate(
    store: EmbeddedStore, size: int, pool: list[str], vectors: np.ndarray, user: str = USER
) -> float:
    """`size` memories in the user's scope: the pool's facts and vectors, repeated ones
    numbered (and their vectors moved a little) so that no two are the same memory."""
    rng = np.random.default_rng(size)
    then = time.time() - 30 * 86_400  # learned over past weeks: today's write limits are free
    started = time.perf_counter()
    for start in range(0, size, 2_000):
        numbers = range(start, min(size, start + 2_000))
        texts = [
            pool[i % len(pool)] if i < len(pool) else f"{pool[i % len(pool)]} ({i})"
            for i in numbers
        ]
        chunk = vectors[[i % len(pool) for i in numbers]].copy()
        repeated = np.asarray([i >= len(pool) for i in numbers])
        chunk[repeated] += rng.normal(scale=0.02, size=chunk[repeated].shape).astype(np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        await store.memories.add(
            Scope(TENANT, user),
            [
                NewMemory("fact", text, source_role="user", trust=0.8, created_at=then)
                for text in texts
            ],
            vectors=chunk.tolist(),
        )
    await store.maintenance.maintain()  # as a running proxy's maintenance would by now
    return time.perf_counter() - started


def _job(number: int, statement: str, *, with_case: bool, user: str = USER) -> ExchangeJob:
    content = statement
    if with_case:
        content += " How should I plan a weekly routine around that?"
    return ExchangeJob.answered(
        request_id=f"req-{number}-{uuid.uuid4().hex[:8]}",
        user_id=user,
        session_id=None,
        model="m",
        messages=[{"role": "user", "content": content}],
        answer={"role": "assistant", "content": ANSWER if with_case else "Noted."},
        injected=[],
        trace_id=None,
        span_id=None,
    )


class LoopLag:
    """The worst lateness of a 5 ms ticker: how long the event loop was held at once."""

    def __init__(self) -> None:
        self.worst_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            expected = time.perf_counter() + 0.005
            await asyncio.sleep(0.005)
            self.worst_ms = max(self.worst_ms, (time.perf_counter() - expected) * 1000)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.ensure_future(self._tick())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def bench_per_write(
    embedder: Embedder, pool: list[str], vectors: np.ndarray, held_out: list[str]
) -> list[dict[str, Any]]:
    rows = []
    count = max(20, int(60 * SCALE))
    for size in SIZES:
        with tempfile.TemporaryDirectory() as folder:
            store = await open_store(folder, embedder)
            load_s = await _populate(store, size, pool, vectors)
            upstreams = Upstreams(Settings())
            policy = Policy.model_validate({"tenant": TENANT})
            pipeline = MemoryPipeline(_Policies(policy), upstreams, store=store, workers=0)
            await pipeline.start()
            as_after_start_up()
            timings = []
            with LoopLag() as lag:
                for number in range(count + 5):
                    job = _job(number, held_out[(number + size) % len(held_out)], with_case=False)
                    queued = QueuedJob(
                        number, TENANT, EXCHANGE_JOB, job.to_json(), "running", 1, 0.0, 0.0
                    )
                    started = time.perf_counter()
                    await pipeline.writes.learn_from_exchange(queued)
                    if number >= 5:  # the first ones warm caches (the scope's vectors)
                        timings.append((time.perf_counter() - started) * 1000)
            await pipeline.aclose()
            await upstreams.aclose()
            await store.close()
            rows.append(
                {
                    "memories_in_scope": size,
                    "exchanges": len(timings),
                    "p50_ms": round(statistics.median(timings), 1),
                    "mean_ms": round(statistics.mean(timings), 1),
                    "loop_max_stall_ms": round(lag.worst_ms, 1),
                    "populate_s": round(load_s, 1),
                }
            )
            print(rows[-1], flush=True)
    return rows


async def bench_import(
    embedder: Embedder, pool: list[str], vectors: np.ndarray, held_out: list[str]
) -> dict[str, Any]:
    lines = int(os.environ.get("BENCH_WRITE_LINES", max(200, int(2_000 * SCALE))))
    facts = [
        held_out[i % len(held_out)] + (f" ({i})" if i >= len(held_out) else "")
        for i in range(lines)
    ]
    body = "\n".join(json.dumps({"kind": "fact", "text": t, "user": USER}) for t in facts)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        store = await open_store(root / "data", embedder)
        await _populate(store, POPULATED, pool, vectors)
        await store.close()
        write_tenant(root / "policies", TENANT, KEY, {"echo": {"model": "echo"}}, memory={})
        with ServerProcess(root / "policies", root / "data", MEMENTO_LOG_LEVEL="error") as server:
            headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/jsonl"}
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=3_600) as http:
                started = time.perf_counter()
                response = http.post("/v1/memories/import", content=body.encode())
                seconds = time.perf_counter() - started
    outcome = response.json()
    return {
        "memories_in_scope": POPULATED,
        "lines": lines,
        "imported": outcome.get("imported"),
        "status": outcome.get("status", response.status_code),
        "seconds": round(seconds, 2),
        "memories_per_second": round(lines / seconds, 1),
    }


async def bench_queue(
    embedder: Embedder, pool: list[str], vectors: np.ndarray, held_out: list[str]
) -> dict[str, Any]:
    exchanges = max(100, int(600 * SCALE))
    users = [f"u{n}" for n in range(QUEUE_USERS)]  # u0 is USER
    with tempfile.TemporaryDirectory() as folder:
        store = await open_store(folder, embedder)
        for user in users:
            await _populate(store, POPULATED // len(users), pool, vectors, user)
        for number in range(exchanges):
            statement = held_out[number % len(held_out)]
            user = users[number % len(users)]
            job = _job(number, statement, with_case=number % 2 == 1, user=user)
            await store.queue.enqueue(TENANT, EXCHANGE_JOB, job.to_json())
        upstreams = Upstreams(Settings())
        policy = Policy.model_validate({"tenant": TENANT})
        pipeline = MemoryPipeline(_Policies(policy), upstreams, store=store, workers=2)
        depths = []
        started = time.perf_counter()
        await pipeline.start()  # the workers start here
        as_after_start_up()
        with LoopLag() as lag:
            while (depth := await store.queue.pending()) > 0:
                depths.append(depth)
                await asyncio.sleep(1.0)
            seconds = time.perf_counter() - started
        written = [
            memory
            for user in users
            for memory in await store.memories.list(
                Scope(TENANT, user), limit=POPULATED + 3 * exchanges
            )
        ]
        await pipeline.aclose()
        await upstreams.aclose()
        await store.close()
    return {
        "memories_in_scope": POPULATED // len(users),
        "users": len(users),
        "exchanges": exchanges,
        "workers": 2,
        "seconds": round(seconds, 1),
        "exchanges_per_second": round(exchanges / seconds, 2),
        "memories_after": len(written),
        "loop_max_stall_ms": round(lag.worst_ms, 1),
        "depth_each_second": depths,
    }


def _print_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    print(f"\n{title}")
    print("  ".join(f"{c:>18}" for c in columns))
    for row in rows:
        print("  ".join(f"{row.get(c)!s:>18}" for c in columns))


async def run() -> dict[str, Any]:
    facts = persona_facts()
    pool, held_out = facts[:POOL], _learnable(facts[-HELD_OUT:])
    embedder = await shared_embedder("local")
    started = time.perf_counter()
    vectors = await _pool_vectors(embedder, pool)
    # The floor under any import rate: every imported line is embedded once, at this cost.
    embed_ms = (time.perf_counter() - started) * 1000 / len(pool)
    per_write, imported, queue = [], {}, {}
    if "per_write" in PARTS:
        per_write = await bench_per_write(embedder, pool, vectors, held_out)
    if "import" in PARTS:
        imported = await bench_import(embedder, pool, vectors, held_out)
        print(imported, flush=True)
    if "queue" in PARTS:
        queue = await bench_queue(embedder, pool, vectors, held_out)
    return {
        "held_out_statements": len(held_out),
        "embed_ms_per_text_in_batches_of_256": round(embed_ms, 2),
        "per_write": per_write,
        "import": imported,
        "queue": queue,
    }


def main() -> None:
    results = asyncio.run(run())
    _print_table(
        "per exchange learned (extract → sanitize → consolidate → write), one at a time",
        results["per_write"],
        ["memories_in_scope", "exchanges", "p50_ms", "mean_ms", "loop_max_stall_ms"],
    )
    _print_table(
        "import (POST /v1/memories/import) into a populated scope",
        [results["import"]],
        ["memories_in_scope", "lines", "imported", "seconds", "memories_per_second"],
    )
    print(
        f"embedding: {results['embed_ms_per_text_in_batches_of_256']} ms per text (batches of 256)"
    )
    queue = results["queue"]
    _print_table(
        "queue: exchanges learned by the write workers",
        [queue],
        [
            "users",
            "memories_in_scope",
            "exchanges",
            "seconds",
            "exchanges_per_second",
            "loop_max_stall_ms",
        ],
    )
    print(f"queue depth each second: {queue.get('depth_each_second')}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "bench_scale": SCALE,
        **results,
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
