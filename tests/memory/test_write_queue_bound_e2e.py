"""`memory.write_queue`: an exchange is shed only when the tenant's queue is over its bound
now, never on a reading taken before the queue drained (or before its oldest job aged)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai

from tests.harness import RunningProxy
from tests.memory.conftest import client_for, wait_for_memories, wait_for_trace


def say(proxy: RunningProxy, user: str, text: str) -> Any:
    """One answered call as `user`; the raw response (its headers carry the request id)."""
    client: openai.OpenAI = client_for(proxy)
    return client.chat.completions.with_raw_response.create(
        model="echo",
        messages=[{"role": "user", "content": text}],  # type: ignore[list-item]
        user=user,
    )


def queue_depth(proxy: RunningProxy) -> int:
    depth: int = httpx.get(proxy.base_url + "/readyz", timeout=30).json()["write_queue"]["depth"]
    return depth


def wait_for_empty_queue(proxy: RunningProxy, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while queue_depth(proxy):
        assert time.monotonic() < deadline, "the write queue did not drain"
        time.sleep(0.05)


def shed_reason(proxy: RunningProxy, response: Any) -> object:
    """The call's `memento.memory.exchange_shed` (None when its exchange was queued)."""
    request_id = response.headers["x-request-id"]
    trace = wait_for_trace(proxy, request_id, {"memento.request"})
    (root,) = [span for span in trace["spans"] if span["name"] == "memento.request"]
    return root["attributes"].get("memento.memory.exchange_shed")


def test_a_call_after_the_queue_drained_is_learned(
    memory_proxy: Callable[..., RunningProxy],
) -> None:
    """`max_depth: 1` and workers learning: each call finds the queue empty, so none is shed,
    although the count last read (with the previous call's job in it) is at the bound."""
    proxy = memory_proxy(memory={"write_queue": {"max_depth": 1}})
    sayings = ["I live in Minsk.", "I prefer juice.", "I work at Yandex."]
    for number, text in enumerate(sayings, start=1):
        wait_for_empty_queue(proxy)
        assert shed_reason(proxy, say(proxy, "mira", text)) is None, text
        assert len(wait_for_memories(proxy, "mira", number)) == number, text


def test_the_bound_sheds_what_is_really_over_it(
    memory_proxy: Callable[..., RunningProxy],
) -> None:
    """Nothing learns: the first exchange waits. Past `max_age_s`, the next call is shed
    (`age`), though no read since that job was queued had seen it."""
    proxy = memory_proxy(memory={"write_queue": {"max_age_s": 1}}, memory_workers=0)
    assert shed_reason(proxy, say(proxy, "noor", "I live in Oslo.")) is None
    assert queue_depth(proxy) == 1
    time.sleep(1.5)  # the waiting job ages past the bound
    assert shed_reason(proxy, say(proxy, "noor", "I prefer tea.")) == "age"
    assert shed_reason(proxy, say(proxy, "noor", "I work at Nokia.")) == "age"
    assert queue_depth(proxy) == 1


def test_a_full_queue_sheds_by_depth(memory_proxy: Callable[..., RunningProxy]) -> None:
    """Nothing learns and `max_depth: 1`: the second exchange is shed, confirmed by a read."""
    proxy = memory_proxy(memory={"write_queue": {"max_depth": 1}}, memory_workers=0)
    assert shed_reason(proxy, say(proxy, "omar", "I live in Riga.")) is None
    assert shed_reason(proxy, say(proxy, "omar", "I prefer milk.")) == "depth"
    assert queue_depth(proxy) == 1
