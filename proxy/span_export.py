"""Where finished spans go: the router that hands each span to the app it belongs to, and the
exporter that writes an app's spans into its span store.

OpenTelemetry allows one global tracer provider per process, yet a process may host several apps
(tests do). So the global provider gets one `SpanRouter`, and each app registers its own
processors with it: a span belongs to the app whose event loop started it (or whose trace it
continues). `proxy/tracing.py` sets these up for an app; nothing here reads a policy.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from storage.api import HealthReporter, SpanStore
from storage.records import SpanRow
from storage.spans import SpanStoreUnavailable

log = logging.getLogger("memento.tracing")

TRACES_COMPONENT = "traces"  # the name a span store that cannot write is reported under


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
        self._lock = threading.Lock()  # the batch processor's thread, and `retry_held`'s

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            return self._write([*self._held, *(span_row(span) for span in spans)])

    def retry_held(self) -> None:
        """Write the spans held since the store refused them, with no new span to carry them:
        a replica that `/readyz` took out of rotation for them gets no traffic that would."""
        with self._lock:
            if self._held:
                self._write(list(self._held))

    def _write(self, rows: list[SpanRow]) -> SpanExportResult:
        try:
            self._store.write_spans_blocking(rows)
        except SpanStoreUnavailable as exc:  # no room, locked, out of reach: keep them for later
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


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None (the batch processor's thread)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class SpanRouter(SpanProcessor):
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
        loop = running_loop()
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
                loop = running_loop()
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
_router: SpanRouter | None = None


def global_router() -> SpanRouter:
    """Install the router on the global tracer provider once per process."""
    global _router
    with _router_lock:
        if _router is None:
            router = SpanRouter()
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
