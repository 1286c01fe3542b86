"""When memory fails, the call still goes through (fail-open) unless the policy is fail-closed."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import (
    client_for,
    fill_retrieval_slots,
    memory_block,
    seed_favourite_drink,
    wait_for_trace,
)
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]

ASK = [{"role": "user", "content": "What is my favourite drink?"}]


def test_store_down_fails_open(
    upstream: ScriptedUpstream,
    memory_proxy: Callable[..., RunningProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = memory_proxy()
    seed_favourite_drink(proxy)
    client = client_for(proxy)
    client.chat.completions.create(model="gpt-4o-mini", messages=ASK, user="lee")
    assert memory_block(upstream.last().json) is not None  # memory works...

    async def disk_failure(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    # ...until reading the records fails (the index, and the vectors in memory, still answer).
    store = proxy.app.state.memory.store
    monkeypatch.setattr(store.memories, "get_many_with_vectors", disk_failure)
    response = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=ASK, user="lee"
    )
    assert response.http_response.status_code == 200
    assert response.parse().choices[0].message.content
    sent = upstream.last().json
    assert memory_block(sent) is None
    assert sent["messages"] == ASK
    assert response.headers["x-memento-memories"] == "0"
    assert response.headers["x-memento-memory-skipped"] == "error"
    trace = wait_for_trace(proxy, response.headers["x-request-id"], {"memento.retrieve"})
    retrieve = next(span for span in trace["spans"] if span["name"] == "memento.retrieve")
    assert retrieve["attributes"]["memento.memory.error"].startswith("memory unavailable")
    assert retrieve["attributes"]["memento.memory.fail_open"] is True
    (event,) = [e for e in retrieve["events"] if e["name"] == "exception"]
    assert event["attributes"]["exception.type"] == "sqlite3.OperationalError"
    assert "disk_failure" in event["attributes"]["exception.stacktrace"]  # a fault: its stack


def test_retrieval_deadline_fails_open(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy(memory={"retrieval": {"deadline_ms": 1}})
    seed_favourite_drink(proxy)
    response = client_for(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=ASK, user="lee"
    )
    assert response.parse().choices[0].message.content
    assert memory_block(upstream.last().json) is None
    assert response.headers["x-memento-memory-skipped"] == "deadline"
    trace = wait_for_trace(proxy, response.headers["x-request-id"], {"memento.retrieve"})
    retrieve = next(span for span in trace["spans"] if span["name"] == "memento.retrieve")
    assert retrieve["attributes"]["memento.memory.error"] == "memory unavailable: deadline exceeded"
    # A deadline is load, not a fault: its exception is recorded without a stack to format.
    (event,) = [e for e in retrieve["events"] if e["name"] == "exception"]
    assert event["attributes"]["exception.type"] == "TimeoutError"
    assert "exception.stacktrace" not in event["attributes"]
    scraped = httpx.get(proxy.base_url + "/metrics", timeout=30).text
    assert 'memento_memory_retrieval_failures_total{reason="deadline"}' in scraped


@pytest.mark.parametrize(
    ("retrieval", "busy"),
    [({"deadline_ms": 1}, False), ({"queue_ms": 50}, True)],
    ids=["deadline", "no-slot"],
)
def test_fail_closed_policy_refuses_the_call(
    upstream: ScriptedUpstream,
    memory_proxy: Callable[..., RunningProxy],
    retrieval: dict[str, int],
    busy: bool,
) -> None:
    proxy = memory_proxy(memory={"fail_closed": True, "retrieval": retrieval})
    seed_favourite_drink(proxy)
    if busy:
        fill_retrieval_slots(proxy)
    received = len(upstream.received)
    with pytest.raises(openai.APIStatusError) as raised:
        client_for(proxy).chat.completions.create(model="gpt-4o-mini", messages=ASK, user="lee")
    assert raised.value.status_code == 503
    assert raised.value.body["code"] == "memory_unavailable"  # type: ignore[index]
    assert "fail-closed" in raised.value.message
    assert len(upstream.received) == received  # nothing went upstream
