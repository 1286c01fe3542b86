"""Server-sent events: relaying an upstream stream to the client, and reassembling it.

`SSERelay` is an ASGI response that forwards upstream chunks as they arrive, stops (and closes the
upstream call) the moment the client disconnects, and runs `on_complete` when the upstream has
finished but before the client receives the stream's final event (`data: [DONE]` for chat
completions; each door names its own), so whatever `on_complete` stores is durable by the time the
client has the whole answer. Only the bytes that are (or may begin) that final event are held
back; everything before it flows at once.
`StreamAssembler` rebuilds a chat.completion dict from the chunks it sees, for the memory
pipeline's after-call stage; a stream that never reached `[DONE]`, or carried an error event,
assembles to a dict with an `error` key, which is not learned from. `EventData` cuts the
`data:` payloads out of event bytes however they arrive, for it and the other doors' readers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from starlette.types import Message, Receive, Scope, Send

from proxy.upstreams.base import DONE, UpstreamStream

log = logging.getLogger("memento.proxy")

_DONE_EVENT = DONE.rstrip()  # what `_hold_final_event` looks for, whatever line ending follows


class EventData:
    """The `data:` payloads of server-sent events, from bytes fed in pieces cut anywhere."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads of the `data:` lines `data` completes, stripped."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        payloads = []
        for line in lines:
            line = line.strip()
            if line.startswith(b"data:"):
                payloads.append(line[5:].strip())
        return payloads

    def feed_json(self, data: bytes) -> list[dict[str, Any]]:
        """The JSON objects the `data:` lines `data` completes carry (other payloads, such as
        `[DONE]`, left out)."""
        events = []
        for payload in self.feed(data):
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


class StreamAssembler:
    """Rebuilds a chat.completion from `chat.completion.chunk` events, fed raw SSE bytes."""

    def __init__(self) -> None:
        self._data = EventData()
        self._meta: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, Any] | None = None
        self._done = False
        self._error: str | None = None

    def feed(self, data: bytes) -> None:
        for payload in self._data.feed(data):
            if payload == b"[DONE]":
                self._done = True
                continue
            try:
                chunk = json.loads(payload) if payload else None
            except ValueError:
                continue
            if isinstance(chunk, dict) and "error" in chunk:
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else error
                self._error = str(message or "the stream carried an error event")
            elif isinstance(chunk, dict):
                self._absorb(chunk)

    def _absorb(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(key) is not None:
                self._meta.setdefault(key, chunk[key])
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            message = self._choices.setdefault(
                index, {"index": index, "message": {"role": "assistant"}, "finish_reason": None}
            )
            delta = choice.get("delta") or {}
            target = message["message"]
            if delta.get("role"):
                target["role"] = delta["role"]
            if delta.get("content"):
                target["content"] = target.get("content", "") + delta["content"]
            for call in delta.get("tool_calls") or []:
                calls = target.setdefault("tool_calls", [])
                position = call.get("index", len(calls))
                while len(calls) <= position:
                    calls.append(
                        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                    )
                slot = calls[position]
                if call.get("id"):
                    slot["id"] = call["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                message["finish_reason"] = choice["finish_reason"]

    def result(self) -> dict[str, Any]:
        """The assembled response, shaped like a non-streamed chat.completion; with an `error`
        key when the stream broke (an error event, or no `[DONE]`)."""
        completion: dict[str, Any] = {"object": "chat.completion", **self._meta}
        if self._error is not None or not self._done:
            completion["error"] = self._error or "the stream ended before [DONE]"
        completion["choices"] = [self._choices[i] for i in sorted(self._choices)]
        for choice in completion["choices"]:
            choice["message"].setdefault("content", None)
        if self._usage is not None:
            completion["usage"] = self._usage
        return completion


class SSERelay:
    """ASGI response relaying an upstream stream; a client disconnect cancels the upstream call."""

    def __init__(
        self,
        stream: UpstreamStream,
        *,
        headers: Mapping[str, str],
        observe: Callable[[bytes], None] | None = None,
        on_complete: Callable[[], Awaitable[None]] | None = None,
        final_events: tuple[bytes, ...] = (_DONE_EVENT,),
    ) -> None:
        self.stream = stream
        self.final_events = final_events
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.observe = observe
        self.on_complete = on_complete
        self.completed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def watch_disconnect() -> None:
                while True:
                    message: Message = await receive()
                    if message["type"] == "http.disconnect":
                        group.cancel_scope.cancel()
                        return

            group.start_soon(watch_disconnect)
            try:
                await self._relay(send)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.stream.close()
            group.cancel_scope.cancel()
        if not self.completed:
            log.info("client disconnected mid-stream; upstream call cancelled")

    async def _relay(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    *self.headers,
                ],
            }
        )
        observe = self.observe
        held = b""  # the final event, or bytes that may begin it, not yet sent
        async for chunk in self.stream.chunks:
            if observe is not None:
                observe(chunk)
            ready, held = _hold_final_event(held + chunk, self.final_events)
            if ready:
                await send({"type": "http.response.body", "body": ready, "more_body": True})
        if self.on_complete is not None:
            with anyio.CancelScope(shield=True):  # what it stores must not be cut half-way
                await self.on_complete()
        await send({"type": "http.response.body", "body": held, "more_body": False})
        self.completed = True


def _hold_final_event(data: bytes, final_events: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    """Split relayed bytes into what can go now and what is held: everything from the start of
    the first of `final_events` on (a stream ends with one of them), or a tail that may be the
    start of one (at most a few bytes)."""
    found = [at for at in (data.find(event) for event in final_events) if at >= 0]
    if found:
        return data[: min(found)], data[min(found) :]
    longest = max(len(event) for event in final_events) - 1
    for size in range(min(longest, len(data)), 0, -1):
        if any(event.startswith(data[-size:]) for event in final_events):
            return data[:-size], data[-size:]
    return data, b""
