"""LangChain's `ChatOpenAI`, pointed at the proxy by its base URL, gets memory like any client:
one call teaches, a streamed call later carries what it taught."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from langchain_openai import ChatOpenAI

from tests.harness import RunningProxy
from tests.memory.conftest import KEY, memory_block, wait_for_memories
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]


def test_langchain_chat_openai_call_and_stream_through_the_proxy(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    llm = ChatOpenAI(
        model="gpt-4o-mini",
        base_url=proxy.base_url + "/v1",
        api_key=KEY,
        default_headers={"X-Memento-User": "lena"},
        max_retries=0,
    )

    answer = llm.invoke("I live in Lisbon and I prefer tea.")
    assert answer.content == "scripted reply to: I live in Lisbon and I prefer tea."
    assert upstream.last().json["model"] == "gpt-4o-mini"
    assert wait_for_memories(proxy, "lena", 1), "the call taught nothing"

    pieces = [chunk.content for chunk in llm.stream("What should I drink in the morning?")]
    assert "".join(str(p) for p in pieces) == (
        "scripted reply to: What should I drink in the morning?"
    )
    sent = upstream.last().json
    assert sent["stream"] is True
    block = memory_block(sent)
    assert block is not None and "tea" in block
