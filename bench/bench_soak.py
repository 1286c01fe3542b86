"""Soak: 32 concurrent clients writing memories for minutes; RSS and the write queue over time.

The real server (`memento-proxy serve`) runs in a subprocess with memory on and the built-in
`echo` model, in a temporary data folder. 32 clients on loopback send chat calls whose user turn
states first-person facts, so every answered exchange queues a write job that stores memories.
Every few seconds: the server's RSS and the queue depth (the jobs table, read-only). After the
load stops the queue is left to drain (bounded), then the answered exchanges are compared with
the exchange jobs processed: every 200 must have been queued and processed, none lost. RSS
growth is reported per processed exchange, for the first and the second half of them.

`BENCH_SOAK_S` sets the load's length (default 180 s), `BENCH_SOAK_DRAIN_S` the longest wait for
the queue (default 3600 s; the wait also ends when no job finishes for two minutes). Results: a
table on stdout and bench/results/soak.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.harness import ServerProcess, write_tenant

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "soak.json"
DURATION_S = float(os.environ.get("BENCH_SOAK_S", "180"))
DRAIN_S = float(os.environ.get("BENCH_SOAK_DRAIN_S", "3600"))
STALL_S = 120.0  # while draining, this long without a finished job ends the wait
CONCURRENCY = 32
SAMPLE_S = 5.0
USERS = 50
KEY = "bench-soak-key"
WORDS = [
    "amber",
    "basil",
    "cedar",
    "delta",
    "ember",
    "falcon",
    "garnet",
    "harbor",
    "indigo",
    "juniper",
    "kestrel",
    "lantern",
    "meadow",
    "nickel",
    "orchid",
    "pepper",
    "quartz",
    "raven",
    "saffron",
    "tundra",
    "umber",
    "velvet",
    "willow",
    "xenon",
    "yarrow",
    "zephyr",
]


def user_turn(number: int) -> str:
    """First-person facts, new with every call, so each exchange writes memories."""
    pick = random.Random(number).choice
    return (
        f"My favourite {pick(WORDS)} is {pick(WORDS)} {pick(WORDS)} number {number}. "
        f"I live in {pick(WORDS)} town {number}."
    )


def queue_counts(db_path: Path) -> dict[str, int]:
    """Exchange jobs by state, read from the server's SQLite file without writing to it."""
    if not db_path.exists():
        return {}
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
        rows = db.execute(
            "SELECT state, count(*) FROM jobs WHERE kind = 'exchange' GROUP BY state"
        ).fetchall()
    return {str(state): int(count) for state, count in rows}


def memory_count(db_path: Path) -> int:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
        (count,) = db.execute("SELECT count(*) FROM memories").fetchone()
    return int(count)


def growth_per_exchange(samples: list[dict[str, float]]) -> dict[str, float | None]:
    """RSS growth per processed exchange, over the first and the second half of the exchanges
    processed: a process that keeps something per write grows in both halves alike; one whose
    caches and allocator have reached their working size is flat in the second."""
    total = samples[-1]["processed"]
    half = next((row for row in samples if row["processed"] >= total / 2), None)

    def slope(start: dict[str, float], end: dict[str, float]) -> float | None:
        done = end["processed"] - start["processed"]
        return round((end["rss_mb"] - start["rss_mb"]) * 1024 / done, 1) if done else None

    if half is None or not total:
        return {"first_half": None, "second_half": None}
    return {"first_half": slope(samples[0], half), "second_half": slope(half, samples[-1])}


async def soak(base: str, process: psutil.Process, db_path: Path) -> dict[str, Any]:
    answered = errors = sent = 0
    error_kinds: dict[str, int] = {}
    samples: list[dict[str, float]] = []
    began = time.monotonic()
    deadline = began + DURATION_S

    def sample() -> None:
        counts = queue_counts(db_path)
        samples.append(
            {
                "t_s": round(time.monotonic() - began, 1),
                "rss_mb": round(process.memory_info().rss / 2**20, 1),
                "queued": counts.get("queued", 0) + counts.get("running", 0),
                "processed": counts.get("done", 0),
                "answered": answered,
            }
        )

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal answered, errors, sent
        while time.monotonic() < deadline:
            number = sent
            sent += 1
            body = {
                "model": "echo",
                "user": f"user-{number % USERS}",
                "messages": [{"role": "user", "content": user_turn(number)}],
            }
            try:
                response = await http.post("/v1/chat/completions", json=body)
                kind = None if response.status_code == 200 else str(response.status_code)
            except httpx.HTTPError as exc:
                kind = type(exc).__name__
            if kind is None:
                answered += 1
            else:
                errors += 1
                error_kinds[kind] = error_kinds.get(kind, 0) + 1

    async def sampler() -> None:
        while time.monotonic() < deadline:
            await asyncio.to_thread(sample)
            await asyncio.sleep(SAMPLE_S)

    headers = {"authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as http:
        await asyncio.gather(sampler(), *(client(http) for _ in range(CONCURRENCY)))
    load_s = time.monotonic() - began
    sample()
    drain_began = progressed = time.monotonic()
    left = None
    while time.monotonic() - drain_began < DRAIN_S:
        counts = queue_counts(db_path)
        pending = counts.get("queued", 0) + counts.get("running", 0)
        if pending == 0:
            break
        if pending != left:
            left, progressed = pending, time.monotonic()
        elif time.monotonic() - progressed > STALL_S:
            break  # no job finished for a while: the queue is stuck, not slow
        await asyncio.sleep(SAMPLE_S)
        sample()
    drained_s = time.monotonic() - drain_began
    sample()
    counts = queue_counts(db_path)
    return {
        "duration_s": round(load_s, 1),
        "concurrency": CONCURRENCY,
        "answered": answered,
        "errors": errors,
        "error_kinds": error_kinds,
        "drain_s": round(drained_s, 1),
        "exchange_jobs": counts,
        "exchange_jobs_total": sum(counts.values()),
        "memories": memory_count(db_path),
        "every_answer_processed": counts.get("done", 0) == answered
        and sum(counts.values()) == answered,
        "rss_start_mb": samples[0]["rss_mb"],
        "rss_end_mb": samples[-1]["rss_mb"],
        "rss_kb_per_exchange": growth_per_exchange(samples),
        "samples": samples,
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as name:
        tmp = Path(name)
        write_tenant(tmp / "policies", "bench", KEY, {"echo": {"model": "echo"}}, memory={})
        with ServerProcess(tmp / "policies", tmp / "data") as server:
            result = asyncio.run(
                soak(server.base_url, psutil.Process(server.pid), tmp / "data" / "memento.db")
            )
    print(f"{'t s':>7} {'RSS MB':>8} {'queue':>6} {'processed':>9} {'answered':>9}")
    for row in result["samples"]:
        print(
            f"{row['t_s']:>7} {row['rss_mb']:>8} {row['queued']:>6} {row['processed']:>9}"
            f" {row['answered']:>9}"
        )
    print()
    for key in ("duration_s", "answered", "errors", "drain_s", "exchange_jobs", "memories"):
        print(f"{key:22} {result[key]}")
    print(f"{'every_answer_processed':22} {result['every_answer_processed']}")
    print(f"{'rss start -> end MB':22} {result['rss_start_mb']} -> {result['rss_end_mb']}")
    growth = result["rss_kb_per_exchange"]
    print(
        f"{'rss KB per exchange':22} first half {growth['first_half']},"
        f" second half {growth['second_half']}"
    )
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
