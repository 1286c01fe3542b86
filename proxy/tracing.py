"""OpenTelemetry set-up and the content-capture rule every stage follows.

Stages create spans with the plain API (`opentelemetry.trace.get_tracer("memento.proxy")`).
`setup_tracing`, called from the app's lifespan, makes those spans land in the local span store
(batched, in the batch processor's own thread, never on the request path) and, when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set, in any OTLP collector as well. Retention follows each
tenant's `tracing` policy. The router and the exporter those spans pass through are in
`proxy/span_export.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, SynchronousMultiSpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanContext, TraceFlags

from proxy.policy import TracingPolicy
from proxy.policy_source import PolicySource
from proxy.span_export import SQLiteSpanExporter, global_router, running_loop
from storage.api import HealthReporter, SpanStore
from storage.span_rows import CLIENT_REQUEST_ID_ATTR

log = logging.getLogger("memento.tracing")

TRACER_NAME = "memento.proxy"
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTLP_TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
PRUNE_INTERVAL_S = 600.0
# How often spans held in memory (the span store refused them) are tried again without new ones.
HELD_RETRY_S = 5.0
# Spans go to the span store in small batches, soon after they end. The exporter's thread shares
# the GIL and the CPU with the event loop, and a span costs it about 60 µs (row, JSON, five
# index entries): a batch of 1,024 was a 50-100 ms burst, and the calls it overlapped waited
# behind it (pass-through p99 at c=1: +6-7 ms; with 32-span batches +3-4 ms, docs/tracing.md).
SPAN_BATCH = 32
SPAN_BATCH_DELAY_MS = 100
# Spans no tenant ever claimed (started outside any request) are kept as long as the default.
UNRESOLVED_RETENTION_S = TracingPolicy().retention_days * 86400

_SECRETISH = re.compile(r"\b(sk-[A-Za-z0-9_-]{8,}|[A-Za-z0-9_-]{32,})\b")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
_DIGITS = re.compile(r"\d")


def content_attr(policy: TracingPolicy, text: str) -> str | None:
    """What of `text` a span may carry: nothing (off), a redacted form, or all of it (full)."""
    if policy.content == "off":
        return None
    if policy.content == "full":
        return text
    redacted = _SECRETISH.sub("[secret]", text)
    redacted = _EMAIL.sub("[email]", redacted)
    return _DIGITS.sub("#", redacted)


def json_attr(value: Any) -> str:
    """Structured decisions (scores and their parts, verdicts) as one JSON span attribute."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def span_ids(span: trace.Span) -> tuple[str, str]:
    """Hex trace id and span id of a span, as carried in `CallContext` and queued jobs."""
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def request_link(
    trace_id: str | None, span_id: str | None, request_id: str | None = None
) -> list[Link]:
    """A link from later work (the write path) to the request whose exchange it learns from."""
    if not trace_id or not span_id:
        return []
    try:
        ctx = SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    except ValueError:
        return []
    attributes = {"memento.request_id": request_id} if request_id else None
    return [Link(ctx, attributes)]


RetentionLookup = Callable[[str], TracingPolicy | None]


class TracingHandle:
    """One app's tracing: its processors, its span store, its retention task."""

    def __init__(
        self,
        store: SpanStore,
        loop: asyncio.AbstractEventLoop,
        processors: SynchronousMultiSpanProcessor,
        retention: RetentionLookup,
        prune_interval_s: float,
        exporter: SQLiteSpanExporter,
    ) -> None:
        self.store = store
        self.otlp_traces_url: str | None = None
        self._loop = loop
        self._processors = processors
        self._retention = retention
        self._prune_task = loop.create_task(self._prune_forever(prune_interval_s))
        self._retry_task = loop.create_task(self._retry_held_forever(exporter))
        self._closed = False

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Send this app's spans to one more processor (an in-memory exporter in tests)."""
        self._processors.add_span_processor(processor)

    async def flush(self) -> None:
        """Export every finished span now; when this returns they are in the span store."""
        await asyncio.to_thread(self._processors.force_flush)

    async def forget_user(self, tenant_id: str, user_id: str) -> int:
        """Delete the traces of one user's requests, those still on their way to the store
        included; returns how many spans."""
        await self.flush()
        return await self.store.delete_user_spans(tenant_id, user_id)

    def force_flush(self) -> bool:
        """`flush` for callers on another thread (never call it on the app's event loop)."""
        if running_loop() is self._loop:
            raise RuntimeError("force_flush would block the app's event loop; await flush()")
        return bool(self._processors.force_flush())

    async def prune(self, *, now: float | None = None) -> int:
        """Apply each tenant's retention (age and count) once; returns spans deleted."""
        at = time.time() if now is None else now
        deleted = 0
        for tenant_id in await self.store.tenants():
            policy = self._retention(tenant_id) or TracingPolicy()
            deleted += await self.store.prune_spans(
                tenant_id,
                older_than=at - policy.retention_days * 86400,
                keep_max=policy.max_traces,
            )
        deleted += await self.store.prune_unresolved(older_than=at - UNRESOLVED_RETENTION_S)
        return deleted

    async def _prune_forever(self, interval_s: float) -> None:
        while True:
            try:
                deleted = await self.prune()
                if deleted:
                    log.info("trace retention deleted %d spans", deleted)
            except Exception:
                log.exception("trace retention failed; retrying in %.0f s", interval_s)
            await asyncio.sleep(interval_s)

    async def _retry_held_forever(self, exporter: SQLiteSpanExporter) -> None:
        while True:
            await asyncio.sleep(HELD_RETRY_S)
            try:
                await asyncio.to_thread(exporter.retry_held)
            except Exception:
                log.exception("retrying the spans held in memory failed")

    async def shutdown(self) -> None:
        """Flush and stop exporting; the caller closes the span store afterwards."""
        if self._closed:
            return
        self._closed = True
        for task in (self._prune_task, self._retry_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self._processors.shutdown)
        global_router().unregister(self._loop)


def setup_tracing(
    settings: object,
    span_store: SpanStore,
    *,
    retention: RetentionLookup | None = None,
    otlp_endpoint: str | None = None,
    prune_interval_s: float = PRUNE_INTERVAL_S,
    schedule_delay_ms: int = SPAN_BATCH_DELAY_MS,
    health: HealthReporter | None = None,
) -> TracingHandle:
    """Route this app's spans to `span_store` (and OTLP when configured). Call inside the app's
    running event loop (its lifespan); `await handle.shutdown()` before closing the store.

    `retention(tenant_id)` returns that tenant's `TracingPolicy` (defaults when None);
    `otlp_endpoint` (a collector's base URL) defaults to the standard OTEL_EXPORTER_OTLP_*
    variables (see `otlp_traces_url`); `health` hears when spans cannot be stored.
    """
    del settings  # process settings hold nothing tracing-specific yet; kept for the seam
    loop = asyncio.get_running_loop()
    processors = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
    exporter = SQLiteSpanExporter(span_store, health=health)
    processors.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=65536,
            max_export_batch_size=SPAN_BATCH,
            schedule_delay_millis=schedule_delay_ms,
        )
    )
    endpoint = otlp_traces_url(otlp_endpoint)
    if endpoint:
        processors.add_span_processor(BatchSpanProcessor(_otlp_exporter(endpoint)))
        log.info("exporting traces over OTLP to %s", endpoint)
    handle = TracingHandle(
        span_store,
        loop,
        processors,
        retention or (lambda _tenant: None),
        prune_interval_s,
        exporter,
    )
    handle.otlp_traces_url = endpoint
    global_router().register(loop, processors)
    return handle


def otlp_traces_url(explicit: str | None = None) -> str | None:
    """Where OTLP/HTTP traces go: an explicit URL, else the standard variables
    (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as a full URL, or `OTEL_EXPORTER_OTLP_ENDPOINT`, the
    collector's base URL, plus `/v1/traces`). None when nothing is configured."""
    if explicit:
        base = explicit
    elif os.environ.get(OTLP_TRACES_ENDPOINT_ENV):
        return os.environ[OTLP_TRACES_ENDPOINT_ENV]
    else:
        base = os.environ.get(OTLP_ENDPOINT_ENV, "")
    if not base:
        return None
    url = base.rstrip("/")
    return url if url.endswith("/v1/traces") else f"{url}/v1/traces"


def _otlp_exporter(url: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol != "http/protobuf":
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting OTLP over "
            "http/protobuf to %s (collectors listen for it on port 4318)",
            protocol,
            url,
        )
    return OTLPSpanExporter(endpoint=url)


def retention_from(policies: PolicySource) -> RetentionLookup:
    """Each tenant's current tracing policy from the (hot-reloaded) policy registry."""

    def lookup(tenant_id: str) -> TracingPolicy | None:
        policy = policies.get(tenant_id)
        return None if policy is None else policy.tracing

    return lookup


# -- the request's own spans (used by the chat route) -------------------------------------------

_tracer = trace.get_tracer(TRACER_NAME)


def start_request_span(request_id: str, client_request_id: str | None = None) -> trace.Span:
    """The root span of one call; its trace id is what later write-path work links to. The
    client's own id, when it sent one, is an attribute to search by, never the request's id."""
    attributes = {"memento.request_id": request_id}
    if client_request_id is not None:
        attributes[CLIENT_REQUEST_ID_ATTR] = client_request_id
    return _tracer.start_span("memento.request", kind=trace.SpanKind.SERVER, attributes=attributes)


def start_upstream_span(alias: str, model: str, passthrough: bool) -> trace.Span:
    """The upstream call, named by GenAI conventions (gen_ai.system, gen_ai.request.model)."""
    system = model.split("/", 1)[0] if "/" in model else ("openai" if passthrough else model)
    return _tracer.start_span(
        "memento.upstream",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.system": system,
            "gen_ai.request.model": model,
            "memento.model_alias": alias,
        },
    )


def record_response(span: trace.Span, response: Any) -> None:
    """Usage and response model of a chat.completion dict (streams: the assembled one)."""
    if not isinstance(response, dict):
        return
    if isinstance(response.get("model"), str):
        span.set_attribute("gen_ai.response.model", response["model"])
    usage = response.get("usage")
    if isinstance(usage, dict):
        for source, name in (
            ("prompt_tokens", "gen_ai.usage.input_tokens"),
            ("completion_tokens", "gen_ai.usage.output_tokens"),
        ):
            if isinstance(usage.get(source), int):
                span.set_attribute(name, usage[source])
    reasons = [c.get("finish_reason") for c in response.get("choices") or [] if isinstance(c, dict)]
    if reasons and all(isinstance(r, str) for r in reasons):
        span.set_attribute("gen_ai.response.finish_reasons", reasons)


def record_first_token(span: trace.Span, started_ns: int) -> None:
    """Time to first token (streams: the first chunk; whole answers: the answer)."""
    ttft_ms = round((time.monotonic_ns() - started_ns) / 1e6, 3)
    span.set_attribute("memento.ttft_ms", ttft_ms)
    span.add_event("first_token", {"memento.ttft_ms": ttft_ms})


def record_http_status(span: trace.Span, status: int) -> None:
    """The HTTP status a span ended with; 5xx marks it failed (4xx is the caller's mistake)."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"HTTP {status}"))


def record_failure(span: trace.Span, exc: BaseException) -> None:
    """Mark a span failed without recording message text a client sent (no content)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        record_http_status(span, status)
        return
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))


class EndSpansAfter:
    """An ASGI response that ends spans once the wrapped (streamed) response is finished."""

    def __init__(self, response: Any, *spans: trace.Span) -> None:
        self.response = response
        self.spans = spans

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.response(scope, receive, send)
        except BaseException as exc:
            for span in self.spans:
                record_failure(span, exc)
            raise
        finally:
            for span in self.spans:
                span.end()
