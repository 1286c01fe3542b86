"""The Messages door end to end: the anthropic SDK → the proxy → a scripted upstream that serves
Messages itself (relayed) or chat completions (translated)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import RunningProxy, ServerProcess
from tests.messages.conftest import KEY, LOCAL, NATIVE, PROVIDER_KEY, TRANSLATED, client_for
from tests.scripted_messages import COUNTED_TOKENS
from tests.scripted_upstream import Reply, ScriptedUpstream

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
WEATHER_CALL = {
    "id": "toolu_01",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def test_create_is_relayed_as_it_came_to_an_upstream_serving_messages(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy
) -> None:
    client = client_for(messages_proxy)
    raw = client.messages.with_raw_response.create(
        model=NATIVE,
        max_tokens=64,
        system="You are terse.",
        messages=[{"role": "user", "content": "Hello there"}],
        stop_sequences=["END"],
        extra_headers={"anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024-05-16"},
    )
    message = raw.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text == "scripted reply to: Hello there"
    assert message.stop_reason == "end_turn"
    assert raw.headers["x-request-id"] and raw.headers["x-memento-memories"] == "0"
    received = upstream.last()
    assert received.path == "/v1/messages"
    assert received.json == {
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hello there"}],
        "model": "claude-sonnet-4-5",  # only the model name is replaced
        "stop_sequences": ["END"],
        "system": "You are terse.",
    }
    assert received.headers["x-api-key"] == PROVIDER_KEY  # the server's key, not the client's
    assert "authorization" not in received.headers
    assert received.headers["anthropic-version"] == "2023-06-01"
    assert received.headers["anthropic-beta"] == "tools-2024-05-16"


def test_a_route_without_a_provider_key_sends_none(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy
) -> None:
    client_for(messages_proxy).messages.create(
        model=LOCAL, max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
    )
    received = upstream.last()
    assert received.path == "/v1/messages" and received.json["model"] == "local"
    assert "x-api-key" not in received.headers and "authorization" not in received.headers


def test_create_is_translated_into_a_chat_completion_for_other_upstreams(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy
) -> None:
    client = client_for(messages_proxy)
    raw = client.messages.with_raw_response.create(
        model=TRANSLATED,
        max_tokens=64,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
        stop_sequences=["END"],
        metadata={"user_id": "alice"},
    )
    message = raw.parse()
    assert message.role == "assistant" and message.type == "message"
    assert message.id.startswith("msg_")  # Anthropic's kind of id, not the chat answer's
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text.startswith("scripted reply to: ")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 5 and message.usage.output_tokens == 7
    assert raw.headers["x-request-id"] and raw.headers["x-memento-memories"] == "0"
    sent = upstream.last()
    assert sent.path == "/v1/chat/completions"
    assert sent.json["model"] == "gpt-4o-mini"
    assert sent.json["max_tokens"] == 64 and sent.json["stop"] == ["END"]
    assert [m["role"] for m in sent.json["messages"]] == ["system", "user"]
    assert "You are terse." in json.dumps(sent.json["messages"][0])


def test_a_chat_answer_without_usage_is_translated_with_zero_tokens(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy
) -> None:
    # usage is optional in a chat completion; some OpenAI-compatible servers leave it out.
    message = {"role": "assistant", "content": "Hi."}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice]}
    upstream.script(Reply(raw=json.dumps(answer).encode()))
    reply = client_for(messages_proxy).messages.create(
        model=TRANSLATED, max_tokens=16, messages=[{"role": "user", "content": "Hello"}]
    )
    assert reply.content[0].text == "Hi." and reply.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (0, 0)


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
def test_streamed_tool_use_round_trip(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy, model: str
) -> None:
    client = client_for(messages_proxy)
    upstream.script(Reply(tool_calls=[WEATHER_CALL]), Reply(content="It is sunny in Paris."))
    question = {"role": "user", "content": "What is the weather in Paris?"}
    with client.messages.stream(
        model=model, max_tokens=64, messages=[question], tools=[WEATHER_TOOL]
    ) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    (call,) = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Paris"}

    result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 24 C"}
    turns: list[Any] = [
        question,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [result]},
    ]
    with client.messages.stream(
        model=model, max_tokens=64, messages=turns, tools=[WEATHER_TOOL]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "It is sunny in Paris."
    assert final.stop_reason == "end_turn"
    sent = upstream.last().json
    if model == NATIVE:
        assert sent["messages"][2]["content"][0]["tool_use_id"] == call.id
    else:  # the tool result reached the chat upstream as a tool message for the same call
        tool = next(m for m in sent["messages"] if m["role"] == "tool")
        assert tool == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}
        assistant = next(m for m in sent["messages"] if m["role"] == "assistant")
        assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"


def _events(proxy: RunningProxy, model: str) -> list[str]:
    body = {
        "model": model,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "Hello there"}],
    }
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    with httpx.stream(
        "POST", proxy.base_url + "/v1/messages", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-memento-memories"] == "0" and response.headers["x-request-id"]
        lines = [line for line in response.iter_lines() if line.startswith("event: ")]
    return [line.removeprefix("event: ") for line in lines]


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
def test_streams_carry_anthropics_events_in_order(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy, model: str
) -> None:
    events = _events(messages_proxy, model)
    assert events[:3] == ["message_start", "ping", "content_block_start"]
    with client_for(messages_proxy).messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        assert stream.get_final_message().id.startswith("msg_")
    assert set(events[3:-3]) == {"content_block_delta"}
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_count_tokens_counts_the_clients_request_offline(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy
) -> None:
    client = client_for(messages_proxy)
    short = client.messages.count_tokens(
        model=TRANSLATED, messages=[{"role": "user", "content": "Hello"}]
    )
    longer = client.messages.count_tokens(
        model=TRANSLATED,
        system="You are a careful assistant who answers in French.",
        messages=[{"role": "user", "content": "Hello"}],
        tools=[WEATHER_TOOL],
    )
    assert 0 < short.input_tokens < longer.input_tokens
    assert upstream.received == []  # nothing was asked of the upstream


def test_count_tokens_is_relayed_to_an_upstream_serving_messages(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy
) -> None:
    counted = client_for(messages_proxy).messages.count_tokens(
        model=NATIVE, messages=[{"role": "user", "content": "Hello"}]
    )
    assert counted.input_tokens == COUNTED_TOKENS
    assert upstream.last().path == "/v1/messages/count_tokens"
    assert upstream.last().headers["x-api-key"] == PROVIDER_KEY


def test_the_readmes_offline_quickstart_answers_through_echo(messages_proxy: RunningProxy) -> None:
    client = client_for(messages_proxy)
    message = client.messages.create(
        model="echo",
        max_tokens=256,
        system="You are terse.",
        messages=[{"role": "user", "content": "Hello!"}],
        metadata={"user_id": "alice"},
    )
    assert "last user message: 'Hello!'" in message.content[0].text
    with client.messages.stream(
        model="echo", max_tokens=256, messages=[{"role": "user", "content": "Hello!"}]
    ) as stream:
        assert "last user message: 'Hello!'" in "".join(stream.text_stream)


def test_messages_calls_are_counted_under_their_own_door(messages_proxy: RunningProxy) -> None:
    def served() -> float:
        text = httpx.get(messages_proxy.base_url + "/metrics", timeout=30).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "memento_requests_total"
            and sample.labels.get("api") == "messages"
            and sample.labels.get("status") == "200"
        )

    before = served()
    client_for(messages_proxy).messages.create(
        model=TRANSLATED, max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
    )
    assert served() == before + 1


def test_the_demo_tenant_answers_messages_loading_litellm_on_first_use(tmp_path: Path) -> None:
    """The shipped policies need no litellm at start-up; the first translated Messages call
    loads it (off the event loop) and answers."""
    policies = Path(__file__).resolve().parents[2] / "policies"
    with ServerProcess(policies, tmp_path / "data") as server:
        client = anthropic.Anthropic(
            base_url=server.base_url, api_key="memento-demo-key", max_retries=0
        )
        message = client.messages.create(
            model="echo", max_tokens=64, messages=[{"role": "user", "content": "Hello!"}]
        )
    assert "last user message: 'Hello!'" in message.content[0].text


def test_a_route_relaying_messages_answers_the_other_doors_through_litellm(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy
) -> None:
    # Its api_base is written with its /v1 for the relay; litellm adds /v1/messages itself.
    client = openai.OpenAI(base_url=messages_proxy.base_url + "/v1", api_key=KEY, max_retries=0)
    chat = client.chat.completions.create(
        model=NATIVE, messages=[{"role": "user", "content": "Hi"}]
    )
    response = client.responses.create(model=NATIVE, input="Hello")
    assert [r.path for r in upstream.received] == ["/v1/messages", "/v1/messages"]
    assert chat.choices[0].message.content == "scripted reply to: Hi"
    assert response.output_text == "scripted reply to: Hello"
