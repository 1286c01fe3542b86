"""Thousands of rows are converted in a worker thread, never on the event loop that serves
requests: a scope's load (records into the scope's columns, those into its copy) and an index
batch (records into index sources, those into index rows, rows into Arrow). A handful stays on
the loop, where a thread hop would cost more than the work. The worker threads pause every
hundred rows, so the event loop gets the interpreter at once when it needs it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import storage.index_schema
from storage import EmbeddedStore
from storage.index_schema import (
    MAKE_WAY,
    ON_LOOP_ROWS,
    YIELD_EVERY,
    YIELD_PAUSE_S,
    yielding,
)
from storage.records import NewMemory, Scope
from storage.sqlite.outbox import IndexOutbox

ANN = Scope("acme", "ann")
MANY = ON_LOOP_ROWS + 100


class Threads:
    """Which threads ran the wrapped conversions, by name."""

    def __init__(self) -> None:
        self.seen: dict[str, set[int]] = {}

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any) -> Any:
            self.seen.setdefault(name, set()).add(threading.get_ident())
            return function(*args)

        return recorded

    def clear(self) -> None:
        self.seen.clear()


@pytest.fixture
def threads(store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch) -> Threads:
    seen = Threads()
    monkeypatch.setattr(
        IndexOutbox, "_index_source", staticmethod(seen.wrap("source", IndexOutbox._index_source))
    )
    monkeypatch.setattr(
        IndexOutbox, "_search_text", staticmethod(seen.wrap("text", IndexOutbox._search_text))
    )
    monkeypatch.setattr(store.index, "index_row", seen.wrap("row", store.index.index_row))
    cache = store.index.vector_cache
    monkeypatch.setattr(cache, "build", seen.wrap("copy", cache.build))
    monkeypatch.setattr(
        storage.index_schema, "arrow_rows", seen.wrap("arrow", storage.index_schema.arrow_rows)
    )
    return seen


def _facts(count: int, topic: str) -> list[NewMemory]:
    return [NewMemory(kind="fact", text=f"Ann wrote note {n} about {topic}.") for n in range(count)]


async def test_a_large_scope_loads_off_the_event_loop(
    store: EmbeddedStore, threads: Threads
) -> None:
    await store.memories.add(ANN, _facts(MANY, "the harbour"))
    await store.index.flushed()
    store.index.vector_cache.clear()  # as a process that has not searched the scope yet
    threads.clear()
    hits = await store.memories.search(ANN, query_text="harbour", embed_query=True, k=5)
    assert hits  # from the index, while the scope loads
    await store.memories.warm(ANN)
    cached = store.index.vector_cache.get("acme", "ann")
    assert cached is not None and len(cached) == MANY
    loop = threading.get_ident()
    assert threads.seen["text"] and loop not in threads.seen["text"]
    assert threads.seen["copy"] and loop not in threads.seen["copy"]


async def test_a_large_index_batch_is_converted_off_the_event_loop(
    store: EmbeddedStore, threads: Threads
) -> None:
    await store.memories.add(ANN, _facts(MANY, "the tide"))
    await store.index.flushed()
    assert await store.index.index.count("acme") == MANY
    loop = threading.get_ident()
    for name in ("source", "row", "arrow"):
        assert threads.seen[name] and loop not in threads.seen[name], name


async def test_a_small_batch_stays_on_the_event_loop(
    store: EmbeddedStore, threads: Threads
) -> None:
    await store.memories.add(ANN, _facts(3, "boats"))
    await store.index.flushed()
    assert await store.index.index.count("acme") == 3
    loop = threading.get_ident()
    assert threads.seen["arrow"] == {loop}
    assert threads.seen["row"] == {loop}


async def test_work_that_makes_way_pauses_in_worker_threads_never_on_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(storage.index_schema.time, "sleep", pauses.append)
    rows = list(range(2 * YIELD_EVERY + 1))
    assert await asyncio.to_thread(lambda: list(yielding(rows))) == rows
    assert pauses.count(YIELD_PAUSE_S) == 0  # work that is waited for does not pause
    making_way = MAKE_WAY.set(True)
    try:
        assert list(yielding(rows)) == rows  # on the loop's thread: no pause
        assert pauses.count(YIELD_PAUSE_S) == 0
        assert await asyncio.to_thread(lambda: list(yielding(rows))) == rows
        assert pauses.count(YIELD_PAUSE_S) == 2
    finally:
        MAKE_WAY.reset(making_way)
