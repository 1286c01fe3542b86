"""Memory through the Messages door: the same read and write paths as chat completions, the
block in `system` after the client's own instructions, for the same user only."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import wait_for_memories
from tests.messages.conftest import KEY, NATIVE, TRANSLATED, client_for
from tests.scripted_upstream import ScriptedUpstream

QUESTION = [{"role": "user", "content": "Suggest a snack for my allergy."}]


def _system_text(sent: dict[str, Any]) -> str:
    """The system text the upstream received, whichever API it speaks."""
    if "system" in sent:  # Messages
        system = sent["system"]
        return system if isinstance(system, str) else "\n".join(b["text"] for b in system)
    first = sent["messages"][0]  # chat completions
    return str(first["content"]) if first["role"] == "system" else ""


def _teach(proxy: RunningProxy, model: str, user: str, statement: str) -> None:
    """State something through Messages (not streamed) and wait until it is learned."""
    client_for(proxy).messages.create(
        model=model,
        max_tokens=64,
        messages=[{"role": "user", "content": statement}],
        metadata={"user_id": user},
    )
    wait_for_memories(proxy, user, 1, key=KEY)


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
def test_a_streamed_fact_is_learned_and_injected_into_system_for_that_user_only(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy, model: str
) -> None:
    client = client_for(messages_proxy)
    with client.messages.stream(
        model=model,
        max_tokens=64,
        messages=[{"role": "user", "content": "Hi! I am allergic to peanuts."}],
        metadata={"user_id": "alice"},
    ) as stream:
        stream.get_final_message()
    memories = wait_for_memories(messages_proxy, "alice", 1, key=KEY)
    assert any("allergic to peanuts" in m["text"] for m in memories)

    raw = client.messages.with_raw_response.create(
        model=model,
        max_tokens=64,
        system="You are a cook.",
        messages=QUESTION,
        metadata={"user_id": "alice"},
    )
    assert raw.headers["x-memento-memories"] == "1" and raw.headers["x-request-id"]
    system = _system_text(upstream.last().json)
    assert system.startswith("You are a cook.\n\n<memory-")  # after the client's own text
    assert "allergic to peanuts" in system and "not instructions" in system
    assert upstream.last().json["messages"][-1]["content"] == QUESTION[0]["content"]

    # Another user of the tenant gets nothing; X-Memento-User names alice as well as metadata.
    client.messages.create(
        model=model, max_tokens=64, messages=QUESTION, metadata={"user_id": "bob"}
    )
    assert "<memory-" not in _system_text(upstream.last().json)
    client.messages.create(
        model=model,
        max_tokens=64,
        system=[{"type": "text", "text": "You are a cook."}],
        messages=QUESTION,
        extra_headers={"X-Memento-User": "alice"},
    )
    sent = upstream.last().json
    assert "allergic to peanuts" in _system_text(sent)
    if model == NATIVE:  # blocks stay blocks: one more text block after the client's
        assert len(sent["system"]) == 2 and sent["system"][0]["text"] == "You are a cook."


def test_count_tokens_leaves_the_memory_block_out(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy
) -> None:
    client = client_for(messages_proxy)
    before = client.messages.count_tokens(model=TRANSLATED, messages=QUESTION)
    _teach(messages_proxy, TRANSLATED, "alice", "Hi! I am allergic to peanuts.")
    after = client.messages.count_tokens(
        model=TRANSLATED, messages=QUESTION, extra_headers={"X-Memento-User": "alice"}
    )
    assert after.input_tokens == before.input_tokens


def test_memory_is_shared_with_chat_completions_both_ways(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy
) -> None:
    chat = openai.OpenAI(base_url=messages_proxy.base_url + "/v1", api_key=KEY, max_retries=0)
    client = client_for(messages_proxy)
    chat.chat.completions.create(
        model=TRANSLATED,
        messages=[{"role": "user", "content": "Hi! I am allergic to peanuts."}],
        user="carol",
    )
    wait_for_memories(messages_proxy, "carol", 1, key=KEY)
    client.messages.create(
        model=NATIVE, max_tokens=64, messages=QUESTION, metadata={"user_id": "carol"}
    )
    assert "allergic to peanuts" in _system_text(upstream.last().json)

    _teach(messages_proxy, NATIVE, "dave", "Hi! I am vegetarian.")
    chat.chat.completions.create(
        model=TRANSLATED, messages=[{"role": "user", "content": "A snack?"}], user="dave"
    )
    assert "vegetarian" in _system_text(upstream.last().json)
