"""The direct relay to upstreams that speak the OpenAI API, over one shared connection pool.

A route whose provider already speaks OpenAI's API (see `proxy.upstreams.routing`) is forwarded
byte for byte: only the request's `model` field is rewritten to the upstream's name, and the
response, streamed or not, is relayed unchanged with the headers a client may act on.

aiohttp, not httpx, is the product's HTTP client, and the CLI uses it too, so there is one
client library to pin, configure and audit. It was chosen for this module: every relayed call
parses a response and, for streams, each of its chunks, and aiohttp's C parser and connection
pool cost a fraction of httpx's CPU per call, which is most of what the proxy adds to a call
(`bench/bench_overhead.py` measures it; figures in `bench/results/overhead.json`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from proxy.errors import ProxyError
from proxy.upstreams.base import Target, UpstreamReply, UpstreamStream, relayed_headers, sse_event
from proxy.upstreams.errors import (
    QUOTED_BYTES,
    misconfigured,
    stream_broken,
    unexpected_content,
    unreachable,
    upstream_error,
)
from proxy.upstreams.routing import OPENAI_COMPATIBLE, provider_of, resolve_api_key

_NO_HEADERS: Mapping[str, str] = {}


class OpenAICompatible:
    """Direct relay to upstreams that speak the OpenAI API, over one shared connection pool."""

    def __init__(self, max_connections: int, keepalive_s: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self._keepalive_s,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(
        self, target: Target, path: str, body: dict[str, Any], headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        route = target.route
        provider, name = provider_of(route.model)
        base = route.api_base or OPENAI_COMPATIBLE.get(provider)
        if base is None:
            raise misconfigured(target.alias, "it has no api_base")
        payload = dict(body)
        payload["model"] = name
        sent = {"content-type": "application/json", **headers, **route.extra_headers}
        key = resolve_api_key(target.alias, route)
        if key is not None and "x-api-key" in sent:
            sent["x-api-key"] = key  # Anthropic's way of sending it
        elif key is not None:
            sent["authorization"] = f"Bearer {key}"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=target.connect_timeout_s, sock_read=route.timeout_s
        )
        try:
            return await self._client().post(
                base.rstrip("/") + path,
                data=json.dumps(payload, separators=(",", ":")).encode(),
                headers=sent,
                timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(target.alias, exc) from None

    async def complete(
        self,
        target: Target,
        path: str,
        body: dict[str, Any],
        headers: Mapping[str, str] = _NO_HEADERS,
    ) -> UpstreamReply:
        """POST `body` (its model renamed) to `path` under the route's base and read the whole
        JSON answer. `headers` go with it; an `x-api-key` among them carries the provider key
        (Anthropic's way) instead of `Authorization: Bearer`."""
        response = await self._send(target, path, body, headers)
        content = await _read(target.alias, response)
        if response.status >= 400:
            raise upstream_error(target.alias, response.status, _decode(content), response.headers)
        if not _is_json(response.content_type):
            raise _unexpected(target.alias, response, "application/json", content)
        headers = relayed_headers(response.headers)
        headers["content-type"] = response.headers.get("content-type", "application/json")
        return UpstreamReply(response.status, content, headers)

    async def chat(self, target: Target, body: dict[str, Any]) -> UpstreamReply:
        return await self.complete(target, "/chat/completions", body)

    async def embeddings(self, target: Target, body: dict[str, Any]) -> UpstreamReply:
        return await self.complete(target, "/embeddings", body)

    async def chat_stream(self, target: Target, body: dict[str, Any]) -> UpstreamStream:
        return await self.stream(target, "/chat/completions", body)

    async def stream(
        self,
        target: Target,
        path: str,
        body: dict[str, Any],
        headers: Mapping[str, str] = _NO_HEADERS,
    ) -> UpstreamStream:
        """POST `body` to `path` as `complete` does, and relay the server-sent events as they
        come; a stream that breaks ends with an error event in OpenAI's shape."""
        response = await self._send(target, path, body, headers)
        if response.status >= 400:
            content = await _read(target.alias, response)
            raise upstream_error(target.alias, response.status, _decode(content), response.headers)
        if response.content_type != "text/event-stream":
            try:
                start = await response.content.read(QUOTED_BYTES)
            except (aiohttp.ClientError, TimeoutError):
                start = b""
            finally:
                response.close()  # what follows is not a stream worth reading to its end
            raise _unexpected(target.alias, response, "text/event-stream", start)
        finished = False

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal finished
            try:
                async for part in response.content.iter_any():
                    yield part
                finished = True
            except (aiohttp.ClientError, TimeoutError) as exc:
                yield sse_event(stream_broken(target.alias, exc).body())

        async def close() -> None:
            # A finished stream gives its connection back to the pool; an abandoned one is
            # closed, which is what tells the upstream to stop generating.
            if finished:
                response.release()
            else:
                response.close()

        return UpstreamStream(chunks(), close, relayed_headers(response.headers))


def _decode(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


async def _read(alias: str, response: aiohttp.ClientResponse) -> bytes:
    """The whole body; the connection goes back to the pool, whatever happens."""
    try:
        return await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise unreachable(alias, exc) from None
    finally:
        response.release()


def _unexpected(
    alias: str, response: aiohttp.ClientResponse, expected: str, content: bytes
) -> ProxyError:
    return unexpected_content(
        alias, response.status, response.headers.get("content-type"), expected, content
    )


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")
