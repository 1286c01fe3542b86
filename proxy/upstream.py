"""Calling the real model: direct relay for OpenAI-compatible upstreams, litellm for the rest.

An alias whose provider already speaks the OpenAI API (`openai/…`, `hosted_vllm/…`, or any model
with `passthrough: true`) is forwarded over one shared HTTP connection pool and its response
bytes are relayed unchanged; only the `model` field of the request is rewritten to the upstream's
name. Everything else (Azure, Anthropic, Ollama's native API, Bedrock…) goes through litellm,
which translates; what comes back through litellm is made to read like the direct relay's:
errors carry the provider's message and fields without litellm's wrapping, and responses lose
the fields litellm adds. The built-in `echo` model answers locally. Provider keys come from the
server's environment, never from the client; a route that cannot work as configured answers 500
`upstream_misconfigured`, a message for the operator.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from proxy.errors import ProxyError
from proxy.llm import import_litellm
from proxy.policy import ModelRoute
from proxy.settings import Settings
from proxy.streaming import DONE, UpstreamStream, sse_event

log = logging.getLogger("memento.upstream")

# Providers whose API is OpenAI's own, and where they live when the route names no api_base.
OPENAI_COMPATIBLE = {"openai": "https://api.openai.com/v1", "hosted_vllm": None}
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


class Upstream(Protocol):
    """One way of reaching models. Failures raise ProxyError in OpenAI's shape."""

    async def chat(self, target: Target, body: dict[str, Any]) -> UpstreamReply: ...

    async def chat_stream(self, target: Target, body: dict[str, Any]) -> UpstreamStream:
        """Open the stream; errors before the first byte raise, later ones become SSE errors."""
        ...

    async def embeddings(self, target: Target, body: dict[str, Any]) -> UpstreamReply: ...


def provider_of(model: str) -> tuple[str, str]:
    """Split a litellm model string into (provider, model name); no prefix gives ("", model)."""
    provider, sep, name = model.partition("/")
    return (provider, name) if sep else ("", model)


def is_passthrough(route: ModelRoute) -> bool:
    """Whether calls for this route can skip litellm and be relayed byte for byte."""
    if route.passthrough is not None:
        return route.passthrough
    provider, _ = provider_of(route.model)
    if provider not in OPENAI_COMPATIBLE:
        return False
    return route.api_base is not None or OPENAI_COMPATIBLE[provider] is not None


def misconfigured(alias: str, problem: str) -> ProxyError:
    """A call the server's own configuration makes impossible: not the client's doing, and
    only the operator can fix it."""
    return ProxyError(
        500,
        f"The server's route for model '{alias}' is misconfigured: {problem}. The operator must "
        "fix it (`memento-proxy policy check` lists such problems).",
        type="server_error",
        code="upstream_misconfigured",
    )


def route_problem(route: ModelRoute) -> str | None:
    """Why no call for this route can work, found without calling anyone; None if one can."""
    if route.model == "echo":
        return None
    if is_passthrough(route):
        provider, _ = provider_of(route.model)
        if route.api_base is None and OPENAI_COMPATIBLE.get(provider) is None:
            return f"'{route.model}' is relayed directly (passthrough) but has no api_base"
        return None
    return _unknown_provider(route.model, route.api_base)


@functools.lru_cache(maxsize=1024)
def _unknown_provider(model: str, api_base: str | None) -> str | None:
    """litellm's own offline look-up of the provider, the first thing it does on every call."""
    try:
        import_litellm().get_llm_provider(model=model, api_base=api_base)
    except Exception:
        return (
            f"litellm knows no provider for '{model}'; write it as <provider>/<model>, e.g. "
            "openai/gpt-4o-mini, anthropic/claude-3-5-haiku-latest or ollama/llama3"
        )
    return None


def key_variable(route: ModelRoute) -> str | None:
    """The environment variable the route's `api_key: env:NAME` names, if any."""
    return None if route.api_key is None else route.api_key.removeprefix("env:")


def resolve_api_key(alias: str, route: ModelRoute) -> str | None:
    """The provider key named by `env:VAR` in the policy, read from the server environment."""
    name = key_variable(route)
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise misconfigured(
            alias, f"the environment variable {name}, named by its api_key, is not set"
        )
    return value


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    relayed = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in RELAYED_HEADERS or lowered.startswith(RELAYED_PREFIXES):
            relayed[lowered] = value
    return relayed


def upstream_error(
    alias: str, status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> ProxyError:
    """Map an upstream failure to what the client should see.

    Statuses that describe the request or the upstream's capacity (400, 404, 409, 413, 422, 429,
    503) are kept, with the upstream's message (a 429's as "upstream rate limit: …", since the
    limit is the provider's, not this proxy's); the upstream refusing the server's credentials
    (401/403) and other 5xx are 502, since neither is the client's doing.
    """
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or f"HTTP {status}")
        err_type, param, code = error.get("type"), error.get("param"), error.get("code")
    else:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        message, err_type, param, code = (text[:500] or f"HTTP {status}"), None, None, None
    relayed = relayed_headers(headers or {})
    if status in (401, 403):
        return ProxyError(
            502,
            f"The upstream for model '{alias}' refused the server's provider credentials "
            f"(HTTP {status}: {message}). The operator must check the api_key in the policy.",
            type="upstream_error",
            code="upstream_auth_failed",
        )
    if status in (400, 404, 409, 413, 422, 429, 503):
        default_type = "rate_limit_error" if status == 429 else "invalid_request_error"
        if status == 503:
            default_type = "api_error"
        if status == 429:
            message = f"upstream rate limit: {message}"
        return ProxyError(
            status,
            message,
            type=str(err_type or default_type),
            param=None if param is None else str(param),
            code=None if code is None else str(code),
            headers=relayed,
        )
    return ProxyError(
        502,
        f"The upstream for model '{alias}' failed (HTTP {status}): {message}",
        type="upstream_error",
        code="upstream_error",
        headers=relayed,
    )


def unexpected_content(
    alias: str, response: aiohttp.ClientResponse, expected: str, content: bytes
) -> ProxyError:
    """A success status whose body is not the API's (an HTML login or error page from a
    gateway in front of the model, say): relaying it would hand the client something no
    OpenAI SDK can parse, so it is the upstream's failure."""
    got = response.headers.get("content-type") or "no content-type"
    quoted = content[:_QUOTED_BYTES].decode("utf-8", "replace").strip()
    return ProxyError(
        502,
        f"The upstream for model '{alias}' answered HTTP {response.status} with {got} instead "
        f"of {expected}; check the route's api_base. It began: {quoted!r}",
        type="upstream_error",
        code="upstream_bad_response",
    )


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


_QUOTED_BYTES = 200


def unreachable(alias: str, exc: Exception, detail: str | None = None) -> ProxyError:
    """The upstream did not answer; `detail` says why (default: the exception)."""
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "Timeout":
        return ProxyError(
            504,
            f"The upstream for model '{alias}' did not answer in time ({type(exc).__name__}).",
            type="upstream_error",
            code="upstream_timeout",
        )
    return ProxyError(
        502,
        f"The upstream for model '{alias}' could not be reached "
        f"({detail or f'{type(exc).__name__}: {exc}'}).",
        type="upstream_error",
        code="upstream_unreachable",
    )


def stream_broken(alias: str, exc: Exception) -> ProxyError:
    """An upstream failure after the stream began: sent as a final SSE `error` event, which the
    openai SDKs raise as APIError (the HTTP status has already gone out as 200)."""
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "Timeout":
        message = f"The upstream for model '{alias}' stopped sending mid-stream (timed out)."
        return ProxyError(504, message, type="upstream_error", code="upstream_timeout")
    return ProxyError(
        502,
        f"The upstream for model '{alias}' broke off the stream ({type(exc).__name__}). "
        "The answer is incomplete; retry the request.",
        type="upstream_error",
        code="upstream_stream_broken",
    )


class OpenAICompatible:
    """Direct relay to upstreams that speak the OpenAI API, over one shared connection pool.

    aiohttp rather than httpx here: on this hot path its C HTTP parser costs several times less
    CPU per call, which is most of the proxy's own overhead.
    """

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
        self, target: Target, path: str, body: dict[str, Any]
    ) -> aiohttp.ClientResponse:
        route = target.route
        provider, name = provider_of(route.model)
        base = route.api_base or OPENAI_COMPATIBLE.get(provider)
        if base is None:
            raise misconfigured(target.alias, "it has no api_base")
        payload = dict(body)
        payload["model"] = name
        headers = {"content-type": "application/json", **route.extra_headers}
        key = resolve_api_key(target.alias, route)
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=target.connect_timeout_s, sock_read=route.timeout_s
        )
        try:
            return await self._client().post(
                base.rstrip("/") + path,
                data=json.dumps(payload, separators=(",", ":")).encode(),
                headers=headers,
                timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(target.alias, exc) from None

    async def _complete(self, target: Target, path: str, body: dict[str, Any]) -> UpstreamReply:
        response = await self._send(target, path, body)
        try:
            content = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(target.alias, exc) from None
        finally:
            response.release()
        if response.status >= 400:
            raise upstream_error(target.alias, response.status, _decode(content), response.headers)
        if not _is_json(response.content_type):
            raise unexpected_content(target.alias, response, "application/json", content)
        headers = relayed_headers(response.headers)
        headers["content-type"] = response.headers.get("content-type", "application/json")
        return UpstreamReply(response.status, content, headers)

    async def chat(self, target: Target, body: dict[str, Any]) -> UpstreamReply:
        return await self._complete(target, "/chat/completions", body)

    async def embeddings(self, target: Target, body: dict[str, Any]) -> UpstreamReply:
        return await self._complete(target, "/embeddings", body)

    async def chat_stream(self, target: Target, body: dict[str, Any]) -> UpstreamStream:
        response = await self._send(target, "/chat/completions", body)
        if response.status >= 400:
            try:
                content = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise unreachable(target.alias, exc) from None
            finally:
                response.release()
            raise upstream_error(target.alias, response.status, _decode(content), response.headers)
        if response.content_type != "text/event-stream":
            try:
                start = await response.content.read(_QUOTED_BYTES)
            except (aiohttp.ClientError, TimeoutError):
                start = b""
            finally:
                response.close()  # what follows is not a stream worth reading to its end
            raise unexpected_content(target.alias, response, "text/event-stream", start)
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


# Request fields litellm would consume itself (metadata) or drop for models outside its catalogue
# (user, on OpenAI-compatible providers) instead of sending; they travel in extra_body.
_LITELLM_RESERVED: tuple[str, ...] = ("metadata",)
_LITELLM_DROPPED_FOR_OPENAI = ("user",)


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
        api_key = resolve_api_key(target.alias, route)
        if api_key is None and route.api_base and provider_of(route.model)[0] in OPENAI_COMPATIBLE:
            api_key = "no-key"  # local OpenAI-compatible servers need none; litellm insists
        for name, value in (
            ("api_key", api_key),
            ("api_base", route.api_base),
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


def provider_error(exc: Exception) -> dict[str, Any]:
    """The upstream's error object behind a litellm exception: its own fields when it sent
    OpenAI's error shape, its text when it sent text, else litellm's message without litellm's
    prefixes."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        fields = ("message", "type", "param", "code")
        return {name: body[name] for name in fields if isinstance(body.get(name), str)}
    if isinstance(body, str) and body.strip():
        return {"message": body.strip()[:_QUOTED_BYTES]}
    text = str(getattr(exc, "message", None) or exc)
    return {"message": _LITELLM_PREFIXES.sub("", text, count=1).strip() or type(exc).__name__}


# "litellm.RateLimitError: RateLimitError: OpenAIException - slow down" → "slow down"
_LITELLM_PREFIXES = re.compile(r"^(?:litellm\.\w+:\s*)?(?:\w+Error:\s*)?(?:\w+Exception\s*-\s*)?")
# Fields litellm adds to OpenAI's response objects (choices, messages, deltas, tool calls).
_LITELLM_ONLY_FIELDS = frozenset({"provider_specific_fields"})


def _openai_shape(data: Any) -> Any:
    """`data` without the fields litellm adds, at any depth."""
    if isinstance(data, dict):
        return {k: _openai_shape(v) for k, v in data.items() if k not in _LITELLM_ONLY_FIELDS}
    if isinstance(data, list):
        return [_openai_shape(item) for item in data]
    return data


def _dump(response: Any) -> bytes:
    data = response.model_dump(exclude_none=True) if hasattr(response, "model_dump") else response
    return json.dumps(_openai_shape(data), separators=(",", ":"), default=str).encode()


class Upstreams:
    """Picks how each route is reached, and owns the shared connection pool."""

    def __init__(self, settings: Settings) -> None:
        from proxy.echo import EchoUpstream

        self.direct = OpenAICompatible(
            settings.upstream_max_connections, settings.upstream_keepalive_s
        )
        self.translated = LiteLLMUpstream()
        self.echo = EchoUpstream()

    def for_route(self, route: ModelRoute) -> Upstream:
        if route.model == "echo":
            return self.echo
        return self.direct if is_passthrough(route) else self.translated

    async def aclose(self) -> None:
        await self.direct.aclose()
