"""A Responses API call answered by a chat-completions upstream: request, answer and stream.

The chat request's messages are the Responses door's conversation of the body as sent upstream
(instructions with the memory block, the conversation before `previous_response_id`, the input):
what the memory stages read is what the model gets. Function tools, `tool_choice`,
`max_output_tokens`, `text.format` and the sampling fields map onto their chat twins.

The answer is a `response` object whose output items are the chat message's text (one
`message` item) and tool calls (`function_call` items). A chat stream becomes the typed events a
Responses stream has, numbered in order: `response.created`, `response.in_progress`, for each
item `response.output_item.added` then its deltas (`response.content_part.added` and
`response.output_text.delta`, or `response.function_call_arguments.delta`) then its `.done`
events, and last `response.completed` with the whole response (`response.incomplete` when the
model ran out of tokens; an `error` event when the upstream's stream broke).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# Fields of the request a response object repeats back, with OpenAI's defaults.
_ECHOED: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": None,
    "store": True,
    "temperature": None,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": None,
    "truncation": "disabled",
    "user": None,
}
_SAMPLING = ("temperature", "top_p", "parallel_tool_calls", "user", "seed")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def chat_request(
    body: dict[str, Any], messages: list[dict[str, Any]], *, stream: bool
) -> dict[str, Any]:
    """The chat-completions request for Responses request `body`, whose conversation (read by
    the door, memory block included) is `messages`."""
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for name in _SAMPLING:
        if body.get(name) is not None:
            chat[name] = body[name]
    if isinstance(body.get("max_output_tokens"), int):
        chat["max_tokens"] = body["max_output_tokens"]
    tools = [tool for tool in body.get("tools") or [] if tool.get("type") == "function"]
    if tools:
        chat["tools"] = [{"type": "function", "function": _function_of(tool)} for tool in tools]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif isinstance(choice, str):
        chat["tool_choice"] = choice
    response_format = _response_format((body.get("text") or {}).get("format"))
    if response_format is not None:
        chat["response_format"] = response_format
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _function_of(tool: dict[str, Any]) -> dict[str, Any]:
    function = {"name": tool.get("name"), "parameters": tool.get("parameters") or {}}
    for name in ("description", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return function


def _response_format(text_format: Any) -> dict[str, Any] | None:
    if not isinstance(text_format, dict) or text_format.get("type") in (None, "text"):
        return None
    if text_format.get("type") == "json_schema":
        schema = {k: v for k, v in text_format.items() if k != "type"}
        return {"type": "json_schema", "json_schema": schema}
    return dict(text_format)


@dataclass
class ResponseDraft:
    """A translated call's response before its answer: its id, its time, the request it echoes."""

    request: dict[str, Any]  # the body as the client sent it (its own instructions, no block)
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        finish_reason: str | None = None,
    ) -> dict[str, Any]:
        """The response object with `status` and `output` (`finish_reason` of the chat answer:
        `length` makes it incomplete)."""
        if status == "completed" and finish_reason == "length":
            status = "incomplete"
        response: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "model": self.request.get("model"),
            "output": output,
        }
        for name, default in _ECHOED.items():
            value = self.request.get(name)
            response[name] = default if value is None else value
        response["usage"] = _usage(usage) if usage else None
        return response


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def message_item(text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": new_id("msg"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def function_call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "id": new_id("fc"),
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or new_id("call"),
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
    }


def response_from_chat(completion: dict[str, Any], draft: ResponseDraft) -> dict[str, Any]:
    """A whole chat.completion as the response object of `draft`."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    output = []
    if message.get("content"):
        output.append(message_item(str(message["content"])))
    output += [function_call_item(call) for call in message.get("tool_calls") or []]
    return draft.response("completed", output, completion.get("usage"), choice.get("finish_reason"))
