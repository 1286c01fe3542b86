"""First calls of a user whose memories are not in the proxy's memory yet.

A user's scope (up to `MEMENTO_VECTOR_CACHE_MAX_ROWS` memories) is searched in process once it
is loaded, about half a second for 10k memories, twice a call's retrieval deadline. Until then
a search goes to LanceDB where the process has connected it, and waits for the copy where it
has not (`storage/search.py`). This measures both, on `BENCH_MEMORIES` (default 10,000)
memories of one user, each case on a fresh `memento-proxy serve` of a copy of the same folder
(`X-Memento-Mode: read`, int8 embedder, scripted upstream):

- `restarted, reads only`: the user's first four calls, one at a time, in a process that has
  not connected LanceDB;
- `after one learned exchange`: the same once another user's exchange was learned and 3 s
  passed (the first write connects LanceDB, in the background);
- each also with eight first calls sent at once.

Reported per case: how many calls got memories, why the others went without
(`x-memento-memory-skipped`), and each call's latency. `BENCH_COLD_RUNS` (default 3) runs each
case that many times. Results: a table on stdout and bench/results/cold.json.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from bench.bench_overhead import (
    MEMORY_TARGET,
    Server,
    memory_questions,
    start_memento,
    start_upstream,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "cold.json"
MEMORIES = int(os.environ.get("BENCH_MEMORIES", "10000"))
RUNS = int(os.environ.get("BENCH_COLD_RUNS", "3"))
# The first write connects LanceDB in the background (imports, the tenant's table opened and
# written): a few seconds after the learned exchange, that is done.
CONNECTING_S = 3.0
CASES = [
    ("restarted, reads only", False, 1),
    ("restarted, reads only", False, 8),
    ("after one learned exchange", True, 1),
    ("after one learned exchange", True, 8),
]


async def _call(session: aiohttp.ClientSession, server: Server, body: bytes) -> dict[str, Any]:
    started = time.perf_counter()
    headers = {"content-type": "application/json", **server.headers}
    async with session.post(server.url, data=body, headers=headers) as response:
        await response.read()
        return {
            "status": response.status,
            "memories": int(response.headers.get("x-memento-memories", "0")),
            "skipped": response.headers.get("x-memento-memory-skipped"),
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }


def _queue_empty(server: Server, timeout_s: float = 30) -> None:
    """Until the write queue is empty (`/readyz`): the learned exchange is in the index."""
    url = server.url.replace("/v1/chat/completions", "/readyz")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as response:
            if json.load(response)["write_queue"]["depth"] == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("the learned exchange was still queued after 30 s")


async def _learn_one(session: aiohttp.ClientSession, server: Server) -> None:
    messages = [{"role": "user", "content": "I prefer green tea in the morning."}]
    body = json.dumps({"model": "bench", "user": "someone-else", "messages": messages})
    headers = {"content-type": "application/json", **server.headers, "x-memento-mode": "full"}
    async with session.post(server.url, data=body, headers=headers) as response:
        assert response.status == 200, await response.text()
    await asyncio.to_thread(_queue_empty, server)
    await asyncio.sleep(CONNECTING_S)


async def _first_calls(server: Server, learn_first: bool, at_once: int) -> list[dict[str, Any]]:
    questions = memory_questions("bench", False, itertools.count())
    async with aiohttp.ClientSession() as session:
        if learn_first:
            await _learn_one(session, server)
        if at_once > 1:
            calls = [_call(session, server, questions(0)) for _ in range(at_once)]
            return list(await asyncio.gather(*calls))
        return [await _call(session, server, questions(0)) for _ in range(4)]


def _summary(case: str, at_once: int, calls: list[list[dict[str, Any]]]) -> dict[str, Any]:
    flat = [call for run in calls for call in run]
    skipped: dict[str, int] = {}
    for call in flat:
        if call["skipped"]:
            skipped[call["skipped"]] = skipped.get(call["skipped"], 0) + 1
    return {
        "case": case,
        "calls": "8 at once" if at_once > 1 else "4, one at a time",
        "with_memories": f"{sum(call['memories'] > 0 for call in flat)}/{len(flat)}",
        "skipped": skipped,
        "first_call_ms": [run[0]["ms"] for run in calls] if at_once == 1 else None,
        "runs": calls,
    }


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as name:
        tmp = Path(name)
        upstream_process, upstream = start_upstream(tmp)
        try:
            seeded = start_memento(upstream, tmp, MEMORY_TARGET, memories=MEMORIES)
            seeded.stop()  # its folder is copied for each case: every case starts cold
            number = itertools.count()
            for case, learn_first, at_once in CASES:
                calls = []
                for _ in range(RUNS):
                    server = start_memento(
                        upstream,
                        tmp,
                        f"cold-{next(number)}",
                        memories=MEMORIES,
                        data_like=MEMORY_TARGET,
                    )
                    try:
                        calls.append(asyncio.run(_first_calls(server, learn_first, at_once)))
                    finally:
                        server.stop()
                rows.append(_summary(case, at_once, calls))
                print(
                    f"  {case:28} {rows[-1]['calls']:17} memories {rows[-1]['with_memories']}",
                    flush=True,
                )
        finally:
            upstream_process.terminate()
            upstream_process.wait(timeout=15)
    print()
    print(f"{'case':28} {'calls':17} {'with memories':>13}  skipped  ms (each run)")
    for row in rows:
        runs = "; ".join(", ".join(f"{call['ms']:.0f}" for call in run) for run in row["runs"])
        print(
            f"{row['case']:28} {row['calls']:17} {row['with_memories']:>13}  "
            f"{sum(row['skipped'].values()):7}  {runs}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "memories": MEMORIES,
                "runs": RUNS,
                "cases": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
