"""A chat stream told as Responses events: items open and close in order, numbered."""

from __future__ import annotations

import json
from typing import Any

from proxy.upstreams.responses_events import ResponseEvents
from proxy.upstreams.responses_translate import ResponseDraft


def chat_sse(deltas: list[dict[str, Any]], finish: str) -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return data + b"data: [DONE]\n\n"


def events_of(data: bytes) -> list[dict[str, Any]]:
    writer = ResponseEvents(ResponseDraft({"model": "m", "instructions": "Be brief."}))
    out = writer.start() + writer.feed(data) + writer.finish()
    return [json.loads(line[5:]) for line in out.split(b"\n") if line.startswith(b"data:")]


def test_text_then_a_tool_call_close_the_message_before_the_call() -> None:
    call = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a"'}}
    more = {"index": 0, "function": {"arguments": ": 1}"}}
    events = events_of(
        chat_sse(
            [
                {"content": "Let me "},
                {"content": "check."},
                {"tool_calls": [call]},
                {"tool_calls": [more]},
            ],
            "tool_calls",
        )
    )
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    message, function_call = final["output"]
    assert message["content"][0]["text"] == "Let me check."
    assert function_call["arguments"] == '{"a": 1}' and function_call["call_id"] == "call_1"
    assert final["instructions"] == "Be brief." and final["status"] == "completed"


def test_running_out_of_tokens_ends_incomplete() -> None:
    events = events_of(chat_sse([{"content": "Once upon"}], "length"))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_chat_stream_without_done_ends_with_an_error_event() -> None:
    data = chat_sse([{"content": "Once upon"}], "stop").replace(b"data: [DONE]\n\n", b"")
    events = events_of(data)
    assert events[-1]["type"] == "error"
    assert "ended before [DONE]" in events[-1]["message"]
