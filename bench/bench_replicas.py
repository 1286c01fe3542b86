"""Several proxies serving one store: how soon one sees what another accepted, and how many
exchanges the write queue learns per second with one replica and with two.

1. Visibility: two `memento-proxy serve` processes on one store. The second holds the user's
   memories in memory (one search first); then, one at a time, a memory is created through the
   first (`POST /v1/memories`) and the second is searched (`POST /v1/memories/search`) every
   5 ms until it returns it. Reported: p50, p99 and worst of the delay from the first's 201 to
   the second's first answer holding it.
2. Queue: one or two replicas serving, then exchanges queued durably (a learnable persona fact
   each, and for half a request with an answer, as `after_call` queues them); exchanges learned
   per second, from the first queued until the queue is empty.

Backends: `embedded` (one data folder shared by the processes) and `postgresql` (a folder each,
one PostgreSQL database with its durability settings on, the index in a bucket of moto's S3
server on loopback; skipped without PostgreSQL's server binaries). Run:
`python -m bench replicas`;
`BENCH_SCALE` (default 1.0) scales the number of probes and exchanges. Results:
bench/results/replicas.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.shared_data import persona_facts
from proxy.memory.exchange_job import EXCHANGE_JOB
from proxy.memory.warmup import shared_embedder
from storage import open_store
from storage.index_location import URI_SETTING
from storage.postgres.url import DATABASE_URL_SETTING
from tests.harness import ServerProcess, write_tenant
from tests.postgres_server import PostgresServer, server_binaries
from tests.s3_server import S3Server

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "replicas.json"
SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
PROBES = max(20, int(200 * SCALE))
EXCHANGES = max(60, int(300 * SCALE))
TENANT, USER, KEY = "bench", "u0", "bench-replicas-key"


@contextmanager
def replicas(
    count: int, policies: Path, data_dirs: list[Path], **env: str
) -> Iterator[list[ServerProcess]]:
    """`count` proxies on one store (`data_dirs[i]` is replica i's folder)."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(ServerProcess(policies, data_dirs[i], **env)) for i in range(count)
        ]


def _http(server: ServerProcess) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    )


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def bench_visibility(policies: Path, data_dirs: list[Path], env: dict[str, str]) -> dict[str, Any]:
    delays: list[float] = []
    with (
        replicas(2, policies, data_dirs, **env) as (first, second),
        _http(first) as writer,
        _http(second) as reader,
    ):

        def found(token: str) -> bool:
            body = {"user": USER, "query": token, "limit": 5}
            hits = reader.post("/v1/memories/search", json=body).json()["data"]
            return any(token in hit["text"] for hit in hits)

        found("warm-up")  # the second replica now holds the user's scope in memory
        rng = random.Random(7)
        for number in range(PROBES):
            # At a random moment: right after a detection, the next write would fall in
            # step with the second replica's polling and always wait about as long.
            time.sleep(rng.uniform(0, 0.3))
            token = f"probe{uuid.uuid4().hex[:10]}"
            text = f"The user's locker code word number {number} is {token}."
            created = writer.post("/v1/memories", json={"user": USER, "kind": "fact", "text": text})
            created.raise_for_status()
            accepted = time.perf_counter()
            while not found(token):
                if time.perf_counter() - accepted > 30:
                    raise RuntimeError("the second replica never saw a memory")
                time.sleep(0.005)
            delays.append((time.perf_counter() - accepted) * 1000)
    return {
        "probes": len(delays),
        "p50_ms": round(statistics.median(delays), 1),
        "p99_ms": round(_percentile(delays, 0.99), 1),
        "max_ms": round(max(delays), 1),
    }


async def _queue_exchanges(data_dir: Path, count: int) -> None:
    from bench.bench_write import _job, _learnable

    facts = _learnable(persona_facts()[-2_000:])
    store = await open_store(data_dir, await shared_embedder("local"))
    try:
        for number in range(count):
            job = _job(number, facts[number % len(facts)], with_case=number % 2 == 1)
            await store.queue.enqueue(TENANT, EXCHANGE_JOB, job.to_json())
    finally:
        await store.close()


def bench_queue(
    count: int, policies: Path, data_dirs: list[Path], env: dict[str, str]
) -> dict[str, Any]:
    """Exchanges learned per second by `count` replicas, from the first exchange queued (while
    they serve) to the queue's being empty."""
    with replicas(count, policies, data_dirs, **env) as servers:
        started = time.perf_counter()
        asyncio.run(_queue_exchanges(data_dirs[0], EXCHANGES))
        with _http(servers[0]) as http:
            while http.get("/readyz").json()["write_queue"]["depth"] > 0:
                time.sleep(0.1)
        seconds = time.perf_counter() - started
    return {
        "replicas": count,
        "exchanges": EXCHANGES,
        "seconds": round(seconds, 1),
        "exchanges_per_second": round(EXCHANGES / seconds, 2),
    }


def run() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        policies = root / "policies"
        write_tenant(policies, TENANT, KEY, {"echo": {"model": "echo"}})
        results["embedded"] = _backend(root / "embedded", policies, shared_folder=True, env={})
        binaries = server_binaries()
        if binaries is None:
            print("PostgreSQL's server binaries are missing: the postgresql backend is skipped")
            return results
        postgres = PostgresServer(binaries).start(durable=True)
        try:
            with S3Server() as s3:

                def backend_env() -> dict[str, str]:
                    uri = f"s3://{s3.new_bucket()}/index"
                    url = postgres.create_database()
                    return {**s3.env, DATABASE_URL_SETTING: url, URI_SETTING: uri}

                results["postgresql"] = _backend(
                    root / "postgresql", policies, shared_folder=False, env=backend_env
                )
        finally:
            postgres.stop()
    return results


def _backend(
    root: Path,
    policies: Path,
    *,
    shared_folder: bool,
    env: dict[str, str] | Callable[[], dict[str, str]],
) -> dict[str, Any]:
    """Both measures on one backend: one folder for every replica (the embedded store), else a
    folder each and `env` (a fresh database and bucket per measure)."""

    def folders(name: str) -> list[Path]:
        return [root / name] * 3 if shared_folder else [root / f"{name}-{i}" for i in range(3)]

    def settings() -> dict[str, str]:
        return env() if callable(env) else env

    figures: dict[str, Any] = {}
    with _process_env(settings()) as used:
        figures["visibility"] = bench_visibility(policies, folders("visible"), used)
    print(root.name, json.dumps(figures["visibility"]), flush=True)
    for count in (1, 2):
        with _process_env(settings()) as used:
            figures[f"queue_{count}"] = bench_queue(count, policies, folders(f"queue{count}"), used)
        print(root.name, json.dumps(figures[f"queue_{count}"]), flush=True)
    return figures


@contextmanager
def _process_env(values: dict[str, str]) -> Iterator[dict[str, str]]:
    """`values` set in this process too (the queue is filled from here), then restored."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield values
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main() -> None:
    results = run()
    print(f"\n{'backend':>10} {'A→B p50 ms':>11} {'p99 ms':>8} {'max ms':>8} ", end="")
    print(f"{'1 replica ex/s':>15} {'2 replicas ex/s':>16}")
    for backend, figures in results.items():
        seen = figures["visibility"]
        print(
            f"{backend:>10} {seen['p50_ms']:>11} {seen['p99_ms']:>8} {seen['max_ms']:>8} "
            f"{figures['queue_1']['exchanges_per_second']:>15} "
            f"{figures['queue_2']['exchanges_per_second']:>16}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    record = {"machine": platform.machine(), "cpus": os.cpu_count(), "scale": SCALE, **results}
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
