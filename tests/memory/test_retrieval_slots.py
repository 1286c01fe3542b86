"""Retrieval slots: a busy proxy queues retrievals in arrival order instead of running them all
at once, and a call that waits past the policy's queue time goes on without memory, saying so."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from proxy.memory.read_path import NoSlot, RetrievalSlots
from tests.harness import RunningProxy
from tests.memory.conftest import (
    client_for,
    fill_retrieval_slots,
    memory_block,
    seed_favourite_drink,
    wait_for_trace,
)
from tests.scripted_upstream import ScriptedUpstream

ASK = [{"role": "user", "content": "What is my favourite drink?"}]


async def test_slots_are_taken_in_arrival_order() -> None:
    slots = RetrievalSlots(1)
    order: list[int] = []
    release = asyncio.Event()

    async def retrieval(number: int) -> None:
        async with slots.held(5):
            order.append(number)
            if number == 0:
                await release.wait()

    first = asyncio.create_task(retrieval(0))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(retrieval(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0)
    assert slots.waiting == 3
    release.set()
    await asyncio.gather(first, *queued)
    assert order == [0, 1, 2, 3]
    assert slots.waiting == 0


async def test_a_wait_past_the_queue_time_gives_up_and_frees_nothing() -> None:
    slots = RetrievalSlots(1)
    async with slots.held(5):
        with pytest.raises(NoSlot):
            async with slots.held(0.01):
                pytest.fail("the slot was held")
        assert slots.waiting == 0  # the waiter that gave up left the queue
    async with slots.held(0.01) as waited_ms:  # the held slot came back
        assert waited_ms >= 0


async def test_a_cancelled_retrieval_gives_its_slot_back() -> None:
    slots = RetrievalSlots(1)
    entered = asyncio.Event()

    async def stuck() -> None:
        async with slots.held(5):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stuck())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with slots.held(0.01):
        pass


def test_slots_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetrievalSlots(0)


def test_queued_calls_all_get_their_memories(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy(memory={"retrieval": {"queue_ms": 30_000}}, retrieval_slots=1)
    seed_favourite_drink(proxy)
    client = client_for(proxy)

    def call(number: int) -> tuple[str, str]:
        asked = [{"role": "user", "content": f"What is my favourite drink? ({number})"}]
        response = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=asked, user="lee"
        )
        return response.headers["x-memento-memories"], response.headers["x-request-id"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(call, range(8)))
    assert [count for count, _ in answers] == ["1"] * 8
    assert all(memory_block(request.json) for request in upstream.received[-8:])
    trace = wait_for_trace(proxy, answers[-1][1], {"memento.retrieve"})
    retrieve = next(span for span in trace["spans"] if span["name"] == "memento.retrieve")
    assert retrieve["attributes"]["memento.retrieve.queued_ms"] >= 0
    assert "memento.memory.error" not in retrieve["attributes"]


def test_no_slot_within_the_queue_time_goes_on_without_memory(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy(memory={"retrieval": {"queue_ms": 50}})
    seed_favourite_drink(proxy)
    fill_retrieval_slots(proxy)
    response = client_for(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=ASK, user="lee"
    )
    assert response.http_response.status_code == 200
    assert response.parse().choices[0].message.content
    assert memory_block(upstream.last().json) is None
    assert response.headers["x-memento-memories"] == "0"
    assert response.headers["x-memento-memory-skipped"] == "busy"
    trace = wait_for_trace(proxy, response.headers["x-request-id"], {"memento.retrieve"})
    retrieve = next(span for span in trace["spans"] if span["name"] == "memento.retrieve")
    assert retrieve["attributes"]["memento.memory.error"] == (
        "memory unavailable: no retrieval slot free within the queue time"
    )
    scraped = httpx.get(proxy.base_url + "/metrics", timeout=30).text
    assert 'memento_memory_retrieval_failures_total{reason="busy"}' in scraped


def test_retrieval_slots_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.settings import Settings

    monkeypatch.setenv("MEMENTO_RETRIEVAL_SLOTS", "0")
    with pytest.raises(ValueError, match="MEMENTO_RETRIEVAL_SLOTS must be at least 1"):
        Settings.from_env()
    monkeypatch.setenv("MEMENTO_RETRIEVAL_SLOTS", "3")
    assert Settings.from_env().retrieval_slots == 3


def test_serving_processes_share_the_retrieval_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    # The slots bound what the machine's cores run within the deadline: two processes with
    # eight each missed it for 1-2 % of calls at 32 concurrent calls, four each for none.
    from proxy.settings import Settings

    monkeypatch.setenv("MEMENTO_PROCESSES", "2")
    assert Settings.from_env().retrieval_slots_per_process == 4
    monkeypatch.setenv("MEMENTO_PROCESSES", "3")
    assert Settings.from_env().retrieval_slots_per_process == 3  # rounded up
    monkeypatch.setenv("MEMENTO_PROCESSES", "1")
    assert Settings.from_env().retrieval_slots_per_process == 8
