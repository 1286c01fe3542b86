"""The SQLite span store: ownership resolution, tenant scoping, listing and retention."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from storage import open_span_store
from storage.records import SpanRow
from storage.spans import SpanStoreUnavailable, SpanTable
from tests.postgres_server import BOTH_DATABASES

_ids = itertools.count(1)


def span(
    name: str,
    trace_id: str,
    *,
    parent: str | None = None,
    tenant: str = "",
    request_id: str | None = None,
    user: str | None = None,
    start_s: float | None = None,
    attributes: dict[str, object] | None = None,
    links: list[dict[str, object]] | None = None,
    status: str = "unset",
) -> SpanRow:
    start_ns = int((start_s if start_s is not None else time.time()) * 1e9)
    return SpanRow(
        trace_id=trace_id,
        span_id=format(next(_ids), "016x"),
        parent_span_id=parent,
        tenant_id=tenant,
        request_id=request_id,
        user_id=user,
        name=name,
        start_ns=start_ns,
        end_ns=start_ns + 5_000_000,
        status=status,
        attributes=attributes or {},
        events=[],
        links=links or [],
    )


def request_spans(
    trace_id: str, tenant: str, request_id: str, *, user: str = "u1", start_s: float | None = None
) -> list[SpanRow]:
    """A request as the exporter delivers it: children first (no tenant), the root last."""
    root = span(
        "memento.request",
        trace_id,
        tenant=tenant,
        request_id=request_id,
        user=user,
        start_s=start_s,
        attributes={"gen_ai.request.model": "echo", "memento.tenant": tenant},
    )
    children = [
        span("memento.auth", trace_id, parent=root.span_id, start_s=start_s),
        span(
            "memento.inject",
            trace_id,
            parent=root.span_id,
            start_s=start_s,
            attributes={"memento.memory.ids": ["m1", "m2"]},
        ),
    ]
    return [*children, root]


# Fixtures and tests share one event loop: the exporter writes through the loop it was set up on.
# Each test runs on the data folder's traces.db and on a PostgreSQL database.
pytestmark = [pytest.mark.asyncio(loop_scope="session"), BOTH_DATABASES]


@pytest.fixture
async def store(tmp_path: Path, each_database: str | None) -> AsyncIterator[SpanTable]:
    opened = await open_span_store(tmp_path)
    yield opened
    await opened.close()


async def test_children_and_linked_write_path_inherit_the_request_owner(
    store: SpanTable,
) -> None:
    # Write-path span arrives before the request root: it must be claimed once the root lands.
    early_write = span(
        "memento.write",
        "b" * 32,
        attributes={"memento.memory.ids": ["m9"]},
        links=[{"trace_id": "a" * 32, "span_id": "1" * 16, "attributes": {}}],
    )
    await store.write_spans([early_write])
    await store.write_spans(request_spans("a" * 32, "acme", "req-1"))
    # A later write-path root with a link, and its child in the same (new) trace.
    extract = span(
        "memento.extract",
        "c" * 32,
        links=[{"trace_id": "a" * 32, "span_id": "1" * 16, "attributes": {}}],
    )
    child = span("memento.sanitize", "c" * 32, parent=extract.span_id)
    await store.write_spans([child])
    await store.write_spans([extract])

    rows = await store.get_trace("acme", "req-1")
    names = sorted(row.name for row in rows)
    assert names == sorted(
        [
            "memento.request",
            "memento.auth",
            "memento.inject",
            "memento.write",
            "memento.extract",
            "memento.sanitize",
        ]
    )
    assert {row.tenant_id for row in rows} == {"acme"}
    assert {row.user_id for row in rows} == {"u1"}
    assert await store.tenants() == ["acme"]


async def test_another_tenant_sees_nothing(store: SpanTable) -> None:
    await store.write_spans(request_spans("a" * 32, "acme", "req-a"))
    await store.write_spans(request_spans("b" * 32, "globex", "req-b", user="u2"))

    assert await store.get_trace("globex", "req-a") == []
    assert [t["request_id"] for t in await store.list_traces("globex")] == ["req-b"]
    assert [t["request_id"] for t in await store.list_traces("acme")] == ["req-a"]


async def test_list_is_newest_first_filtered_by_user_with_counts(store: SpanTable) -> None:
    base = time.time() - 100
    for n in range(5):
        user = "alice" if n % 2 == 0 else "bob"
        trace_id = format(n + 1, "032x")
        await store.write_spans(
            request_spans(trace_id, "acme", f"req-{n}", user=user, start_s=base + n)
        )

    listed = await store.list_traces("acme", limit=3)
    assert [t["request_id"] for t in listed] == ["req-4", "req-3", "req-2"]
    first = listed[0]
    assert first["spans"] == 3
    assert first["injected"] == 2
    assert first["model"] == "echo"
    assert first["user"] == "alice"
    assert first["duration_ms"] == pytest.approx(5.0)

    alice = await store.list_traces("acme", user_id="alice")
    assert [t["request_id"] for t in alice] == ["req-4", "req-2", "req-0"]


async def test_retention_by_age_and_by_count(store: SpanTable) -> None:
    now = time.time()
    for n in range(6):
        trace_id = format(n + 1, "032x")
        # req-0 and req-1 are ten days old; the rest are recent.
        start = now - 10 * 86400 if n < 2 else now - 60 + n
        await store.write_spans(request_spans(trace_id, "acme", f"req-{n}", start_s=start))
    await store.write_spans(request_spans("f" * 32, "globex", "req-g", start_s=now - 10 * 86400))

    deleted = await store.prune_spans("acme", older_than=now - 7 * 86400, keep_max=2)

    assert deleted == 6 * 3 - 2 * 3
    remaining = [t["request_id"] for t in await store.list_traces("acme")]
    assert remaining == ["req-5", "req-4"]
    assert await store.get_trace("acme", "req-3") == []
    # Another tenant's spans are untouched by acme's retention.
    assert len(await store.get_trace("globex", "req-g")) == 3


async def test_a_users_traces_are_deleted_with_their_write_path_and_no_other(
    store: SpanTable,
) -> None:
    for n in range(3):
        await store.write_spans(request_spans(format(n + 1, "032x"), "acme", f"req-{n}"))
    learned = span(
        "memento.extract",
        "c" * 32,
        links=[{"trace_id": format(1, "032x"), "span_id": "1" * 16, "attributes": {}}],
    )
    await store.write_spans([learned, span("memento.sanitize", "c" * 32, parent=learned.span_id)])
    await store.write_spans(request_spans("e" * 32, "acme", "req-other", user="u2"))
    await store.write_spans(request_spans("f" * 32, "globex", "req-g"))  # u1 of another tenant

    assert await store.delete_user_spans("acme", "u1") == 3 * 3 + 2
    assert await store.list_traces("acme", user_id="u1") == []
    assert await store.get_trace("acme", "req-0") == []
    assert len(await store.get_trace("acme", "req-other")) == 3
    assert len(await store.get_trace("globex", "req-g")) == 3


async def test_the_writer_connects_again_after_the_database_dropped_its_connection(
    store: SpanTable, each_database: str | None
) -> None:
    if each_database is None:
        pytest.skip("a PostgreSQL connection")
    await store.write_spans(request_spans("1" * 32, "acme", "req-1"))
    # What a restart or a failover does to every connection: the server ends it.
    async with await psycopg.AsyncConnection.connect(each_database, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(SpanStoreUnavailable):  # the batch that finds it ended fails whole
        await store.write_spans(request_spans("2" * 32, "acme", "req-2"))
    await store.write_spans(request_spans("2" * 32, "acme", "req-2"))  # and is written again
    assert len(await store.get_trace("acme", "req-2")) == 3
    assert len(await store.get_trace("acme", "req-1")) == 3


async def test_unresolved_spans_are_pruned_by_age(store: SpanTable) -> None:
    old = span("background", "d" * 32, start_s=time.time() - 3600)
    fresh = span("background", "e" * 32)
    await store.write_spans([old, fresh])

    assert await store.prune_unresolved(older_than=time.time() - 60) == 1
    assert await store.tenants() == []


async def test_reopening_keeps_spans(tmp_path: Path, each_database: str | None) -> None:
    first = await open_span_store(tmp_path)
    await first.write_spans(request_spans("a" * 32, "acme", "req-1"))
    await first.close()

    again = await open_span_store(tmp_path)
    try:
        assert len(await again.get_trace("acme", "req-1")) == 3
        # In the folder without a database; in the database, and nothing in the folder, with.
        assert (tmp_path / "traces.db").exists() == (each_database is None)
    finally:
        await again.close()


async def test_a_span_with_a_lone_surrogate_costs_no_other_span(store: SpanTable) -> None:
    """Python text can hold lone surrogates, UTF-8 cannot: that span is repaired, and the batch
    it arrived in (other requests, other tenants) is stored whole."""
    batch = [
        row
        for i in range(10)
        for row in request_spans(format(i + 1, "032x"), "acme", f"req-{i}", user="alice")
    ]
    bad = request_spans("f" * 32, "globex", "req-bad", user="\ud800mallory")
    bad[0].attributes["memento.note"] = "\udfff"
    bad[0].events.append({"name": "e\ud800", "time_ns": 1, "attributes": {"k": "\ud83d"}})
    await store.write_spans([*batch[:15], *bad, *batch[15:]])

    assert len(await store.list_traces("acme")) == 10
    (listed,) = await store.list_traces("globex")
    assert listed["user"] == "\ufffdmallory"
    rows = await store.get_trace("globex", "req-bad")
    assert len(rows) == 3 and {row.user_id for row in rows} == {"\ufffdmallory"}
    auth = next(row for row in rows if row.name == "memento.auth")
    assert auth.attributes["memento.note"] == "\ufffd"
    assert auth.events == [{"name": "e\ufffd", "time_ns": 1, "attributes": {"k": "\ufffd"}}]
    assert json.dumps([row.attributes for row in rows], ensure_ascii=False).encode()
