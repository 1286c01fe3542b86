"""Metrics: OpenTelemetry instruments, scraped by Prometheus at `GET /metrics`.

The instruments are made once per process from a meter provider of our own, whose one reader is
OpenTelemetry's Prometheus exporter on a registry of our own (not the global ones: a library in
the same process cannot add to, or be surprised by, what an operator scrapes). Stages record with
plain calls (`REQUESTS.add(1, {...})`); recording is a dict lookup and an add, no I/O. Labels are
bounded sets (API, tenant, status, stage, verdict, source), never user ids or text. Under
`serve --processes N`, one scrape answers for every serving process, each series under its
`process` slot (`proxy.metrics_share`).

What an operator reads (Prometheus names):
- `memento_requests_total{api,tenant,status,stream}` and `memento_request_duration_seconds`
  (until the response starts: the whole call when not streamed, the time to open a stream);
- `memento_upstream_errors_total{api,tenant,status}`;
- `memento_memory_read_duration_seconds{stage}` (`before_call`, `retrieve`, `budget`, `inject`),
  `memento_memory_injected` (memories per call), `memento_memory_retrieval_failures_total{reason}`
  (`deadline`, `error`): the hot path, and when it gave up;
- `memento_sanitizer_verdicts_total{tenant,verdict,source}` (dry runs are not counted);
- `memento_write_queue_depth{tenant}` and `memento_write_queue_oldest_age_seconds{tenant}`, read
  from the store when scraped, and `memento_write_queue_shed_total{tenant,reason}`: exchanges
  not learned because the tenant's `memory.write_queue` bound was hit;
- `memento_gc_pause_seconds{generation}`: the garbage collector's passes, each of which holds
  every thread (the event loop's too). The collector's callback only notes a pass's length; the
  passes are recorded when scraped (the instruments take locks that the interrupted code may
  hold), the last 10,000 of them;
- the process's own, as prometheus_client's default registry has them: `process_*` (CPU
  seconds, resident and virtual memory, open files, start time), `python_gc_*` (collections
  and objects collected by generation) and `python_info`.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from storage.records import QueueDepth

# Seconds: from a cache hit (a millisecond) to a slow model call (a minute).
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A young generation's pass takes a tenth of a millisecond, a full one tens of them.
_PAUSES = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
# Passes noted between two scrapes (under load a few a second): older ones are dropped.
_GC_PAUSES_KEPT = 10_000
_COUNTS = (0, 1, 2, 3, 5, 8, 13, 21, 34)

CONTENT_TYPE = CONTENT_TYPE_LATEST

_registry = CollectorRegistry()
_reader = PrometheusMetricReader(
    registry=_registry, disable_target_info=True, scope_info_enabled=False
)
_meter = MeterProvider(metric_readers=[_reader]).get_meter("memento")
ProcessCollector(registry=_registry)
GCCollector(registry=_registry)
PlatformCollector(registry=_registry)

REQUESTS = _meter.create_counter(
    "memento.requests", unit="{request}", description="Model calls answered, by door and status."
)
REQUEST_DURATION = _meter.create_histogram(
    "memento.request.duration",
    unit="s",
    description="From the call's arrival until its response starts.",
    explicit_bucket_boundaries_advisory=_SECONDS,
)
UPSTREAM_ERRORS = _meter.create_counter(
    "memento.upstream.errors", unit="{error}", description="Upstream calls that failed."
)
MEMORY_READ_DURATION = _meter.create_histogram(
    "memento.memory.read.duration",
    unit="s",
    description="The memory read path, by stage (before_call is all of it).",
    explicit_bucket_boundaries_advisory=_SECONDS,
)
MEMORIES_INJECTED = _meter.create_histogram(
    "memento.memory.injected",
    unit="{memory}",
    description="Memories injected into a call that read memory.",
    explicit_bucket_boundaries_advisory=_COUNTS,
)
RETRIEVAL_FAILURES = _meter.create_counter(
    "memento.memory.retrieval.failures",
    unit="{call}",
    description="Calls that went on without memory: the retrieval deadline or an error.",
)
SANITIZER_VERDICTS = _meter.create_counter(
    "memento.sanitizer.verdicts", unit="{memory}", description="Write-path verdicts."
)


@dataclass
class _QueueSnapshot:
    depths: dict[str, QueueDepth] | None = None


_queue = _QueueSnapshot()


def _queue_depth(options: CallbackOptions) -> list[Observation]:
    depths = _queue.depths or {}
    return [Observation(d.jobs, {"tenant": tenant}) for tenant, d in depths.items()]


def _queue_age(options: CallbackOptions) -> list[Observation]:
    depths, now = _queue.depths or {}, time.time()
    return [Observation(d.age_s(now), {"tenant": tenant}) for tenant, d in depths.items()]


_meter.create_observable_gauge(
    "memento.write_queue.depth",
    [_queue_depth],
    unit="{job}",
    description="Write jobs queued or running, by tenant (tenants with none are left out).",
)
_meter.create_observable_gauge(
    "memento.write_queue.oldest_age",
    [_queue_age],
    unit="s",
    description="How long the tenant's oldest write job not yet done has waited.",
)
SHED_EXCHANGES = _meter.create_counter(
    "memento.write_queue.shed",
    unit="{exchange}",
    description="Answered exchanges not learned because the tenant's write-queue bound was hit.",
)


GC_PAUSE = _meter.create_histogram(
    "memento.gc.pause",
    unit="s",
    description="Garbage-collector passes, by generation: each holds every thread.",
    explicit_bucket_boundaries_advisory=_PAUSES,
)
_gc_pauses: deque[tuple[int, float]] = deque(maxlen=_GC_PAUSES_KEPT)
_gc_started = [0.0]


def _note_gc_pass(phase: str, info: dict[str, Any]) -> None:
    """A `gc.callbacks` entry: runs inside the collection, so it only notes (no locks)."""
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        _gc_pauses.append((info["generation"], time.perf_counter() - _gc_started[0]))


gc.callbacks.append(_note_gc_pass)


def render(queue_depths: dict[str, QueueDepth] | None) -> bytes:
    """Every metric in Prometheus' text format; the queue gauges from `queue_depths` (read from
    the store just before; None when the proxy runs without memory)."""
    _queue.depths = queue_depths
    while _gc_pauses:
        generation, seconds = _gc_pauses.popleft()
        GC_PAUSE.record(seconds, {"generation": str(generation)})
    return bytes(generate_latest(_registry))
