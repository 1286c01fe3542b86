"""Anthropic's Messages API upstream: relayed to an upstream that serves it, translated otherwise.

A route whose upstream serves Messages itself (`serves_natively(route, "messages")`) gets the
request as it came, only its model renamed, at `{api_base}/messages`, with the client's
`anthropic-version` and `anthropic-beta` and the provider key as `x-api-key`; the answer's bytes
come back unchanged. Every other route is translated with litellm's Anthropic adapter: the
request becomes a chat completion sent through the route's ordinary chat upstream (the relay for
OpenAI-compatible upstreams, litellm for the rest), and its answer, whole or streamed, becomes
Anthropic's message or events again (`message_start`, `ping`, the content blocks,
`message_delta`, `message_stop`). A stream that breaks after it began ends with Anthropic's
`error` event either way.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.doors.messages_errors import error_event
from proxy.errors import bad_request
from proxy.llm import ReportedElsewhere, import_litellm
from proxy.policy import ModelRoute
from proxy.streaming import EventData
from proxy.upstreams.base import Target, Upstream, UpstreamReply, UpstreamStream
from proxy.upstreams.relay import OpenAICompatible
from proxy.upstreams.routing import provider_of, serves_natively

ANTHROPIC_VERSION = "2023-06-01"  # what the SDKs send; used when a client sends none
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_RELAY_BREAK = b'data: {"error":'  # how the relay reports a stream that broke (OpenAI's shape)


def relay_headers(route: ModelRoute, client_headers: Mapping[str, str]) -> dict[str, str]:
    """The headers a relayed call carries: the client's Anthropic ones, and, for a route with a
    provider key, `x-api-key`, which the relay fills with it."""
    headers = {name: client_headers[name] for name in FORWARDED_HEADERS if name in client_headers}
    headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    if route.api_key is not None:
        headers["x-api-key"] = ""
    return headers


@dataclass
class _Translation:
    """A Messages request as a chat completion, and what its answer needs to be translated back."""

    adapter: Any
    chat: dict[str, Any]
    tool_names: dict[str, str]  # tool names litellm shortened for OpenAI, to their originals


class AnthropicMessages:
    """The Messages API for every route: relayed when its upstream serves it, else translated
    through the route's chat upstream (`chat_upstream(route)`)."""

    def __init__(
        self, relay: OpenAICompatible, chat_upstream: Callable[[ModelRoute], Upstream]
    ) -> None:
        self.relay = relay
        self.chat_upstream = chat_upstream
        self._adapter: Any = None

    async def adapter(self) -> Any:
        """litellm's Anthropic adapter; litellm is imported off the event loop the first time."""
        if self._adapter is None:
            await asyncio.to_thread(import_litellm)
            from litellm.llms.anthropic.messages.adapters.transformation import AnthropicAdapter

            self._adapter = AnthropicAdapter()
        return self._adapter

    async def complete(
        self, target: Target, body: dict[str, Any], headers: Mapping[str, str]
    ) -> UpstreamReply:
        """The whole answer, as Anthropic's message."""
        if serves_natively(target.route, "messages"):
            sent = relay_headers(target.route, headers)
            return await self.relay.complete(target, "/messages", body, sent)
        translation = await self._translate(body, stream=False)
        reply = await self.chat_upstream(target.route).chat(target, translation.chat)
        litellm = import_litellm()
        completion = json.loads(reply.body)
        # usage is optional in a chat completion; the adapter reads it (as zero tokens when none).
        completion["usage"] = completion.get("usage") or {}
        response = litellm.ModelResponse(**completion)
        message = translation.adapter.translate_completion_output_params(
            response, translation.tool_names
        )
        # The adapter keeps the chat answer's id ("chatcmpl-…"); a message's is "msg_…", as a
        # translated stream's message_start already has it.
        chat_id = str(message.get("id") or "")
        if not chat_id.startswith("msg_"):
            message["id"] = "msg_" + (chat_id.removeprefix("chatcmpl-") or uuid.uuid4().hex)
        content = json.dumps(message, separators=(",", ":"), default=str).encode()
        return UpstreamReply(200, content, {**reply.headers, "content-type": "application/json"})

    async def stream(
        self, target: Target, body: dict[str, Any], headers: Mapping[str, str]
    ) -> UpstreamStream:
        """The answer as Anthropic's server-sent events."""
        if serves_natively(target.route, "messages"):
            sent = relay_headers(target.route, headers)
            opened = await self.relay.stream(target, "/messages", body, sent)
            chunks = _with_anthropic_errors(opened.chunks)
            return UpstreamStream(chunks, opened.close, opened.headers)
        translation = await self._translate(body, stream=True)
        opened = await self.chat_upstream(target.route).chat_stream(target, translation.chat)
        source = _ChatChunks(opened.chunks)
        events = translation.adapter.translate_completion_output_params_streaming(
            source.chunks(),
            model=provider_of(target.route.model)[1],  # as a whole answer names it
            tool_name_mapping=translation.tool_names,
        )

        async def translated() -> AsyncIterator[bytes]:
            async for event in events:
                if source.error is not None:  # litellm's own error frame: ours replaces it
                    yield error_event(source.error)
                    return
                yield event
                if event.startswith(b"event: message_start"):
                    yield PING

        async def close() -> None:
            try:
                await events.aclose()
            finally:
                await opened.close()

        return UpstreamStream(translated(), close, opened.headers)

    async def count_tokens(
        self, target: Target, body: dict[str, Any], headers: Mapping[str, str]
    ) -> UpstreamReply:
        """The upstream's own count (routes that serve Messages natively only)."""
        return await self.relay.complete(
            target, "/messages/count_tokens", body, relay_headers(target.route, headers)
        )

    async def _translate(self, body: dict[str, Any], *, stream: bool) -> _Translation:
        adapter = await self.adapter()
        try:
            chat, tool_names = adapter.translate_completion_input_params_with_tool_mapping(
                dict(body)
            )
        except Exception as exc:  # litellm's message says what it could not translate
            raise bad_request(
                f"The request could not be translated for this model's upstream: {exc}"
            ) from None
        chat["messages"] = [_without_nulls(m) for m in chat.get("messages") or []]
        if stream:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
        return _Translation(adapter, chat, tool_names or {})


def _without_nulls(message: Any) -> Any:
    """A translated chat message without the null fields litellm leaves (`thinking_blocks`),
    which OpenAI-compatible servers may refuse."""
    if not isinstance(message, dict):
        return message
    return {key: value for key, value in message.items() if value is not None}


async def _with_anthropic_errors(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A relayed Messages stream, with the relay's own report of a broken stream (in OpenAI's
    shape, always a chunk of its own) as Anthropic's `error` event."""
    async for chunk in chunks:
        if chunk.startswith(_RELAY_BREAK):
            yield error_event(_error_message(chunk[5:]))
        else:
            yield chunk


def _error_message(payload: bytes) -> str:
    try:
        error = json.loads(payload).get("error")
    except (ValueError, AttributeError):
        error = None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or "the upstream's stream broke off")


class _ChatChunks:
    """A chat-completions stream (server-sent-event bytes) as litellm's chunk objects, for the
    adapter; an `error` event, or an end before `[DONE]`, stops it with `error` set."""

    def __init__(self, raw: AsyncIterator[bytes]) -> None:
        self.raw = raw
        self.error: str | None = None

    async def chunks(self) -> AsyncIterator[Any]:
        chunk_type = import_litellm().ModelResponseStream
        events, done = EventData(), False
        async for data in self.raw:  # read to the end: a finished stream's connection is reused
            for payload in events.feed(data):
                if done or payload == b"[DONE]":
                    done = True
                    continue
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(chunk, dict) and "error" in chunk:
                    self.error = _error_message(payload)
                    raise _StreamBroken(self.error)
                if isinstance(chunk, dict):
                    yield chunk_type(**chunk)
        if not done:
            self.error = "The upstream's stream ended before it was complete; retry the request."
            raise _StreamBroken(self.error)


class _StreamBroken(ReportedElsewhere):
    """The chat stream under a translated Messages stream broke (`_ChatChunks.error` says how)."""
