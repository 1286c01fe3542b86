"""Metrics: OpenTelemetry instruments, scraped by Prometheus at `GET /metrics`.

The instruments are made once per process from a meter provider of our own, whose one reader is
OpenTelemetry's Prometheus exporter on a registry of our own (not the global ones: a library in
the same process cannot add to, or be surprised by, what an operator scrapes). Stages record with
plain calls (`REQUESTS.add(1, {...})`); recording is a dict lookup and an add, no I/O. Labels are
bounded sets (API, tenant, status, stage, verdict, source), never user ids or text.

What an operator reads (Prometheus names):
- `memento_requests_total{api,tenant,status,stream}` and `memento_request_duration_seconds`
  (until the response starts: the whole call when not streamed, the time to open a stream);
- `memento_upstream_errors_total{api,tenant,status}`;
- `memento_memory_read_duration_seconds{stage}` (`before_call`, `retrieve`, `budget`, `inject`),
  `memento_memory_injected` (memories per call), `memento_memory_retrieval_failures_total{reason}`
  (`deadline`, `error`): the hot path, and when it gave up;
- `memento_sanitizer_verdicts_total{verdict,source}`;
- `memento_write_queue_depth` and `memento_write_queue_oldest_age_seconds`, read from the store
  when scraped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from storage.records import QueueDepth

# Seconds: from a cache hit (a millisecond) to a slow model call (a minute).
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_COUNTS = (0, 1, 2, 3, 5, 8, 13, 21, 34)

CONTENT_TYPE = CONTENT_TYPE_LATEST

_registry = CollectorRegistry()
_reader = PrometheusMetricReader(
    registry=_registry, disable_target_info=True, scope_info_enabled=False
)
_meter = MeterProvider(metric_readers=[_reader]).get_meter("memento")

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
    depth: QueueDepth | None = None


_queue = _QueueSnapshot()


def _queue_depth(options: CallbackOptions) -> list[Observation]:
    depth = _queue.depth
    return [] if depth is None else [Observation(depth.jobs)]


def _queue_age(options: CallbackOptions) -> list[Observation]:
    depth = _queue.depth
    if depth is None:
        return []
    oldest = depth.oldest_created_at
    return [Observation(0.0 if oldest is None else max(0.0, time.time() - oldest))]


_meter.create_observable_gauge(
    "memento.write_queue.depth",
    [_queue_depth],
    unit="{job}",
    description="Write jobs queued or running.",
)
_meter.create_observable_gauge(
    "memento.write_queue.oldest_age",
    [_queue_age],
    unit="s",
    description="Age of the oldest write job not yet done (0 when none waits).",
)


def render(queue_depth: QueueDepth | None) -> bytes:
    """Every metric in Prometheus' text format; the queue gauges from `queue_depth` (read from
    the store just before), absent when the proxy runs without memory."""
    _queue.depth = queue_depth
    return bytes(generate_latest(_registry))
