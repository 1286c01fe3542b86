"""A chat-completions stream, told again as the typed events of a Responses stream.

`ResponseEvents` is fed the chat stream's raw SSE bytes and returns the Responses events they
make, numbered (`sequence_number`) in the order they are sent. Text opens a `message` item, each
tool call a `function_call` item; a tool call closes the message before it. `finish` closes the
open items and ends with the whole response (`response.completed`, or `response.incomplete`),
or with an `error` event when the chat stream broke or never reached `[DONE]`.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.streaming import EventData
from proxy.upstreams.responses_translate import (
    ResponseDraft,
    function_call_item,
    message_item,
)


class ResponseEvents:
    """The Responses events of one translated chat stream."""

    def __init__(self, draft: ResponseDraft) -> None:
        self.draft = draft
        self.response: dict[str, Any] | None = None  # the final response, once finished
        self._sequence = 0
        self._data = EventData()
        self._output: list[dict[str, Any]] = []  # items, in output order
        self._message: dict[str, Any] | None = None  # the open message item
        self._calls: dict[int, dict[str, Any]] = {}  # open function calls by chat index
        self._usage: dict[str, Any] | None = None
        self._finish_reason: str | None = None
        self._error: dict[str, Any] | None = None
        self._done = False

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        data = json.dumps(payload, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def start(self) -> bytes:
        """`response.created` and `response.in_progress`."""
        response = self.draft.response("in_progress", [])
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def feed(self, data: bytes) -> bytes:
        """The events the chat stream's bytes `data` make (possibly none yet)."""
        out = b""
        for payload in self._data.feed(data):
            if payload == b"[DONE]":
                self._done = True
                continue
            try:
                chunk = json.loads(payload)
            except ValueError:
                continue
            if isinstance(chunk, dict) and chunk.get("error"):
                error = chunk["error"]
                self._error = error if isinstance(error, dict) else {"message": str(error)}
            elif isinstance(chunk, dict):
                out += self._chunk(chunk)
        return out

    def _chunk(self, chunk: dict[str, Any]) -> bytes:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        out = b""
        for choice in (chunk.get("choices") or [])[:1]:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(str(delta["content"]))
            for call in delta.get("tool_calls") or []:
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return out

    def _add_item(self, item: dict[str, Any]) -> bytes:
        self._output.append(item)
        shown = {**item, "status": "in_progress"}
        return self._event(
            "response.output_item.added", output_index=len(self._output) - 1, item=shown
        )

    def _text(self, text: str) -> bytes:
        out = b""
        if self._message is None:
            self._message = message_item("", status="in_progress")
            out += self._add_item(self._message)
            out += self._event(
                "response.content_part.added",
                item_id=self._message["id"],
                output_index=len(self._output) - 1,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )
        self._message["content"][0]["text"] += text
        return out + self._event(
            "response.output_text.delta",
            item_id=self._message["id"],
            output_index=self._output.index(self._message),
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        out = self._close_message()
        index = int(call.get("index") or 0)
        item = self._calls.get(index)
        function = call.get("function") or {}
        if item is None:
            first = {"id": call.get("id"), "function": {"name": function.get("name")}}
            item = self._calls[index] = function_call_item(first, status="in_progress")
            out += self._add_item(item)
        arguments = function.get("arguments") or ""
        if not arguments:
            return out
        item["arguments"] += arguments
        return out + self._event(
            "response.function_call_arguments.delta",
            item_id=item["id"],
            output_index=self._output.index(item),
            delta=arguments,
        )

    def _close_message(self) -> bytes:
        message, self._message = self._message, None
        if message is None:
            return b""
        index = self._output.index(message)
        part = message["content"][0]
        message["status"] = "completed"
        return (
            self._event(
                "response.output_text.done",
                item_id=message["id"],
                output_index=index,
                content_index=0,
                text=part["text"],
                logprobs=[],
            )
            + self._event(
                "response.content_part.done",
                item_id=message["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
            + self._event("response.output_item.done", output_index=index, item=message)
        )

    def _close_calls(self) -> bytes:
        out = b""
        for _, item in sorted(self._calls.items()):
            index = self._output.index(item)
            item["status"] = "completed"
            out += self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            )
            out += self._event("response.output_item.done", output_index=index, item=item)
        self._calls.clear()
        return out

    def finish(self) -> bytes:
        """The closing events: the open items' `.done` events and the final response, or an
        `error` event when the chat stream broke."""
        if self._error is None and not self._done:
            self._error = {"message": "the upstream's stream ended before [DONE]"}
        if self._error is not None:
            return self._event(
                "error",
                code=self._error.get("code"),
                message=str(self._error.get("message") or "the upstream's stream broke"),
                param=self._error.get("param"),
            )
        out = self._close_message() + self._close_calls()
        self.response = self.draft.response(
            "completed", self._output, self._usage, self._finish_reason
        )
        kind = f"response.{self.response['status']}"
        return out + self._event(kind, response=self.response)
