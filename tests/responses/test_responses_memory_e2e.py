"""Memory through the Responses door: the same read and write paths as chat completions."""

from __future__ import annotations

import re
from collections.abc import Callable

import openai
import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import (
    api,
    client_for,
    memory_block,
    wait_for_memories,
    wait_for_trace,
)
from tests.responses.conftest import NATIVE, TRANSLATED
from tests.scripted_upstream import Reply, ScriptedUpstream


def test_fact_stated_through_responses_is_injected_through_chat_completions(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = responses_proxy()
    client = client_for(proxy)
    client.responses.create(model=TRANSLATED, input="Hi! I am allergic to peanuts.", user="alice")
    memories = wait_for_memories(proxy, "alice", 1)
    assert any("allergic to peanuts" in m["text"] for m in memories)

    raw = client.chat.completions.with_raw_response.create(
        model=TRANSLATED,
        messages=[{"role": "user", "content": "Suggest a snack for my allergy."}],
        user="alice",
    )
    block = memory_block(upstream.last().json)
    assert block is not None and "allergic to peanuts" in block
    assert raw.headers["x-memento-memories"] == "1"


@pytest.mark.parametrize("model", [TRANSLATED, NATIVE])
def test_fact_stated_through_chat_is_injected_into_instructions(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy], model: str
) -> None:
    proxy = responses_proxy()
    client = client_for(proxy)
    client.chat.completions.create(
        model=TRANSLATED,
        messages=[{"role": "user", "content": "Hi! I am allergic to peanuts."}],
        user="alice",
    )
    wait_for_memories(proxy, "alice", 1)

    raw = client.responses.with_raw_response.create(
        model=model,
        instructions="You are a cook.",
        input="Suggest a snack for my allergy.",
        extra_headers={"X-Memento-User": "alice"},
    )
    assert raw.headers["x-memento-memories"] == "1" and raw.headers["x-request-id"]
    sent = upstream.last().json
    if model == NATIVE:  # relayed: the block is at the end of the call's own instructions
        instructions = sent["instructions"]
        assert sent["input"] == "Suggest a snack for my allergy."
    else:  # translated: instructions are the chat call's system message
        assert sent["messages"][1:] == [
            {"role": "user", "content": "Suggest a snack for my allergy."}
        ]
        instructions = sent["messages"][0]["content"]
    own, block = instructions.split("\n\n", 1)
    assert own == "You are a cook."
    assert block.startswith("<memory-") and "allergic to peanuts" in block
    # Fenced as chat completions fence it: its own numbered fence, closed at the very end.
    assert re.fullmatch(r'<memory-(\d{12}) type="reference-data">\n.*</memory-\1>', block, re.S)
    trace = wait_for_trace(
        proxy, raw.headers["x-request-id"], {"memento.request", "memento.inject"}
    )
    spans = {span["name"]: span for span in trace["spans"]}
    assert spans["memento.request"]["attributes"]["memento.api"] == "responses"
    assert spans["memento.inject"]["attributes"]["memento.memory.injected"] == 1

    client.responses.create(model=model, input="Suggest a snack for my allergy.", user="bob")
    assert "<memory-" not in str(upstream.last().json)


@pytest.mark.parametrize("model", [TRANSLATED, NATIVE])
def test_streamed_responses_call_is_learned_from(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy], model: str
) -> None:
    proxy = responses_proxy()
    client = client_for(proxy)
    upstream.script(Reply(content="The Belém tower, the Alfama district and the tram 28."))
    stream = client.responses.create(
        model=model, input="I live in Lisbon. What is good to see there?", user="carol", stream=True
    )
    assert [event.type for event in stream][-1] == "response.completed"
    memories = wait_for_memories(proxy, "carol", 2)
    assert sorted(m["kind"] for m in memories) == ["case", "fact"]
    fact = next(m for m in memories if m["kind"] == "fact")
    assert fact["text"] == "The user lives in Lisbon."


def test_erasing_a_user_erases_their_stored_responses(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = responses_proxy()
    client = client_for(proxy)
    kept = client.responses.create(model=TRANSLATED, input="Remember this chat.", user="dora")
    other = client.responses.create(model=TRANSLATED, input="And this one.", user="eve")
    with api(proxy) as http:
        assert http.delete("/v1/users/dora/memories").status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model=TRANSLATED, input="Go on.", previous_response_id=kept.id, user="dora"
        )
    assert client.responses.retrieve(other.id).id == other.id
