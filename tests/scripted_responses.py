"""The scripted upstream's Responses API (`POST /v1/responses`, `/v1/responses/input_tokens`),
for the relay path's tests.

Written from OpenAI's documented shapes, independently of the proxy's own translation, so the
relay is tested against an upstream that speaks the API natively: a response object with a
`message` item (or `function_call` items for a reply's tool calls), or the same streamed as typed
events with `event:` lines and sequence numbers. It keeps no state: `previous_response_id` is
the proxy's business in these tests. input_tokens answers `COUNTED_TOKENS`, a number no offline
count would give.
"""

from __future__ import annotations

import json
import time
from typing import Any

COUNTED_TOKENS = 8642


def _last_user_text(body: dict[str, Any]) -> str:
    value = body.get("input")
    if isinstance(value, str):
        return value
    for item in reversed(value or []):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
    return ""


def response_object(body: dict[str, Any], reply: Any, status: str) -> dict[str, Any]:
    """The response to `body` as scripted by `reply` (a `scripted_upstream.Reply`)."""
    if reply.tool_calls:
        output = [
            {
                "type": "function_call",
                "id": f"fc_native_{i}",
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
                "status": "completed",
            }
            for i, call in enumerate(reply.tool_calls)
        ]
    else:
        text = reply.content or f"native reply to: {_last_user_text(body)}"
        output = [
            {
                "type": "message",
                "id": "msg_native",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    return {
        "id": f"resp_native_{time.monotonic_ns()}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "model": body.get("model"),
        "output": output if status == "completed" else [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "usage": {
            "input_tokens": 5,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 7,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 12,
        },
    }


def stream_events(body: dict[str, Any], reply: Any) -> list[dict[str, Any]]:
    """The typed events of the streamed answer to `body`, numbered."""
    started = response_object(body, reply, "in_progress")
    done = response_object(body, reply, "completed")
    done["id"] = started["id"]
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    for index, item in enumerate(done["output"]):
        events.append({"type": "response.output_item.added", "output_index": index, "item": item})
        if item["type"] == "message":
            text = item["content"][0]["text"]
            for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                events.append(
                    {
                        "type": "response.output_text.delta",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "delta": piece,
                    }
                )
        else:
            events.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item["id"],
                    "output_index": index,
                    "delta": item["arguments"],
                }
            )
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": done})
    return [{**event, "sequence_number": i} for i, event in enumerate(events)]


async def answer(path: str, body: dict[str, Any], reply: Any, send: Any) -> None:
    """Answer `POST /v1/responses` (streamed when the body asks) or its input_tokens."""
    if path == "/responses/input_tokens":
        counted = {"object": "response.input_tokens", "input_tokens": COUNTED_TOKENS}
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(counted).encode()})
        return
    if not body.get("stream"):
        data = json.dumps(response_object(body, reply, "completed")).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})
        return
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for event in stream_events(body, reply):
        payload = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
        await send({"type": "http.response.body", "body": payload, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
