"""Read your writes: a user's next call sees what the previous call taught, waiting (boundedly)
for that user's queued exchange, never for another user's; the trace and a header say so."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.memory.exchange_job import EXCHANGE_JOB
from proxy.memory.warmup import shared_embedder
from storage import open_store
from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for, memory_block, wait_for_trace
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import Reply, ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]


def extraction(fact: str) -> Reply:
    """The extraction model's answer: one fact, quoted verbatim from the user's turn."""
    memories = [{"kind": "fact", "text": f"The user said: {fact}", "evidence": fact}]
    return Reply(content=json.dumps({"memories": memories, "case": None}))


def with_extractor(upstream: ScriptedUpstream) -> dict[str, dict[str, Any]]:
    return {"extractor": {"model": "openai/extractor-model", "api_base": upstream.url}}


def chat(proxy: RunningProxy, user: str, text: str, model: str = "echo") -> httpx.Response:
    """One chat call through the official SDK; its raw HTTP response (headers and body)."""
    raw = client_for(proxy).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], user=user
    )
    return raw.http_response


def retrieve_span(proxy: RunningProxy, request_id: str) -> dict[str, Any]:
    trace = wait_for_trace(proxy, request_id, {"memento.retrieve"})
    span: dict[str, Any] = next(s for s in trace["spans"] if s["name"] == "memento.retrieve")
    return span["attributes"]


def last_chat_request(upstream: ScriptedUpstream) -> dict[str, Any]:
    """The body of the last chat call the upstream received. Not `upstream.last()`: a call's
    exchange is queued before its answer returns, so a free worker may already be asking the
    extraction model about it by the time the test looks."""
    chats = [r.json for r in upstream.received if r.json.get("model") != "extractor-model"]
    return chats[-1]


def wait_for_extraction_request(upstream: ScriptedUpstream, count: int) -> None:
    """Until the extraction model has been asked `count` times (the worker has begun)."""
    deadline = time.monotonic() + 30
    while sum(r.json.get("model") == "extractor-model" for r in upstream.received) < count:
        assert time.monotonic() < deadline, "the worker never asked the extraction model"
        time.sleep(0.02)


def test_back_to_back_calls_see_the_previous_calls_memory(
    memory_proxy: Callable[..., RunningProxy],
) -> None:
    # A patient wait keeps the test about behaviour on two busy cores (speed: docs/memory.md).
    proxy = memory_proxy(memory={"retrieval": {"wait_for_writes_ms": 20000}})
    for user in ("alice", "bruno", "chen"):
        chat(proxy, user, "I live in Lisbon and I prefer tea.")
        second = chat(proxy, user, "What should I drink in the morning?")
        assert int(second.headers["x-memento-memories"]) >= 1, user
        assert "The user prefers tea." in second.json()["choices"][0]["message"]["content"]
        assert "x-memento-unlearned-writes" not in second.headers


def test_the_next_call_waits_for_a_slow_extraction(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy(
        memory={"extraction": {"model": "extractor"}, "retrieval": {"wait_for_writes_ms": 20000}},
        extra_models=with_extractor(upstream),
    )
    fact = "My cat is called Pixel."
    # The chat answer, then an extraction that takes a while, then the second chat answer.
    upstream.script(Reply(), Reply(content=extraction(fact).content, delay_s=2), Reply())
    chat(proxy, "dana", fact, model="gpt-4o-mini")
    second = chat(proxy, "dana", "What is my cat called?", model="gpt-4o-mini")

    block = memory_block(last_chat_request(upstream))
    assert block is not None and "Pixel" in block
    assert second.headers["x-memento-memories"] == "1"
    attributes = retrieve_span(proxy, second.headers["x-request-id"])
    assert attributes["memento.memory.pending_writes"] == 1
    assert attributes["memento.memory.wait_timed_out"] is False
    assert attributes["memento.memory.unlearned_writes"] == 0


def test_the_wait_is_bounded_when_the_write_path_hangs(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy(
        memory={"extraction": {"model": "extractor"}, "retrieval": {"wait_for_writes_ms": 300}},
        extra_models=with_extractor(upstream),
    )
    fact = "My cat is called Pixel."
    upstream.script(Reply(), Reply(content=extraction(fact).content, hold=True), Reply())
    chat(proxy, "erin", fact, model="gpt-4o-mini")
    wait_for_extraction_request(upstream, 1)
    second = chat(proxy, "erin", "What is my cat called?", model="gpt-4o-mini")

    # Answered without the memory while the extraction still hangs, and it says so.
    assert second.status_code == 200
    assert second.headers["x-memento-memories"] == "0"
    assert second.headers["x-memento-unlearned-writes"] == "1"
    with api(proxy) as http:
        assert http.get("/v1/memories", params={"user": "erin"}).json()["data"] == []
    attributes = retrieve_span(proxy, second.headers["x-request-id"])
    assert attributes["memento.memory.pending_writes"] == 1
    assert attributes["memento.memory.wait_timed_out"] is True
    assert attributes["memento.memory.unlearned_writes"] == 1
    assert attributes["memento.memory.waited_ms"] > 0


def test_a_conversation_that_carries_the_last_answer_does_not_wait_for_it(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    # A chat app or an agent loop sends the conversation so far: the exchange being learned is
    # in the call's own context, so the call goes on at once even while its learning hangs.
    proxy = memory_proxy(
        memory={"extraction": {"model": "extractor"}, "retrieval": {"wait_for_writes_ms": 20000}},
        extra_models=with_extractor(upstream),
    )
    fact = "My cat is called Pixel."
    upstream.script(
        Reply(content="What a lovely name."),
        Reply(content=extraction(fact).content, hold=True),
        Reply(),
    )
    chat(proxy, "ivo", fact, model="gpt-4o-mini")
    wait_for_extraction_request(upstream, 1)
    raw = client_for(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "user", "content": fact},
            {"role": "assistant", "content": "What a lovely name."},
            {"role": "user", "content": "What should I feed him?"},
        ],
        user="ivo",
    )
    second = raw.http_response
    assert second.status_code == 200
    assert "x-memento-unlearned-writes" not in second.headers
    attributes = retrieve_span(proxy, second.headers["x-request-id"])
    assert attributes["memento.memory.pending_writes"] == 0


def test_another_users_pending_write_does_not_hold_this_user_up(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy(
        memory={"extraction": {"model": "extractor"}, "retrieval": {"wait_for_writes_ms": 20000}},
        extra_models=with_extractor(upstream),
    )
    slow, quick = "My cat is called Pixel.", "My dog is called Rex."
    upstream.script(Reply(), Reply(content=extraction(slow).content, hold=True))
    chat(proxy, "fern", slow, model="gpt-4o-mini")
    wait_for_extraction_request(upstream, 1)  # fern's exchange is now stuck in the worker

    upstream.script(Reply(), extraction(quick), Reply())
    chat(proxy, "gus", quick, model="gpt-4o-mini")
    second = chat(proxy, "gus", "What is my dog called?", model="gpt-4o-mini")

    block = memory_block(last_chat_request(upstream))
    assert block is not None and "Rex" in block and "Pixel" not in block
    attributes = retrieve_span(proxy, second.headers["x-request-id"])
    # At most gus's own exchange (a free worker may have learned it already), never fern's.
    assert attributes["memento.memory.pending_writes"] <= 1
    assert attributes.get("memento.memory.wait_timed_out", False) is False
    with api(proxy) as http:  # fern's exchange is still being learned: gus did not wait for it
        assert http.get("/v1/memories", params={"user": "fern"}).json()["data"] == []


def test_a_waiting_user_is_served_ahead_of_a_long_queue(
    tmp_path: Path, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """500 other users' exchanges wait in the queue (from before a restart); a user's own
    exchange is learned ahead of them, so their next call need not wait for all 500."""
    backlog = 500

    async def fill_queue() -> None:
        store = await open_store(tmp_path / "data", await shared_embedder("local"))  # the backend
        try:
            for number in range(backlog):
                turn = {"role": "user", "content": f"I am user number {number}."}
                payload = {
                    "request_id": f"req_backlog_{number}",
                    "user_id": f"user-{number}",
                    "messages": [turn],
                    "response": {"choices": [{"message": {"role": "assistant", "content": "ok"}}]},
                }
                await store.queue.enqueue("acme", EXCHANGE_JOB, payload)
        finally:
            await store.close()

    asyncio.run(fill_queue())
    proxy = memory_proxy(memory={"retrieval": {"wait_for_writes_ms": 30000}})
    chat(proxy, "hana", "I live in Lisbon and I prefer tea.")
    second = chat(proxy, "hana", "What should I drink in the morning?")

    assert int(second.headers["x-memento-memories"]) >= 1
    with api(proxy) as http:  # most of the backlog is still queued: hana did not wait behind it
        queued = http.get("/v1/memories/jobs", params={"state": "queued", "limit": 100}).json()
    assert len(queued["data"]) >= 50, queued


def test_an_exchange_another_serving_process_queued_is_waited_for(
    tmp_path: Path, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """With several serving processes (`serve --processes`), the user's previous call may have
    been answered, and its exchange queued, by another one: the next call finds it in the queue
    and waits for it as for its own, unless the call's messages carry that exchange's answer."""
    proxy = memory_proxy(
        memory={"retrieval": {"wait_for_writes_ms": 500}}, processes=2, memory_workers=0
    )
    answer = "Noted: you drink green tea."

    async def queue_from_another_process() -> None:
        store = await open_store(tmp_path / "data", await shared_embedder("local"))
        try:
            payload = {
                "request_id": "req_elsewhere",
                "user_id": "ines",
                "messages": [{"role": "user", "content": "I drink green tea."}],
                "response": {"choices": [{"message": {"role": "assistant", "content": answer}}]},
            }
            await store.queue.enqueue("acme", EXCHANGE_JOB, payload)
        finally:
            await store.close()

    asyncio.run(queue_from_another_process())

    def call(*messages: dict[str, str]) -> httpx.Response:
        # Read mode: these calls queue no exchange of their own to wait for.
        return (
            client_for(proxy)
            .chat.completions.with_raw_response.create(
                model="echo",
                messages=list(messages),  # type: ignore[arg-type]
                user="ines",
                extra_headers={"x-memento-mode": "read"},
            )
            .http_response
        )

    fresh = call({"role": "user", "content": "What do I drink?"})
    assert fresh.headers["x-memento-unlearned-writes"] == "1"  # nobody here learns it
    attributes = retrieve_span(proxy, fresh.headers["x-request-id"])
    assert attributes["memento.memory.pending_writes"] == 1
    assert attributes["memento.memory.waited_ms"] >= 400

    in_context = call(
        {"role": "user", "content": "I drink green tea."},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And in the evening?"},
    )
    assert "x-memento-unlearned-writes" not in in_context.headers
