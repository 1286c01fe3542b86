"""The scripted upstream's Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`),
for the relay path of the Messages door.

It answers a `Reply` as Anthropic would: text (by default "scripted reply to: <last user
text>") or `tool_use` blocks (from the reply's chat-style `tool_calls`), whole or as Anthropic's
server-sent events, in order (`message_start`, `ping`, `content_block_start`/`delta`/`stop`,
`message_delta`, `message_stop`). `cut_after` drops the connection after that many events.
count_tokens answers `COUNTED_TOKENS`, a number no offline count would give.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.scripted_upstream import Reply

COUNTED_TOKENS = 4321


def _last_user_text(body: dict[str, Any]) -> str:
    for turn in reversed(body.get("messages") or []):
        if isinstance(turn, dict) and turn.get("role") == "user":
            content = turn.get("content")
            if isinstance(content, str):
                return content
            texts = [b.get("text", "") for b in content or [] if b.get("type") == "text"]
            return "\n".join(texts) or json.dumps(content)
    return ""


def _blocks(body: dict[str, Any], reply: Reply) -> list[dict[str, Any]]:
    if reply.tool_calls:
        return [
            {
                "type": "tool_use",
                "id": call["id"],
                "name": call["function"]["name"],
                "input": json.loads(call["function"]["arguments"] or "{}"),
            }
            for call in reply.tool_calls
        ]
    text = reply.content if reply.content is not None else _last_user_text(body)
    if reply.content is None:
        text = f"scripted reply to: {text}"
    return [{"type": "text", "text": text}]


def _stop_reason(reply: Reply) -> str:
    return reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn")


def message(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """The whole answer, as Anthropic's message."""
    return {
        "id": "msg_scripted",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": _blocks(body, reply),
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 7},
    }


def events(body: dict[str, Any], reply: Reply) -> list[dict[str, Any]]:
    """The answer as Anthropic's stream events, in order."""
    start = {**message(body, reply), "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": 5, "output_tokens": 0}
    sent: list[dict[str, Any]] = [{"type": "message_start", "message": start}, {"type": "ping"}]
    for index, block in enumerate(_blocks(body, reply)):
        if block["type"] == "text":
            opened: dict[str, Any] = {"type": "text", "text": ""}
            text = block["text"]
            size = max(1, -(-len(text) // max(1, reply.chunk_count)))
            pieces = [text[i : i + size] for i in range(0, len(text), size)]
            deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
        else:
            opened = {**block, "input": {}}
            arguments = json.dumps(block["input"])
            half = len(arguments) // 2
            deltas = [
                {"type": "input_json_delta", "partial_json": part}
                for part in (arguments[:half], arguments[half:])
            ]
        sent.append({"type": "content_block_start", "index": index, "content_block": opened})
        sent += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        sent.append({"type": "content_block_stop", "index": index})
    sent.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
            "usage": {"output_tokens": 7},
        }
    )
    sent.append({"type": "message_stop"})
    return sent


async def answer(path: str, body: dict[str, Any], reply: Reply, send: Any) -> None:
    """Answer a Messages API request on `path` (`/messages` or `/messages/count_tokens`)."""
    if path == "/messages/count_tokens":
        await _send(send, 200, "application/json", [json.dumps({"input_tokens": COUNTED_TOKENS})])
    elif body.get("stream"):
        frames = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events(body, reply)]
        await _send(send, 200, "text/event-stream", frames, reply.cut_after)
    else:
        await _send(send, 200, "application/json", [json.dumps(message(body, reply))])


async def _send(
    send: Any, status: int, content_type: str, parts: list[str], cut_after: int | None = None
) -> None:
    headers = [(b"content-type", content_type.encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for i, part in enumerate(parts):
        await send({"type": "http.response.body", "body": part.encode(), "more_body": True})
        if cut_after is not None and i + 1 >= cut_after:
            raise ConnectionAbortedError("scripted cut mid-stream")
    await send({"type": "http.response.body", "body": b"", "more_body": False})
