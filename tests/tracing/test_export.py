"""Tracer set-up: spans reach the in-memory exporter, the SQLite store and an OTLP collector."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy import tracing as tracing_module
from proxy.health import Health
from proxy.policy import TracingPolicy
from proxy.span_export import TRACES_COMPONENT
from proxy.tracing import (
    TracingHandle,
    json_attr,
    request_link,
    setup_tracing,
    span_ids,
)
from storage import open_span_store
from storage.spans import SpanTable
from tests.tracing.collector import Collector

tracer = trace.get_tracer("memento.proxy")


def traced_request(tenant: str, request_id: str, user: str) -> tuple[str, str]:
    """Spans the way the chat route and the memory stages emit them; returns the root's ids."""
    with tracer.start_as_current_span(
        "memento.request",
        attributes={"memento.request_id": request_id, "gen_ai.request.model": "echo"},
    ) as root:
        with tracer.start_as_current_span("memento.auth"):
            root.set_attribute("memento.tenant", tenant)
            root.set_attribute("enduser.id", user)
        with tracer.start_as_current_span("memento.retrieve") as retrieve:
            retrieve.set_attribute("memento.memory.ids", ["m1", "m2"])
            retrieve.set_attribute("memento.memory.scores", json_attr({"m1": 0.9, "m2": 0.4}))
        with tracer.start_as_current_span("memento.upstream") as upstream:
            upstream.set_attribute("gen_ai.usage.input_tokens", 12)
            upstream.add_event("first_token", {"memento.ttft_ms": 3.5})
        return span_ids(root)


def traced_write_path(request_id: str, trace_id: str, span_id: str) -> None:
    """The worker's spans: a new trace, linked to the request it learns from."""
    with (
        tracer.start_as_current_span(
            "memento.extract",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            links=request_link(trace_id, span_id, request_id),
            attributes={"memento.request_id": request_id},
        ),
        tracer.start_as_current_span("memento.write") as write,
    ):
        write.set_attribute("memento.memory.ids", ["m3"])


# Fixtures and tests share one event loop: the exporter writes through the loop it was set up on.
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SpanTable]:
    opened = await open_span_store(tmp_path)
    yield opened
    await opened.close()


@pytest.fixture
async def tracing(store: SpanTable) -> AsyncIterator[TracingHandle]:
    handle = setup_tracing(object(), store, otlp_endpoint=None)
    yield handle
    await handle.shutdown()


async def test_request_and_linked_write_path_reach_memory_and_sqlite(
    tracing: TracingHandle, store: SpanTable
) -> None:
    memory = InMemorySpanExporter()
    tracing.add_span_processor(SimpleSpanProcessor(memory))

    trace_id, span_id = traced_request("acme", "req-1", "alice")
    traced_write_path("req-1", trace_id, span_id)

    finished = {s.name: s for s in memory.get_finished_spans()}
    assert set(finished) == {
        "memento.request",
        "memento.auth",
        "memento.retrieve",
        "memento.upstream",
        "memento.extract",
        "memento.write",
    }
    request = finished["memento.request"]
    assert request.attributes is not None
    assert request.attributes["memento.tenant"] == "acme"
    assert finished["memento.auth"].parent is not None
    assert finished["memento.auth"].parent.span_id == request.context.span_id
    extract = finished["memento.extract"]
    assert extract.context.trace_id != request.context.trace_id
    assert [link.context.span_id for link in extract.links] == [request.context.span_id]

    await tracing.flush()
    rows = {row.name: row for row in await store.get_trace("acme", "req-1")}
    assert set(rows) == set(finished)
    assert rows["memento.request"].trace_id == trace_id
    assert rows["memento.retrieve"].attributes["memento.memory.ids"] == ["m1", "m2"]
    assert rows["memento.upstream"].events[0]["attributes"] == {"memento.ttft_ms": 3.5}
    assert rows["memento.write"].user_id == "alice"
    assert rows["memento.extract"].links[0]["trace_id"] == trace_id
    listed = await store.list_traces("acme")
    assert listed[0]["request_id"] == "req-1"
    assert listed[0]["written"] == 1


async def test_export_is_batched_off_the_caller(store: SpanTable) -> None:
    handle = setup_tracing(object(), store, schedule_delay_ms=60_000)
    try:
        traced_request("acme", "req-late", "bob")
        # Ending a span only queues it: the batch processor writes when its batch is due.
        assert await store.get_trace("acme", "req-late") == []
        await handle.flush()
        assert len(await store.get_trace("acme", "req-late")) == 4
    finally:
        await handle.shutdown()


async def test_spans_wait_while_the_store_is_full_and_are_kept_when_it_has_room(
    store: SpanTable,
) -> None:
    health = Health()
    handle = setup_tracing(object(), store, schedule_delay_ms=60_000, health=health)
    writer = store._writer
    (pages,) = writer.execute("PRAGMA page_count").fetchone()
    try:
        writer.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk is full"
        for number in range(20):
            traced_request("acme", f"req-full-{number}", "ann")
        await handle.flush()
        assert await store.get_trace("acme", "req-full-0") == []
        (problem,) = health.problems()
        assert problem.component == TRACES_COMPONENT and "80 spans held" in problem.message

        writer.execute("PRAGMA max_page_count = 1073741823")  # room again
        traced_request("acme", "req-after", "ann")
        await handle.flush()
        for number in range(20):
            assert len(await store.get_trace("acme", f"req-full-{number}")) == 4
        assert len(await store.get_trace("acme", "req-after")) == 4
        assert health.problems() == []
    finally:
        await handle.shutdown()


async def test_held_spans_are_written_once_the_store_has_room_with_no_new_span(
    store: SpanTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica whose /readyz says the spans wait is out of its Service's rotation: no new
    span comes to carry the held ones, so they are tried again on their own."""
    monkeypatch.setattr(tracing_module, "HELD_RETRY_S", 0.05)
    health = Health()
    handle = setup_tracing(object(), store, schedule_delay_ms=60_000, health=health)
    writer = store._writer
    (pages,) = writer.execute("PRAGMA page_count").fetchone()
    try:
        writer.execute(f"PRAGMA max_page_count = {pages}")
        for number in range(20):  # more than the free pages hold
            traced_request("acme", f"req-held-{number}", "ann")
        await handle.flush()
        assert health.problems() != []
        writer.execute("PRAGMA max_page_count = 1073741823")  # room again, and no traffic
        deadline = time.monotonic() + 30
        while health.problems():
            assert time.monotonic() < deadline, "the held spans were never written"
            await asyncio.sleep(0.05)
        for number in range(20):
            assert len(await store.get_trace("acme", f"req-held-{number}")) == 4
    finally:
        await handle.shutdown()


async def test_each_app_gets_only_its_own_spans(tmp_path: Path, store: SpanTable) -> None:
    """Two apps in one process (each on its own event loop) never see each other's spans."""
    here = setup_tracing(object(), store)
    other_store: dict[str, Any] = {}
    done = threading.Event()

    def other_app() -> None:
        async def run() -> None:
            other = await open_span_store(tmp_path / "other")
            handle = setup_tracing(object(), other)
            traced_request("globex", "req-other", "carol")
            await handle.flush()
            other_store["here"] = await other.get_trace("globex", "req-other")
            other_store["mine"] = await other.get_trace("acme", "req-mine")
            await handle.shutdown()
            await other.close()

        asyncio.run(run())
        done.set()

    thread = threading.Thread(target=other_app)
    thread.start()
    traced_request("acme", "req-mine", "dave")
    await asyncio.to_thread(thread.join)
    assert done.is_set()
    await here.flush()

    assert len(other_store["here"]) == 4
    assert other_store["mine"] == []
    assert len(await store.get_trace("acme", "req-mine")) == 4
    assert await store.get_trace("globex", "req-other") == []
    await here.shutdown()


async def test_retention_follows_each_tenants_policy(store: SpanTable) -> None:
    policies = {"acme": TracingPolicy(max_traces=100), "globex": TracingPolicy(retention_days=1)}
    handle = setup_tracing(object(), store, retention=policies.get)
    try:
        for n in range(3):
            traced_request("acme", f"req-a{n}", "u")
            traced_request("globex", f"req-g{n}", "u")
        await handle.flush()

        two_days_later = time.time() + 2 * 86400
        deleted = await handle.prune(now=two_days_later)

        assert deleted == 3 * 4
        assert len(await store.list_traces("acme")) == 3
        assert await store.list_traces("globex") == []
    finally:
        await handle.shutdown()


async def test_otlp_export_reaches_a_collector(store: SpanTable, otlp_collector: Collector) -> None:
    handle = setup_tracing(object(), store, otlp_endpoint=otlp_collector.url)
    try:
        trace_id, span_id = traced_request("acme", "req-otlp", "erin")
        traced_write_path("req-otlp", trace_id, span_id)
        await handle.flush()
    finally:
        await handle.shutdown()

    assert set(otlp_collector.paths) == {"/v1/traces"}
    assert set(otlp_collector.content_types) == {"application/x-protobuf"}
    by_name = {s.name: s for s in otlp_collector.spans}
    assert set(by_name) >= {"memento.request", "memento.upstream", "memento.extract"}
    root = by_name["memento.request"]
    assert root.trace_id == trace_id
    assert root.attributes["memento.request_id"] == "req-otlp"
    assert root.resource["service.name"] == "memento-proxy"
    assert by_name["memento.retrieve"].attributes["memento.memory.ids"] == ["m1", "m2"]
    assert by_name["memento.extract"].links == [(trace_id, span_id)]
    # The same spans were kept locally too.
    assert len(await store.get_trace("acme", "req-otlp")) == 6
