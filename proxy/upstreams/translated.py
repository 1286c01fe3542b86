"""Providers that need translation, through litellm: Azure, Anthropic, Ollama's native API…

What comes back through litellm is made to read like the direct relay's: errors carry the
provider's message and fields without litellm's wrapping, and responses lose the fields litellm
adds, streamed or not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from proxy.errors import ProxyError
from proxy.llm import import_litellm
from proxy.upstreams.base import DONE, Target, UpstreamReply, UpstreamStream, sse_event
from proxy.upstreams.errors import (
    misconfigured,
    provider_error,
    stream_broken,
    unexpected_content,
    unreachable,
    upstream_error,
)
from proxy.upstreams.routing import OPENAI_COMPATIBLE, provider_of, resolve_api_key, route_problem

log = logging.getLogger("memento.upstream")

# Request fields litellm would consume itself (metadata) or drop for models outside its catalogue
# (user, on OpenAI-compatible providers) instead of sending; they travel in extra_body.
_LITELLM_RESERVED: tuple[str, ...] = ("metadata",)
_LITELLM_DROPPED_FOR_OPENAI = ("user",)


def _litellm_api_base(model: str, api_base: str | None) -> str | None:
    """The route's api_base as litellm takes it. An Anthropic base is written with its `/v1`
    (the Messages relay asks `{api_base}/messages`); litellm adds `/v1/messages` itself."""
    if api_base is not None and provider_of(model)[0] == "anthropic":
        return api_base.rstrip("/").removesuffix("/v1")
    return api_base


class LiteLLMUpstream:
    """Providers that need translation, through litellm."""

    def _kwargs(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        route = target.route
        problem = route_problem(route)
        if problem is not None:
            raise misconfigured(target.alias, problem)
        kwargs = {k: v for k, v in body.items() if k != "model"}
        extra_body = dict(kwargs.pop("extra_body", None) or {})
        moved = _LITELLM_RESERVED
        if provider_of(route.model)[0] in OPENAI_COMPATIBLE:
            moved += _LITELLM_DROPPED_FOR_OPENAI
        for name in moved:
            if name in kwargs:
                extra_body[name] = kwargs.pop(name)
        if extra_body:
            kwargs["extra_body"] = extra_body
        kwargs["model"] = route.model
        kwargs["timeout"] = route.timeout_s
        # The client's SDK retries what it should (honouring retry-after); a proxy retrying too
        # would multiply the attempts and hold the client's call meanwhile.
        kwargs["max_retries"] = 0
        api_key = resolve_api_key(target.alias, route)
        if api_key is None and route.api_base and provider_of(route.model)[0] in OPENAI_COMPATIBLE:
            api_key = "no-key"  # local OpenAI-compatible servers need none; litellm insists
        for name, value in (
            ("api_key", api_key),
            ("api_base", _litellm_api_base(route.model, route.api_base)),
            ("api_version", route.api_version),
        ):
            if value is not None:
                kwargs[name] = value
        if route.extra_headers:
            kwargs["extra_headers"] = dict(route.extra_headers)
        return kwargs

    def _error(self, target: Target, exc: Exception) -> ProxyError:
        """litellm's exception as this proxy's own error: the provider's message and error
        fields, none of litellm's wrapping ("litellm.RateLimitError: … OpenAIException - ")."""
        litellm = import_litellm()
        if isinstance(exc, litellm.Timeout):
            return unreachable(target.alias, exc)
        error = provider_error(exc)
        if isinstance(exc, litellm.APIConnectionError):
            return unreachable(target.alias, exc, error["message"])
        status = getattr(exc, "status_code", None)
        if status == 500 and error.get("type") == "overloaded_error":
            status = 529  # litellm reports Anthropic's "overloaded" (529) as a 500
        if isinstance(status, int):
            response = getattr(exc, "response", None)
            headers = dict(getattr(response, "headers", None) or {})
            return upstream_error(target.alias, status, {"error": error}, headers)
        log.error("litellm call for %s failed: %s", target.alias, type(exc).__name__)
        return unreachable(target.alias, exc, error["message"])

    async def _call(
        self, target: Target, call: Callable[..., Awaitable[Any]], body: dict[str, Any]
    ) -> Any:
        """One litellm call for `target`, its failures mapped to OpenAI-shaped errors."""
        try:
            return await call(**self._kwargs(target, body))
        except ProxyError:
            raise
        except Exception as exc:
            raise self._error(target, exc) from None

    async def chat(self, target: Target, body: dict[str, Any]) -> UpstreamReply:
        response = await self._call(target, import_litellm().acompletion, body)
        return UpstreamReply(200, _dump(response), {"content-type": "application/json"})

    async def chat_stream(self, target: Target, body: dict[str, Any]) -> UpstreamStream:
        stream = await self._call(target, import_litellm().acompletion, body)
        problem = _not_a_stream(target, getattr(stream, "_response_headers", None))
        if problem is not None:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                await closer()
            raise problem

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream:
                    yield b"data: " + _dump(chunk) + b"\n\n"
            except Exception as exc:
                yield sse_event(stream_broken(target.alias, exc).body())
                return
            yield DONE

        async def close() -> None:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                await closer()

        return UpstreamStream(chunks(), close)

    async def embeddings(self, target: Target, body: dict[str, Any]) -> UpstreamReply:
        response = await self._call(target, import_litellm().aembedding, body)
        return UpstreamReply(200, _dump(response), {"content-type": "application/json"})


def _not_a_stream(target: Target, headers: Any) -> ProxyError | None:
    """The error for a stream whose response was no stream: a web page (a gateway's sign-in or
    error page) from any provider, or anything but server-sent events from one that speaks
    OpenAI's API. litellm reads such a body as a stream without events and would end it as an
    empty answer. Other providers stream in their own types (NDJSON, AWS event streams)."""
    content_type = str((headers or {}).get("content-type") or "")
    media_type = content_type.split(";")[0].strip().lower()
    if not media_type:
        return None  # the provider's handler keeps no headers: nothing to judge by
    openai_like = provider_of(target.route.model)[0] in OPENAI_COMPATIBLE
    if media_type in ("text/html", "application/xhtml+xml") or (
        openai_like and media_type != "text/event-stream"
    ):
        return unexpected_content(target.alias, 200, content_type, "text/event-stream", b"")
    return None


# Fields litellm adds to OpenAI's response objects (choices, messages, deltas, tool calls).
_LITELLM_ONLY_FIELDS = frozenset({"provider_specific_fields"})
# What OpenAI's usage object holds (its details are OpenAI's too, and grow); litellm adds fields
# of its own (`cost` of a model in its price list), on a stream's usage chunk.
_USAGE_FIELDS = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    }
)


def _openai_shape(data: Any) -> Any:
    """`data` without the fields litellm adds, at any depth, and its usage as OpenAI's."""
    if isinstance(data, dict):
        return {
            k: _openai_usage(v) if k == "usage" else _openai_shape(v)
            for k, v in data.items()
            if k not in _LITELLM_ONLY_FIELDS
        }
    if isinstance(data, list):
        return [_openai_shape(item) for item in data]
    return data


def _openai_usage(usage: Any) -> Any:
    if not isinstance(usage, dict):
        return usage
    return {k: _openai_shape(v) for k, v in usage.items() if k in _USAGE_FIELDS}


def _dump(response: Any) -> bytes:
    data = response.model_dump(exclude_none=True) if hasattr(response, "model_dump") else response
    return json.dumps(_openai_shape(data), separators=(",", ":"), default=str).encode()
