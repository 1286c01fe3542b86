"""Tracing cost: what spans add to a request, how fast they reach SQLite, how fast views read.

1. Request path: one request-shaped trace (root + 6 stage spans with decision attributes), with
   the proxy's tracing set up (router + batch processor to SQLite) against no tracing at all.
2. Export: spans per second written into traces.db by the batched exporter, end to end.
3. Views: `list_traces` and `get_trace` with many requests stored.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from opentelemetry import trace

from proxy.tracing import json_attr, setup_tracing
from storage import open_span_store

RESULTS = Path(__file__).parent / "results" / "tracing.json"
REQUESTS = 2000
STORED_REQUESTS = 5000
tracer = trace.get_tracer("memento.proxy")


def one_request(n: int) -> None:
    scores = json_attr({f"mem_{i}": {"score": 0.5, "rrf": 0.01, "q": 0.1} for i in range(8)})
    with tracer.start_as_current_span(
        "memento.request",
        attributes={
            "memento.request_id": f"req_{n}",
            "memento.tenant": "bench",
            "enduser.id": f"user{n % 50}",
            "gen_ai.request.model": "echo",
        },
    ):
        with tracer.start_as_current_span("memento.auth"):
            pass
        with tracer.start_as_current_span("memento.retrieve") as span:
            span.set_attribute("memento.memory.scores", scores)
        with tracer.start_as_current_span("memento.budget") as span:
            span.set_attribute("memento.budget.used", 300)
        with tracer.start_as_current_span("memento.inject") as span:
            span.set_attribute("memento.memory.ids", [f"mem_{i}" for i in range(4)])
        with tracer.start_as_current_span("memento.upstream") as span:
            span.set_attribute("gen_ai.usage.input_tokens", 120)
            span.set_attribute("gen_ai.usage.output_tokens", 40)
        with tracer.start_as_current_span("memento.extract"):
            pass


def per_request_us(count: int) -> list[float]:
    samples = []
    for n in range(count):
        started = time.perf_counter_ns()
        one_request(n)
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": round(statistics.median(ordered), 1),
        "p99_us": round(ordered[int(len(ordered) * 0.99) - 1], 1),
        "mean_us": round(statistics.fmean(ordered), 1),
    }


async def run(data_dir: Path) -> dict[str, Any]:
    # Without tracing set up the global API hands out no-op spans.
    baseline = summary(per_request_us(REQUESTS))

    store = await open_span_store(data_dir)
    handle = setup_tracing(object(), store)
    per_request_us(200)  # warm-up
    await handle.flush()
    traced = summary(per_request_us(REQUESTS))

    # End to end: requests keep coming while the batch processor's thread writes them.
    started = time.perf_counter()
    for n in range(REQUESTS, REQUESTS + STORED_REQUESTS):
        one_request(n)
        if n % 20 == 0:
            await asyncio.sleep(0)  # a serving loop yields between requests
    await handle.flush()
    export_s = time.perf_counter() - started
    stored = 0
    for n in range(REQUESTS, REQUESTS + STORED_REQUESTS, 50):
        stored += len(await store.get_trace("bench", f"req_{n}"))
    kept_share = stored / (STORED_REQUESTS // 50 * 7)

    list_ms = []
    get_ms = []
    for n in range(200):
        t0 = time.perf_counter()
        await store.list_traces("bench", limit=50)
        list_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        await store.get_trace("bench", f"req_{REQUESTS + n * 97}")
        get_ms.append((time.perf_counter() - t0) * 1000)
    await handle.shutdown()
    await store.close()
    size_mb = sum(p.stat().st_size for p in data_dir.glob("traces.db*")) / 1e6
    return {
        "request_path_no_tracing": baseline,
        "request_path_traced": traced,
        "added_per_request_us_p50": round(traced["p50_us"] - baseline["p50_us"], 1),
        "traced_requests_per_s_incl_export": round(STORED_REQUESTS / export_s),
        "spans_kept_share": round(kept_share, 4),
        "list_traces_ms_p50": round(statistics.median(list_ms), 2),
        "get_trace_ms_p50": round(statistics.median(get_ms), 2),
        "traces_db_mb": round(size_mb, 1),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(Path(tmp)))
    rows = [
        (
            "request path, no tracing (7 spans)",
            f"p50 {result['request_path_no_tracing']['p50_us']} µs",
        ),
        (
            "request path, traced (7 spans)",
            f"p50 {result['request_path_traced']['p50_us']} µs, "
            f"p99 {result['request_path_traced']['p99_us']} µs",
        ),
        ("added per request", f"{result['added_per_request_us_p50']} µs"),
        (
            "requests traced into traces.db",
            f"{result['traced_requests_per_s_incl_export']} req/s (7 spans each), "
            f"{result['spans_kept_share']:.1%} of spans kept",
        ),
        (
            f"list_traces (50 of {STORED_REQUESTS + REQUESTS} requests)",
            f"p50 {result['list_traces_ms_p50']} ms",
        ),
        ("get_trace (one request)", f"p50 {result['get_trace_ms_p50']} ms"),
        (
            "traces.db size",
            f"{result['traces_db_mb']} MB for {STORED_REQUESTS + REQUESTS} requests",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
