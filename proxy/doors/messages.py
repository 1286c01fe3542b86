"""The Messages door: Anthropic's `/v1/messages`, read as the chat messages the stages speak.

The conversation is `system` (a string or text blocks) as a system message, then each turn of
`messages`: text blocks are its text, an assistant's `tool_use` blocks its tool calls, a user's
`tool_result` blocks tool messages (placed before the rest of the turn, as Anthropic requires them
first); images, documents and thinking blocks carry no text. The memory block goes into `system`,
after the client's own instructions: a string stays a string, a list of blocks gets one more
text block. Answers, whole or streamed, read as a chat.completion: text blocks as the content,
`tool_use` blocks as tool calls, `stop_reason` as the finish reason.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.messages import content_text
from proxy.streaming import EventData

# Anthropic's stop reasons as chat completions' finish reasons.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
MESSAGE_STOP = b"event: message_stop"


def blocks_text(content: Any) -> str:
    """The text of a Messages `content` (or `system`): the string, or its text blocks joined."""
    return content_text(content)


def _tool_call(block: dict[str, Any], arguments: str | None = None) -> dict[str, Any]:
    if arguments is None:
        arguments = json.dumps(block.get("input") or {}, separators=(",", ":"))
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name") or "", "arguments": arguments},
    }


def _turn(message: dict[str, Any]) -> list[dict[str, Any]]:
    """One Messages turn as chat messages: tool results first, then the turn's text and calls."""
    role, content = message.get("role"), message.get("content")
    if not isinstance(content, list):
        return [{"role": role, "content": content if isinstance(content, str) else ""}]
    blocks = [block for block in content if isinstance(block, dict)]
    turn: list[dict[str, Any]] = [
        {
            "role": "tool",
            "tool_call_id": block.get("tool_use_id"),
            "content": blocks_text(block.get("content")),
        }
        for block in blocks
        if block.get("type") == "tool_result"
    ]
    rest = [block for block in blocks if block.get("type") != "tool_result"]
    calls = [_tool_call(block) for block in rest if block.get("type") == "tool_use"]
    if rest or not turn:
        chat: dict[str, Any] = {"role": role, "content": blocks_text(rest)}
        if calls:
            chat["tool_calls"] = calls
        turn.append(chat)
    return turn


def chat_completion(
    message: dict[str, Any],
    text: str | None,
    tool_calls: list[dict[str, Any]],
    stop_reason: Any,
    usage: Any,
) -> dict[str, Any]:
    """An Anthropic message's parts as a chat.completion dict."""
    reply: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    finish = FINISH_REASONS.get(stop_reason, "stop") if stop_reason else None
    completion: dict[str, Any] = {
        "id": message.get("id"),
        "object": "chat.completion",
        "model": message.get("model"),
        "choices": [{"index": 0, "message": reply, "finish_reason": finish}],
    }
    if isinstance(usage, dict):
        prompt = int(usage.get("input_tokens") or 0)
        output = int(usage.get("output_tokens") or 0)
        completion["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
        }
    return completion


class MessagesDoor:
    """Anthropic's Messages API: `system` plus `messages`; the block is appended to `system`."""

    name = "messages"
    final_events: tuple[bytes, ...] = (MESSAGE_STOP,)

    def conversation(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        chat: list[dict[str, Any]] = []
        system = blocks_text(body.get("system"))
        if system:
            chat.append({"role": "system", "content": system})
        messages = body.get("messages")
        for message in messages if isinstance(messages, list) else []:
            if isinstance(message, dict):
                chat.extend(_turn(message))
        return chat

    def with_block(self, body: dict[str, Any], block: str) -> dict[str, Any]:
        system = body.get("system")
        if isinstance(system, list):
            placed: str | list[Any] = [*system, {"type": "text", "text": block}]
        elif isinstance(system, str) and system:
            placed = f"{system}\n\n{block}"
        else:
            placed = block
        return {**body, "system": placed}

    def requested_output_tokens(self, body: dict[str, Any]) -> int | None:
        requested = body.get("max_tokens")
        return requested if isinstance(requested, int) else None

    def chat_answer(self, answer: dict[str, Any]) -> dict[str, Any]:
        blocks = [b for b in answer.get("content") or [] if isinstance(b, dict)]
        texts = [str(b.get("text") or "") for b in blocks if b.get("type") == "text"]
        calls = [_tool_call(b) for b in blocks if b.get("type") == "tool_use"]
        text = "".join(texts) if texts else None
        return chat_completion(answer, text, calls, answer.get("stop_reason"), answer.get("usage"))

    def stream_reader(self) -> MessagesStreamReader:
        return MessagesStreamReader()


class MessagesStreamReader:
    """Rebuilds a streamed Messages answer from its events: `message_start`, the content blocks
    (`content_block_start`, `text_delta` and `input_json_delta` deltas, `content_block_stop`),
    `message_delta` (stop reason, usage) and `message_stop`. An `error` event, or a stream
    that ends before `message_stop`, gives a result with an `error` key."""

    def __init__(self) -> None:
        self._data = EventData()
        self._message: dict[str, Any] = {}
        self._blocks: dict[int, dict[str, Any]] = {}
        self._arguments: dict[int, str] = {}
        self._stop_reason: Any = None
        self._usage: dict[str, Any] = {}
        self._stopped = False
        self._error: str | None = None

    def feed(self, data: bytes) -> None:
        for event in self._data.feed_json(data):  # `event:` lines repeat the payload's `type`
            self._absorb(event)

    def _absorb(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            self._message = event["message"]
            self._usage.update(self._message.get("usage") or {})
        elif kind == "content_block_start" and isinstance(event.get("content_block"), dict):
            self._blocks[_index(event)] = dict(event["content_block"])
        elif kind == "content_block_delta" and isinstance(event.get("delta"), dict):
            self._delta(_index(event), event["delta"])
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop_reason = delta["stop_reason"]
            self._usage.update(event.get("usage") or {})
        elif kind == "message_stop":
            self._stopped = True
        elif kind == "error" or "error" in event:
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            self._error = str(message or "the stream carried an error event")

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self._blocks.setdefault(index, {"type": "text", "text": ""})
        if delta.get("type") == "text_delta":
            block["text"] = str(block.get("text") or "") + str(delta.get("text") or "")
        elif delta.get("type") == "input_json_delta":
            partial = str(delta.get("partial_json") or "")
            self._arguments[index] = self._arguments.get(index, "") + partial

    def result(self) -> dict[str, Any]:
        """The assembled answer as a chat.completion dict."""
        texts, calls = [], []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            if block.get("type") == "text":
                texts.append(str(block.get("text") or ""))
            elif block.get("type") == "tool_use":
                calls.append(_tool_call(block, self._arguments.get(index) or None))
        text = "".join(texts) if texts else None
        completion = chat_completion(self._message, text, calls, self._stop_reason, self._usage)
        if self._error is not None or not self._stopped:
            completion["error"] = self._error or "the stream ended before message_stop"
        return completion


def _index(event: dict[str, Any]) -> int:
    index = event.get("index")
    return index if isinstance(index, int) else 0


MESSAGES = MessagesDoor()
