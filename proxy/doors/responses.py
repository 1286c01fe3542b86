"""The Responses door: OpenAI's `/v1/responses`, read as the chat conversation the stages speak.

The conversation is `instructions` (one system message), then the conversation the call
continues (`previous_response_id`: the door is made per call with it, read from the store by the
route), then `input`: a string is one user message; items map onto chat messages one by one
(a message's input_text/output_text parts are its text, `function_call` items are the assistant's
tool calls, `function_call_output` items are tool messages). Items chat has no shape for
(reasoning, hosted tools' calls) carry nothing the stages read and are skipped.

The memory block goes at the end of `instructions`, after the client's own, fenced exactly as the
chat door's system message. An answer (`output` items) reads as a chat.completion; a stream is
assembled from its typed events (`response.completed` carries the whole response; deltas stand
in when it never comes, and the result then has an `error` key).
"""

from __future__ import annotations

from typing import Any

from proxy.streaming import EventData

# How a Responses stream's final event starts (it ends in one of them), held back until the
# exchange is queued.
FINAL_EVENTS = (
    b"event: response.completed",
    b"event: response.incomplete",
    b"event: response.failed",
)
TEXT_PARTS = ("input_text", "output_text", "text")
# A response's `status` that the answer finished on; any other is not learned from.
_ANSWERED = ("completed", "incomplete")
_ITEM_EVENTS = ("response.output_item.added", "response.output_item.done")
_DELTA_EVENTS = ("response.output_text.delta", "response.function_call_arguments.delta")


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The call's `input` as items: a string is one user message."""
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []


def item_type(item: dict[str, Any]) -> str | None:
    """An item's type; a bare `{"role", "content"}` is a message."""
    kind = item.get("type")
    if kind is None and "role" in item:
        return "message"
    return kind if isinstance(kind, str) else None


def items_as_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses items as chat-completions messages, in order."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item_type(item)
        if kind == "message":
            messages.append(
                {"role": item.get("role"), "content": chat_content(item.get("content"))}
            )
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)  # the same assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else chat_content(output)
            messages.append(
                {"role": "tool", "tool_call_id": item.get("call_id"), "content": content}
            )
    return messages


def chat_content(content: Any) -> Any:
    """A message's Responses content as chat content: text parts joined into a string; with an
    image among them, chat's list of parts."""
    if isinstance(content, str) or content is None:
        return content
    if not isinstance(content, list):
        return None
    parts = [part for part in content if isinstance(part, dict)]
    if all(part.get("type") in TEXT_PARTS for part in parts):
        return "".join(str(part.get("text") or "") for part in parts)
    chat_parts: list[dict[str, Any]] = []
    for part in parts:
        if part.get("type") in TEXT_PARTS:
            chat_parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif part.get("type") == "input_image" and part.get("image_url"):
            image = {"url": part["image_url"], "detail": part.get("detail") or "auto"}
            chat_parts.append({"type": "image_url", "image_url": image})
    return chat_parts


def response_as_chat(response: dict[str, Any]) -> dict[str, Any]:
    """A Responses `response` object as a chat.completion dict (an `error` key when it failed)."""
    output = [item for item in response.get("output") or [] if isinstance(item, dict)]
    texts = [
        str(part.get("text") or "")
        for item in output
        if item_type(item) == "message"
        for part in item.get("content") or []
        if isinstance(part, dict) and part.get("type") == "output_text"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    calls = items_as_messages([item for item in output if item_type(item) == "function_call"])
    if calls:
        message["tool_calls"] = calls[0]["tool_calls"]
    finish = (
        "tool_calls" if calls else "length" if response.get("status") == "incomplete" else "stop"
    )
    answer: dict[str, Any] = {
        "id": response.get("id"),
        "object": "chat.completion",
        "created": response.get("created_at"),
        "model": response.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    usage = response.get("usage")
    if isinstance(usage, dict):
        answer["usage"] = {
            "prompt_tokens": usage.get("input_tokens", 0),
            "completion_tokens": usage.get("output_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
        }
    if response.get("error") or response.get("status") not in _ANSWERED:
        answer["error"] = response.get("error") or f"response {response.get('status')}"
    return answer


class ResponsesStreamReader:
    """Rebuilds a streamed Responses answer from its typed events, fed raw SSE bytes."""

    def __init__(self) -> None:
        self._data = EventData()
        self.response: dict[str, Any] | None = None  # from the final event, once it came
        # For a stream cut short: the output items by index, as added or done, and their
        # deltas (text, or a function call's arguments).
        self._items: dict[int, dict[str, Any]] = {}
        self._deltas: dict[int, str] = {}
        self._error: str | None = None

    def feed(self, data: bytes) -> None:
        for event in self._data.feed_json(data):
            self._absorb(event)

    def _absorb(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            response = event.get("response")
            self.response = response if isinstance(response, dict) else None
        elif kind == "error" or (kind is None and "error" in event):
            error = event.get("error") if "error" in event else event
            message = error.get("message") if isinstance(error, dict) else error
            self._error = str(message or "the stream carried an error event")
        elif kind in _ITEM_EVENTS and isinstance(event.get("item"), dict):
            self._items[int(event.get("output_index") or 0)] = dict(event["item"])
        elif kind in _DELTA_EVENTS:
            index = int(event.get("output_index") or 0)
            self._deltas[index] = self._deltas.get(index, "") + str(event.get("delta") or "")

    def result(self) -> dict[str, Any]:
        """The answer as a chat.completion dict; with an `error` key when the stream broke."""
        if self.response is not None and self._error is None:
            return response_as_chat(self.response)
        output = [self._item_so_far(i, item) for i, item in sorted(self._items.items())]
        answer = response_as_chat({"status": "completed", "output": output})
        answer["error"] = self._error or "the stream ended before response.completed"
        return answer

    def _item_so_far(self, index: int, item: dict[str, Any]) -> dict[str, Any]:
        """An output item as its events left it: done, or its deltas so far."""
        if item.get("status") == "completed" or index not in self._deltas:
            return item
        if item_type(item) == "message":
            return {**item, "content": [{"type": "output_text", "text": self._deltas[index]}]}
        return {**item, "arguments": self._deltas[index]}


class ResponsesDoor:
    """The Responses API as the stages see it; one per call, with the conversation it continues
    (`history`, chat messages) when it names a `previous_response_id`."""

    name = "responses"
    final_events: tuple[bytes, ...] = FINAL_EVENTS

    def __init__(self, history: list[dict[str, Any]] | None = None) -> None:
        self.history = history or []

    def conversation(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            messages.append({"role": "system", "content": instructions})
        return messages + self.history + items_as_messages(input_items(body))

    def with_block(self, body: dict[str, Any], block: str) -> dict[str, Any]:
        instructions = body.get("instructions")
        own = instructions if isinstance(instructions, str) and instructions else None
        return {**body, "instructions": f"{own}\n\n{block}" if own else block}

    def requested_output_tokens(self, body: dict[str, Any]) -> int | None:
        requested = body.get("max_output_tokens")
        return requested if isinstance(requested, int) else None

    def chat_answer(self, answer: dict[str, Any]) -> dict[str, Any]:
        return response_as_chat(answer)

    def stream_reader(self) -> ResponsesStreamReader:
        return ResponsesStreamReader()
