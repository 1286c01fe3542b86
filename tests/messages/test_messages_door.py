"""The Messages door as the memory stages read it: its conversation, where the block goes, and
its answers (whole or streamed) as chat completions."""

from __future__ import annotations

import json
from typing import Any

from proxy.doors.messages import MESSAGES
from tests.scripted_messages import events, message
from tests.scripted_upstream import Reply

CALL = {
    "id": "toolu_01",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def test_the_conversation_reads_system_text_tool_use_and_tool_results() -> None:
    body = {
        "system": [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Be kind."}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "…", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_01", "name": "w", "input": {"c": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Here:"},
                    {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": [{"type": "text", "text": "sunny"}],
                    },
                ],
            },
        ],
    }
    assert MESSAGES.conversation(body) == [
        {"role": "system", "content": "Be terse.\nBe kind."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_01",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"c":1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01", "content": "sunny"},
        {"role": "user", "content": "Here:"},
    ]


def test_the_block_goes_after_the_clients_system_text() -> None:
    turns = [{"role": "user", "content": "Hi"}]
    assert MESSAGES.with_block({"messages": turns}, "B")["system"] == "B"
    assert MESSAGES.with_block({"system": "S", "messages": turns}, "B")["system"] == "S\n\nB"
    blocks = [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}]
    body = {"system": blocks, "messages": turns}
    assert MESSAGES.with_block(body, "B")["system"] == [*blocks, {"type": "text", "text": "B"}]
    assert body["system"] == blocks  # the client's body is left as it came
    assert MESSAGES.requested_output_tokens({"max_tokens": 99}) == 99


def _streamed(frames: list[dict[str, Any]], split: int = 7) -> dict[str, Any]:
    reader = MESSAGES.stream_reader()
    data = "".join(f"event: {f['type']}\ndata: {json.dumps(f)}\n\n" for f in frames).encode()
    for i in range(0, len(data), split):  # events cut anywhere, as the network cuts them
        reader.feed(data[i : i + split])
    return reader.result()


def _parsed(choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Choices with their tool-call arguments parsed (a stream keeps the upstream's spacing)."""
    for choice in choices:
        for call in choice["message"].get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return choices


def test_whole_and_streamed_answers_read_as_the_same_chat_completion() -> None:
    body = {"model": "claude", "messages": [{"role": "user", "content": "Hi"}]}
    for reply in (Reply(content="Hello there, friend."), Reply(tool_calls=[CALL])):
        whole = MESSAGES.chat_answer(message(body, reply))
        streamed = _streamed(events(body, reply))
        assert "error" not in streamed
        assert _parsed(streamed["choices"]) == _parsed(whole["choices"])
    text = MESSAGES.chat_answer(message(body, Reply(content="Hello there, friend.")))
    assert text["choices"][0]["message"]["content"] == "Hello there, friend."
    assert text["choices"][0]["finish_reason"] == "stop"
    call = MESSAGES.chat_answer(message(body, Reply(tool_calls=[CALL])))
    assert call["choices"][0]["finish_reason"] == "tool_calls"
    arguments = call["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"city": "Paris"}


def test_a_stream_with_an_error_or_without_message_stop_is_not_an_answer() -> None:
    body = {"model": "claude", "messages": [{"role": "user", "content": "Hi"}]}
    frames = events(body, Reply(content="Hello"))
    assert _streamed(frames[:-1])["error"] == "the stream ended before message_stop"
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert _streamed([*frames[:3], error])["error"] == "Overloaded"
