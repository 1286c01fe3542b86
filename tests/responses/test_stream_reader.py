"""The Responses door's stream reader: the whole answer from the final event, or, when the stream
is cut short, what its events had delivered, marked as an error (not learned from)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.doors.responses import ResponsesStreamReader
from tests.scripted_responses import stream_events
from tests.scripted_upstream import Reply

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e['type']}\r\ndata: {json.dumps(e)}\r\n\r\n".encode() for e in events)


def read(data: bytes) -> dict[str, Any]:
    reader = ResponsesStreamReader()
    for i in range(len(data)):  # byte by byte: events split anywhere
        reader.feed(data[i : i + 1])
    return reader.result()


@pytest.mark.parametrize("reply", [Reply(content="Hello there"), Reply(tool_calls=[CALL])])
def test_a_whole_stream_reads_as_its_final_response(reply: Reply) -> None:
    answer = read(sse(stream_events({"input": "hi"}, reply)))
    assert "error" not in answer
    message = answer["choices"][0]["message"]
    if reply.tool_calls:
        assert message["tool_calls"] == [CALL] and answer["choices"][0]["finish_reason"] == (
            "tool_calls"
        )
    else:
        assert message["content"] == "Hello there"
    assert answer["usage"]["prompt_tokens"] == 5


def test_a_stream_cut_before_its_final_event_is_an_error_with_what_came() -> None:
    events = stream_events({"input": "hi"}, Reply(content="Hello there"))
    cut = [
        e for e in events if e["type"] not in ("response.completed", "response.output_item.done")
    ]
    answer = read(sse(cut))
    assert answer["error"] == "the stream ended before response.completed"
    assert answer["choices"][0]["message"]["content"] == "Hello there"


def test_an_error_event_is_an_error() -> None:
    events = stream_events({"input": "hi"}, Reply(content="Hello"))[:3]
    events.append({"type": "error", "code": "server_error", "message": "overloaded"})
    assert read(sse(events))["error"] == "overloaded"
