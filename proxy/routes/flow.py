"""The one way a model call goes through the proxy, whichever client API (door) it came through.

The flow authenticates the call and reads its JSON body; the door's reader validates it, resolves
the model and says how to reach the upstream (a `DoorCall`). Then, for every door alike: the
memory hooks (`proxy.memory.seam`) prepare the call; the upstream answers; the finished exchange,
read as a chat.completion through the door, goes back to the hooks to queue durably, and only
then is the answer completed (a stream's final event waits for it): an exchange the client was
answered for survives a crash. Each call runs inside its `memento.request` span, with a
`memento.upstream` child for the model's part.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import authenticate
from proxy.doors.base import Door
from proxy.doors.messages_errors import anthropic_status
from proxy.errors import ProxyError, model_not_found
from proxy.memory.seam import CallContext, MemoryHooks, MemoryUnavailable, NoMemory, PreparedCall
from proxy.metrics import REQUEST_DURATION, REQUESTS, UPSTREAM_ERRORS
from proxy.policy import ModelRoute, Policy
from proxy.request_ids import client_request_id_of, request_id_of
from proxy.streaming import SSERelay
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
from proxy.upstreams.base import Target, UpstreamReply, UpstreamStream
from proxy.upstreams.errors import unparsable_body
from proxy.validation import chat_session_id, read_json_body

log = logging.getLogger("memento.proxy")
_tracer = trace.get_tracer(log.name)

Send = Callable[[Target, dict[str, Any]], Awaitable[UpstreamReply]]
OpenStream = Callable[[Target, dict[str, Any]], Awaitable[UpstreamStream]]


@dataclass
class DoorCall:
    """One call as its door read it: validated, its model resolved, its upstream chosen."""

    body: dict[str, Any]  # the request body as the client sent it
    alias: str
    route: ModelRoute
    door: Door
    user_id: str | None
    stream: bool
    send: Send  # the whole answer from the upstream
    open_stream: OpenStream  # the upstream's stream, in this door's event format
    passthrough: bool  # relayed as it is, not translated (for the upstream span)


# What a door does with an authenticated call's body and headers.
ReadCall = Callable[[Policy, dict[str, Any], Headers], Awaitable[DoorCall]]


def resolve(policy: Policy, alias: str) -> ModelRoute:
    """The tenant's route for a model alias; 404 `model_not_found` naming the ones it has."""
    route = policy.models.get(alias)
    if route is None:
        raise model_not_found(alias, list(policy.models))
    return route


class CallFlow:
    """Calls through any door: memory before, the upstream, memory after."""

    def __init__(self, memory: MemoryHooks) -> None:
        self.memory = memory
        self.assemble_streams = not isinstance(memory, NoMemory)

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

    async def finish(self, ctx: CallContext, prepared: PreparedCall, answer: Any) -> None:
        """Hand the finished exchange (a chat.completion dict) to the memory hooks; never
        raises."""
        try:
            if isinstance(answer, dict):
                await self.memory.after_call(ctx, prepared, answer)
        except Exception:
            log.exception("memory after-call failed for request %s", ctx.request_id)

    async def run(self, request: Request, read: ReadCall, *, api: str) -> Response | EndSpansAfter:
        """The call through door `api` inside its `memento.request` span (ended after a stream,
        for streams), counted in the request metrics."""
        started = time.perf_counter()
        labels = {"api": api, "tenant": "", "stream": "false"}  # filled in as they are known
        status = 500
        root = start_request_span(request_id_of(request), client_request_id_of(request))
        try:
            with trace.use_span(
                root, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                response = await self._run(request, read, root, labels)
        except BaseException as exc:
            record_failure(root, exc)
            root.end()
            status = exc.status if isinstance(exc, ProxyError) else 500
            if api == "messages":  # answered in Anthropic's statuses (a 503 is its 529)
                status = anthropic_status(status)[0]
            _log_failed(request, labels, status, exc, started)
            raise
        else:
            status = response.status_code if isinstance(response, Response) else 200
            if isinstance(response, Response):
                record_http_status(root, response.status_code)
                root.end()
            return response
        finally:
            REQUESTS.add(1, {**labels, "status": str(status)})
            REQUEST_DURATION.record(time.perf_counter() - started, labels)

    async def _run(
        self, request: Request, read: ReadCall, root: trace.Span, labels: dict[str, str]
    ) -> Response | EndSpansAfter:
        started = time.perf_counter()
        with _tracer.start_as_current_span("memento.auth"):
            policy = authenticate(request)
        root.set_attribute("memento.tenant", policy.tenant)
        labels["tenant"] = policy.tenant
        body = await read_json_body(request, policy.limits.max_body_bytes)
        call = await read(policy, body, request.headers)
        request.state.model_alias = call.alias  # for the request line of a call that fails
        labels["stream"] = "true" if call.stream else "false"
        headers = request.headers
        ctx = CallContext(
            request_id=request_id_of(request),
            client_request_id=client_request_id_of(request),
            policy=policy,
            model_alias=call.alias,
            route=call.route,
            body=call.body,
            user_id=call.user_id,
            session_id=chat_session_id(headers),
            mode_header=headers.get("x-memento-mode"),
            stream=call.stream,
            door=call.door,
        )
        ctx.trace_id, ctx.span_id = span_ids(root)
        root.set_attribute("gen_ai.request.model", call.alias)
        root.set_attribute("memento.api", call.door.name)
        if ctx.user_id:
            root.set_attribute("enduser.id", str(ctx.user_id))
        if ctx.session_id:
            root.set_attribute("memento.session_id", ctx.session_id)
        # A tenant without memory skips the hooks entirely: a plain pass-through proxy.
        with_memory = self.assemble_streams and policy.memory.enabled
        prepared = await self.prepare(ctx) if with_memory else PreparedCall(body=call.body)
        target = Target(call.alias, call.route, policy.limits.connect_timeout_s)
        span = start_upstream_span(call.alias, call.route.model, call.passthrough)
        if call.stream:
            with _count_upstream_errors(labels):
                return await self._stream(
                    ctx, call, prepared, target, (span, root), started, with_memory
                )
        upstream_started = time.monotonic_ns()
        with trace.use_span(span, end_on_exit=True), _count_upstream_errors(labels):
            reply = await call.send(target, prepared.body)
            record_first_token(span, upstream_started)
            record_http_status(span, reply.status)
            answer = _chat_answer(call.door, reply)
            if answer is None and reply.status < 400:
                raise unparsable_body(call.alias, reply.status, reply.body)
            record_response(span, answer)
        _log_call(ctx, reply.status, started)
        if with_memory:
            await self.finish(ctx, prepared, answer)
        reply_headers = {**reply.headers, **memory_headers(prepared)}
        return Response(reply.body, reply.status, headers=reply_headers)

    async def _stream(
        self,
        ctx: CallContext,
        call: DoorCall,
        prepared: PreparedCall,
        target: Target,
        spans: tuple[trace.Span, trace.Span],
        started: float,
        with_memory: bool,
    ) -> EndSpansAfter:
        """Relay the upstream's stream; its end waits for the exchange to be queued, and ends
        the `spans` (the upstream's, the request's)."""
        span, root = spans
        upstream_started = time.monotonic_ns()
        try:
            with trace.use_span(span, end_on_exit=False):
                opened = await call.open_stream(target, prepared.body)
        except BaseException as exc:
            record_failure(span, exc)
            span.end()
            raise
        reader = call.door.stream_reader() if with_memory else None
        first_chunk = [True]

        def observe(chunk: bytes) -> None:
            if first_chunk:
                first_chunk.clear()
                record_first_token(span, upstream_started)
            if reader is not None:
                reader.feed(chunk)

        async def on_complete() -> None:
            answer = reader.result() if reader is not None else None
            broken = answer is not None and "error" in answer
            _log_call(ctx, 200, started, "stream_incomplete" if broken else None)
            if answer is not None:
                if broken:
                    span.set_attribute("memento.stream.incomplete", str(answer["error"]))
                else:
                    record_response(span, answer)
                # The stream ends after the handler returned: what finishing records (a shed
                # exchange, the queueing) belongs to this request's span, as for a JSON answer.
                with trace.use_span(root, end_on_exit=False):
                    await self.finish(ctx, prepared, answer)

        relay = SSERelay(
            opened,
            headers={**opened.headers, **memory_headers(prepared)},
            observe=observe,
            on_complete=on_complete,
            final_events=call.door.final_events,
        )
        return EndSpansAfter(relay, span, root)


@contextmanager
def _count_upstream_errors(labels: dict[str, str]) -> Iterator[None]:
    """Count an upstream call that fails (`ProxyError` from the transport) by its status."""
    try:
        yield
    except ProxyError as exc:
        counted = {"api": labels["api"], "tenant": labels["tenant"], "status": str(exc.status)}
        UPSTREAM_ERRORS.add(1, counted)
        raise


def memory_headers(prepared: PreparedCall) -> dict[str, str]:
    """How many memories went into the call (`x-memento-memories`); how many of the user's
    earlier exchanges were still being learned, so their memories could not be (sent only then:
    `x-memento-unlearned-writes`); and why memory was skipped, when retrieval gave up
    (`x-memento-memory-skipped`: `deadline` or `error`)."""
    headers = {"x-memento-memories": str(prepared.injected_count)}
    if prepared.unlearned_writes:
        headers["x-memento-unlearned-writes"] = str(prepared.unlearned_writes)
    if prepared.memory_skipped is not None:
        headers["x-memento-memory-skipped"] = prepared.memory_skipped
    return headers


def _chat_answer(door: Door, reply: UpstreamReply) -> dict[str, Any] | None:
    """A whole answer as a chat.completion dict for tracing and learning; an error answer keeps
    its `error` key (not learned from); None when the body is not a JSON object."""
    try:
        answer = json.loads(reply.body)
    except (ValueError, RecursionError):  # not JSON, or nested past what Python parses
        return None
    if not isinstance(answer, dict):
        return None
    if reply.status >= 400 or answer.get("error") is not None:  # a response has "error": null
        return {"error": answer.get("error") or f"HTTP {reply.status}"}
    return door.chat_answer(answer)


def _log_failed(
    request: Request, labels: dict[str, str], status: int, exc: BaseException, started: float
) -> None:
    """The request line of a call answered with an error (or given up), with the error's code:
    a failing upstream or a refused call is what an operator reads the log for."""
    if isinstance(exc, ProxyError):
        reason = exc.code or exc.type
    elif isinstance(exc, asyncio.CancelledError):
        reason = "cancelled"  # the client went away; nobody saw a status
    else:
        reason = type(exc).__name__
    model = getattr(request.state, "model_alias", "-")
    level = logging.WARNING if status >= 500 else logging.INFO
    call = (request_id_of(request), labels["tenant"] or "-", labels["api"], model)
    _request_line(level, call, labels["stream"] == "true", status, started, reason)


def _log_call(ctx: CallContext, status: int, started: float, problem: str | None = None) -> None:
    """The request line of an answered call; `problem` when its stream ended in an error event
    (the status, sent with the first byte, was 200 all the same)."""
    level = logging.INFO if problem is None else logging.WARNING
    call = (ctx.request_id, ctx.policy.tenant, ctx.door.name, ctx.model_alias)
    _request_line(level, call, ctx.stream, status, started, problem)


def _request_line(
    level: int,
    call: tuple[str, str, str, str],
    stream: bool,
    status: int,
    started: float,
    problem: str | None,
) -> None:
    """One model call in the log: request id, tenant, door, model alias, and how it ended."""
    if log.isEnabledFor(level):
        log.log(
            level,
            "request=%s tenant=%s api=%s model=%s stream=%s status=%s ms=%.1f%s",
            *call,
            stream,
            status,
            (time.perf_counter() - started) * 1000,
            f" error={problem}" if problem else "",
        )
