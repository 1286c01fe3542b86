"""The chat and embeddings routes: `/v1/chat/completions` and `/v1/embeddings`.

A chat call is authenticated, validated and its model resolved; the memory hooks
(`proxy.memory.seam`) prepare it; the upstream answers; the finished exchange goes back to the
hooks to queue durably, and only then is the answer completed (a stream's final event waits for
it): an exchange the client was answered for survives a crash. Each call runs inside its
`memento.request` span, with a `memento.upstream` child for the model's part.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from opentelemetry import trace
from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import authenticate
from proxy.errors import ProxyError, model_not_found
from proxy.memory.seam import CallContext, MemoryHooks, MemoryUnavailable, NoMemory, PreparedCall
from proxy.policy import ModelRoute, Policy
from proxy.request_ids import client_request_id_of, request_id_of
from proxy.streaming import SSERelay, StreamAssembler
from proxy.tracing import (
    EndSpansAfter,
    record_failure,
    record_first_token,
    record_http_status,
    record_response,
    span_ids,
    start_request_span,
    start_upstream_span,
)
from proxy.upstreams.base import Target
from proxy.upstreams.registry import Upstreams
from proxy.upstreams.routing import is_passthrough
from proxy.validation import (
    chat_session_id,
    chat_user_id,
    read_json_body,
    validate_chat,
    validate_embeddings,
)

log = logging.getLogger("memento.proxy")
_tracer = trace.get_tracer(log.name)


class ChatService:
    """The chat and embeddings routes' work, with the parts they need passed in."""

    def __init__(self, upstreams: Upstreams, memory: MemoryHooks) -> None:
        self.upstreams = upstreams
        self.memory = memory
        self.assemble_streams = not isinstance(memory, NoMemory)

    @staticmethod
    def resolve(policy: Policy, alias: str) -> ModelRoute:
        route = policy.models.get(alias)
        if route is None:
            raise model_not_found(alias, list(policy.models))
        return route

    async def prepare(self, ctx: CallContext) -> PreparedCall:
        try:
            return await self.memory.before_call(ctx)
        except MemoryUnavailable as exc:
            raise ProxyError(
                503,
                f"Memory is unavailable and this tenant's policy is fail-closed ({exc}). "
                "Retry later, or send X-Memento-Mode: off if the policy allows it.",
                type="api_error",
                code="memory_unavailable",
            ) from None
        except ProxyError:
            raise  # the request itself is wrong (e.g. an unknown X-Memento-Mode)
        except Exception:
            log.exception("memory preparation failed for request %s", ctx.request_id)
            if ctx.policy.memory.fail_closed:
                raise ProxyError(
                    503,
                    "Memory failed and this tenant's policy is fail-closed. Retry later.",
                    type="api_error",
                    code="memory_unavailable",
                ) from None
            return PreparedCall(body=ctx.body)

    async def finish(self, ctx: CallContext, prepared: PreparedCall, response: Any) -> None:
        """Hand the finished exchange to the memory hooks; never raises."""
        try:
            if isinstance(response, dict):
                await self.memory.after_call(ctx, prepared, response)
        except Exception:
            log.exception("memory after-call failed for request %s", ctx.request_id)

    async def chat(self, request: Request) -> Response | EndSpansAfter:
        """The call inside its `memento.request` span (ended after a stream, for streams)."""
        root = start_request_span(request_id_of(request), client_request_id_of(request))
        try:
            with trace.use_span(
                root, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                response = await self._chat(request, root)
        except BaseException as exc:
            record_failure(root, exc)
            root.end()
            raise
        if isinstance(response, Response):
            record_http_status(root, response.status_code)
            root.end()
        return response

    async def _chat(self, request: Request, root: trace.Span) -> Response | EndSpansAfter:
        started = time.perf_counter()
        with _tracer.start_as_current_span("memento.auth"):
            policy = authenticate(request)
        root.set_attribute("memento.tenant", policy.tenant)
        body = await read_json_body(request, policy.limits.max_body_bytes)
        alias = validate_chat(body)
        route = self.resolve(policy, alias)
        stream = bool(body.get("stream"))
        headers = request.headers
        ctx = CallContext(
            request_id=request_id_of(request),
            client_request_id=client_request_id_of(request),
            policy=policy,
            model_alias=alias,
            route=route,
            body=body,
            user_id=chat_user_id(body, headers),
            session_id=chat_session_id(headers),
            mode_header=headers.get("x-memento-mode"),
            stream=stream,
        )
        ctx.trace_id, ctx.span_id = span_ids(root)
        root.set_attribute("gen_ai.request.model", alias)
        if ctx.user_id:
            root.set_attribute("enduser.id", str(ctx.user_id))
        if ctx.session_id:
            root.set_attribute("memento.session_id", ctx.session_id)
        # A tenant without memory skips the hooks entirely: a plain pass-through proxy.
        with_memory = self.assemble_streams and policy.memory.enabled
        prepared = await self.prepare(ctx) if with_memory else PreparedCall(body=body)
        target = Target(alias, route, policy.limits.connect_timeout_s)
        upstream = self.upstreams.for_route(route)
        span = start_upstream_span(alias, route.model, is_passthrough(route))
        upstream_started = time.monotonic_ns()
        if stream:
            try:
                with trace.use_span(span, end_on_exit=False):
                    opened = await upstream.chat_stream(target, prepared.body)
            except BaseException as exc:
                record_failure(span, exc)
                span.end()
                raise
            assembler = StreamAssembler() if with_memory else None
            first_chunk = [True]

            def observe(chunk: bytes) -> None:
                if first_chunk:
                    first_chunk.clear()
                    record_first_token(span, upstream_started)
                if assembler is not None:
                    assembler.feed(chunk)

            async def on_complete() -> None:
                _log_call(ctx, 200, started)
                if assembler is not None:
                    answer = assembler.result()
                    if "error" in answer:
                        span.set_attribute("memento.stream.incomplete", answer["error"])
                    else:
                        record_response(span, answer)
                    await self.finish(ctx, prepared, answer)

            relay = SSERelay(
                opened,
                headers={**opened.headers, **memory_headers(prepared)},
                observe=observe,
                on_complete=on_complete,
            )
            return EndSpansAfter(relay, span, root)
        with trace.use_span(span, end_on_exit=True):
            reply = await upstream.chat(target, prepared.body)
            record_first_token(span, upstream_started)
            record_http_status(span, reply.status)
            answer = _json_or_none(reply.body)
            record_response(span, answer)
        _log_call(ctx, reply.status, started)
        if with_memory:
            await self.finish(ctx, prepared, answer)
        reply_headers = {**reply.headers, **memory_headers(prepared)}
        return Response(reply.body, reply.status, headers=reply_headers)

    async def embeddings(self, request: Request) -> Response:
        policy = authenticate(request)
        body = await read_json_body(request, policy.limits.max_body_bytes)
        alias = validate_embeddings(body)
        route = self.resolve(policy, alias)
        target = Target(alias, route, policy.limits.connect_timeout_s)
        reply = await self.upstreams.for_route(route).embeddings(target, body)
        return Response(reply.body, reply.status, headers=reply.headers)


def memory_headers(prepared: PreparedCall) -> dict[str, str]:
    """How many memories went into the call (`x-memento-memories`), and how many of the user's
    earlier exchanges were still being learned, so their memories could not be (sent only then:
    `x-memento-unlearned-writes`)."""
    headers = {"x-memento-memories": str(prepared.injected_count)}
    if prepared.unlearned_writes:
        headers["x-memento-unlearned-writes"] = str(prepared.unlearned_writes)
    return headers


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested past what Python parses
        return None


def _log_call(ctx: CallContext, status: int, started: float) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(
            "request=%s tenant=%s model=%s stream=%s status=%s ms=%.1f",
            ctx.request_id,
            ctx.policy.tenant,
            ctx.model_alias,
            ctx.stream,
            status,
            (time.perf_counter() - started) * 1000,
        )
