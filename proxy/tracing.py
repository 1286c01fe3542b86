"""OpenTelemetry set-up and the content-capture rule every stage follows.

Stages create spans with the plain API (`opentelemetry.trace.get_tracer("memento.proxy")`).
`setup_tracing`, called from the app's lifespan, makes those spans land in the local span store
(batched, in the batch processor's own thread, never on the request path) and, when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set, in any OTLP collector as well. Retention follows each
tenant's `tracing` policy.

OpenTelemetry allows one global tracer provider per process, yet a process may host several apps
(tests do). So the global provider gets one router, and each app registers its own processors
with it: a span belongs to the app whose event loop started it (or whose trace it continues).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import (
    ReadableSpan,
    Span,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanContext, TraceFlags

from proxy.policy import TracingPolicy
from proxy.policy_source import PolicySource
from storage.api import HealthReporter, SpanStore
from storage.records import SpanRow
from storage.spans import CLIENT_REQUEST_ID_ATTR

log = logging.getLogger("memento.tracing")

TRACER_NAME = "memento.proxy"
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTLP_TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
PRUNE_INTERVAL_S = 600.0
TRACES_COMPONENT = "traces"  # the name a span store that cannot write is reported under
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


def span_row(span: ReadableSpan) -> SpanRow:
    """A finished span as the span store keeps it."""
    ctx = span.get_span_context()
    attrs = dict(span.attributes or {})
    status = span.status.status_code.name.lower()
    if span.status.description:
        status = f"{status}: {span.status.description}"
    return SpanRow(
        trace_id=format(ctx.trace_id, "032x") if ctx else "",
        span_id=format(ctx.span_id, "016x") if ctx else "",
        parent_span_id=format(span.parent.span_id, "016x") if span.parent else None,
        tenant_id=str(attrs.get("memento.tenant") or ""),
        request_id=_opt_str(attrs.get("memento.request_id")),
        user_id=_opt_str(attrs.get("enduser.id")),
        name=span.name,
        start_ns=span.start_time or 0,
        end_ns=span.end_time or span.start_time or 0,
        status=status,
        attributes={key: _plain(value) for key, value in attrs.items()},
        events=[
            {
                "name": event.name,
                "time_ns": event.timestamp,
                "attributes": {k: _plain(v) for k, v in (event.attributes or {}).items()},
            }
            for event in span.events
        ],
        links=[
            {
                "trace_id": format(link.context.trace_id, "032x"),
                "span_id": format(link.context.span_id, "016x"),
                "attributes": {k: _plain(v) for k, v in (link.attributes or {}).items()},
            }
            for link in span.links
        ],
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class SQLiteSpanExporter(SpanExporter):
    """Writes batches of finished spans into the span store, in the batch processor's thread.

    When the store cannot write for a while (a full disk, a locked file) the spans wait in
    memory, up to `hold_limit` (oldest dropped first, and counted), and go with the next batch
    that can be written; meanwhile `health` hears of it, so `/readyz` says why.
    """

    def __init__(
        self,
        store: SpanStore,
        *,
        health: HealthReporter | None = None,
        hold_limit: int = 50_000,
    ) -> None:
        self._store = store
        self._health = health
        self._held: deque[SpanRow] = deque(maxlen=hold_limit)
        self._dropped = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        rows = [*self._held, *(span_row(span) for span in spans)]
        try:
            self._store.write_spans_blocking(rows)
        except sqlite3.OperationalError as exc:  # no room, or locked: keep them for later
            self._hold(rows, exc)
            return SpanExportResult.FAILURE
        except Exception:
            log.exception("writing %d spans to the span store failed", len(rows))
            self._held.clear()
            return SpanExportResult.FAILURE
        if self._held:
            log.warning("the span store writes again: %d held spans written", len(self._held))
            self._held.clear()
            if self._health is not None:
                self._health.clear(TRACES_COMPONENT)
        return SpanExportResult.SUCCESS

    def _hold(self, rows: list[SpanRow], exc: Exception) -> None:
        if not self._held:
            log.error("the span store refuses writes (%s): holding spans in memory", exc)
        overflow = max(0, len(rows) - (self._held.maxlen or 0))
        self._dropped += overflow
        self._held.clear()
        self._held.extend(rows)
        if self._health is not None:
            message = f"{len(self._held)} spans held in memory, the span store refuses writes"
            dropped = f"; {self._dropped} dropped since start" if self._dropped else ""
            self._health.report(TRACES_COMPONENT, f"{message} ({exc}){dropped}")

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _SpanRouter(SpanProcessor):
    """The one processor on the global provider: hands each span to the app it belongs to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_loop: dict[asyncio.AbstractEventLoop, SpanProcessor] = {}
        self._by_trace: dict[int, SpanProcessor] = {}  # while the trace's local root is open
        self._open: dict[int, SpanProcessor] = {}  # span id -> app, from start to end
        self._sole: SpanProcessor | None = None  # the only app, when there is just one

    def register(self, loop: asyncio.AbstractEventLoop, processor: SpanProcessor) -> None:
        with self._lock:
            self._by_loop[loop] = processor
            self._sole = processor if len(self._by_loop) == 1 else None

    def unregister(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            processor = self._by_loop.pop(loop, None)
            self._sole = next(iter(self._by_loop.values())) if len(self._by_loop) == 1 else None
            for table in (self._by_trace, self._open):
                for key in [k for k, v in table.items() if v is processor]:
                    del table[key]

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        sole = self._sole
        if sole is not None:  # one app in the process (production): no bookkeeping per span
            sole.on_start(span, parent_context)
            return
        ctx = span.get_span_context()
        if ctx is None:
            return
        loop = _running_loop()
        with self._lock:
            processor = (self._by_loop.get(loop) if loop else None) or self._by_trace.get(
                ctx.trace_id
            )
            if processor is None:
                return
            self._open[ctx.span_id] = processor
            if span.parent is None or span.parent.is_remote:
                self._by_trace[ctx.trace_id] = processor
        processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        sole = self._sole
        if sole is not None and not self._open:
            sole.on_end(span)
            return
        ctx = span.get_span_context()
        if ctx is None:
            return
        root = span.parent is None or span.parent.is_remote
        with self._lock:
            processor = self._open.pop(ctx.span_id, None)
            if processor is None:  # started while one app was alone: the loop still tells
                loop = _running_loop()
                processor = (self._by_loop.get(loop) if loop else None) or self._sole
            if root:
                self._by_trace.pop(ctx.trace_id, None)
        if processor is not None:
            processor.on_end(span)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_router_lock = threading.Lock()
_router: _SpanRouter | None = None


def _global_router() -> _SpanRouter:
    """Install the router on the global tracer provider once per process."""
    global _router
    with _router_lock:
        if _router is None:
            router = _SpanRouter()
            current = trace.get_tracer_provider()
            if isinstance(current, TracerProvider):
                current.add_span_processor(router)  # someone set an SDK provider first: join it
            else:
                from proxy import __version__

                resource = Resource.create(
                    {SERVICE_NAME: "memento-proxy", SERVICE_VERSION: __version__}
                )
                provider = TracerProvider(resource=resource)
                provider.add_span_processor(router)
                trace.set_tracer_provider(provider)
            _router = router
        return _router


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
    ) -> None:
        self.store = store
        self.otlp_traces_url: str | None = None
        self._loop = loop
        self._processors = processors
        self._retention = retention
        self._prune_task = loop.create_task(self._prune_forever(prune_interval_s))
        self._closed = False

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Send this app's spans to one more processor (an in-memory exporter in tests)."""
        self._processors.add_span_processor(processor)

    async def flush(self) -> None:
        """Export every finished span now; when this returns they are in the span store."""
        await asyncio.to_thread(self._processors.force_flush)

    def force_flush(self) -> bool:
        """`flush` for callers on another thread (never call it on the app's event loop)."""
        if _running_loop() is self._loop:
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

    async def shutdown(self) -> None:
        """Flush and stop exporting; the caller closes the span store afterwards."""
        if self._closed:
            return
        self._closed = True
        self._prune_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._prune_task
        await asyncio.to_thread(self._processors.shutdown)
        _global_router().unregister(self._loop)


def setup_tracing(
    settings: object,
    span_store: SpanStore,
    *,
    retention: RetentionLookup | None = None,
    otlp_endpoint: str | None = None,
    prune_interval_s: float = PRUNE_INTERVAL_S,
    schedule_delay_ms: int = 500,
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
    processors.add_span_processor(
        BatchSpanProcessor(
            SQLiteSpanExporter(span_store, health=health),
            max_queue_size=65536,
            max_export_batch_size=1024,
            schedule_delay_millis=schedule_delay_ms,
        )
    )
    endpoint = otlp_traces_url(otlp_endpoint)
    if endpoint:
        processors.add_span_processor(BatchSpanProcessor(_otlp_exporter(endpoint)))
        log.info("exporting traces over OTLP to %s", endpoint)
    handle = TracingHandle(
        span_store, loop, processors, retention or (lambda _tenant: None), prune_interval_s
    )
    handle.otlp_traces_url = endpoint
    _global_router().register(loop, processors)
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
