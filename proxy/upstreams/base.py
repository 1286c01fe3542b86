"""What every way of reaching a model shares: where a call goes, what comes back, the protocol.

A transport (`relay.OpenAICompatible`, `translated.LiteLLMUpstream`, `echo.EchoUpstream`) takes a
`Target` and an OpenAI request body and answers with an `UpstreamReply`, or an `UpstreamStream` of
server-sent events in OpenAI's chunk format; its failures raise `ProxyError` in OpenAI's shape
(`proxy.upstreams.errors`). The chat route and the memory stages see only this protocol.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.policy import ModelRoute

# The final event of an OpenAI stream.
DONE = b"data: [DONE]\n\n"
# Upstream response headers a client may act on; everything else stays behind.
RELAYED_HEADERS = ("retry-after", "retry-after-ms", "openai-processing-ms")
RELAYED_PREFIXES = ("x-ratelimit-",)


@dataclass(frozen=True)
class Target:
    """Where one call goes: the tenant's alias, its route, and the tenant's connect timeout."""

    alias: str
    route: ModelRoute
    connect_timeout_s: float = 10.0


@dataclass
class UpstreamReply:
    """A complete (non-streamed) upstream response, ready to relay."""

    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class UpstreamStream:
    """An open streaming response from an upstream: SSE bytes, and how to close it early."""

    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]
    headers: dict[str, str] = field(default_factory=dict)


class Upstream(Protocol):
    """One way of reaching models. Failures raise ProxyError in OpenAI's shape."""

    async def chat(self, target: Target, body: dict[str, Any]) -> UpstreamReply: ...

    async def chat_stream(self, target: Target, body: dict[str, Any]) -> UpstreamStream:
        """Open the stream; errors before the first byte raise, later ones become SSE errors."""
        ...

    async def embeddings(self, target: Target, body: dict[str, Any]) -> UpstreamReply: ...


def sse_event(payload: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's response headers a client may act on (rate limits, retry hints)."""
    relayed = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in RELAYED_HEADERS or lowered.startswith(RELAYED_PREFIXES):
            relayed[lowered] = value
    return relayed
