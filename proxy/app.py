"""The application, assembled in one visible place: `build_app(settings)`.

Routes: the OpenAI-compatible surface (`/v1/chat/completions`, `/v1/models`, `/v1/embeddings`)
and the probes (`/healthz`, `/readyz`). The chat route authenticates, validates and resolves the
model, hands the call to the memory hooks (`proxy.memory.seam`), calls the upstream, passes the
finished exchange back to the hooks to queue durably, and only then completes the answer (a
stream's final event waits for it): an exchange the client was answered for survives a crash.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry import trace
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.app_state import memory_store_of
from proxy.auth import authenticate
from proxy.errors import (
    ProxyError,
    index_unavailable,
    insufficient_storage,
    internal_error,
    model_not_found,
)
from proxy.health import Health, watch_memory
from proxy.llm import import_litellm
from proxy.memory.pipeline import MemoryPipeline
from proxy.memory.seam import CallContext, MemoryHooks, MemoryUnavailable, NoMemory, PreparedCall
from proxy.policy import ModelRoute, Policy
from proxy.routes.admin import routes as admin_routes
from proxy.routes.feedback import feedback_routes
from proxy.routes.memories import memory_routes
from proxy.routes.traces import routes as trace_routes
from proxy.settings import Settings
from proxy.streaming import SSERelay, StreamAssembler
from proxy.tenants import PolicyRegistry, refused_keys
from proxy.tokens import encoding
from proxy.tracing import (
    EndSpansAfter,
    record_failure,
    record_first_token,
    record_http_status,
    record_response,
    retention_from,
    setup_tracing,
    span_ids,
    start_request_span,
    start_upstream_span,
)
from proxy.ui.pages import page_not_found
from proxy.ui.routes import routes as ui_routes
from proxy.upstream import Target, Upstreams, is_passthrough
from proxy.validation import (
    chat_session_id,
    chat_user_id,
    read_json_body,
    validate_chat,
    validate_embeddings,
)
from storage.api import IndexUnavailable, JobAdmin, StorageFull
from storage.spans import open_span_store

log = logging.getLogger("memento.proxy")
_tracer = trace.get_tracer("memento.proxy")

# What a client may send as its own id: echoed back and searchable, never used as ours.
CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
CLIENT_REQUEST_ID_HEADERS = (b"x-client-request-id", b"x-request-id")


def request_id_of(request: Request) -> str:
    """The proxy's own id of this call (`x-request-id` on the response): unique, ours."""
    rid: str = request.scope["state"]["request_id"]
    return rid


def client_request_id_of(request: Request) -> str | None:
    """The client's correlation id of this call, if it sent a sane one."""
    cid: str | None = request.scope["state"].get("client_request_id")
    return cid


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def client_request_id_from(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The client's own id for the call: `x-client-request-id`, else `x-request-id` (what many
    clients send), when it is 1-128 characters of letters, digits and `._:-`; else None."""
    sent = dict(headers)
    for name in CLIENT_REQUEST_ID_HEADERS:
        given = sent.get(name, b"").decode("latin-1")
        if CLIENT_REQUEST_ID.match(given):
            return given
    return None


class RequestIdMiddleware:
    """Gives every request the proxy's own unique id and puts it on every response
    (`x-request-id`); keeps a client's id as a correlation id, echoed in
    `x-client-request-id`; turns any unexpected exception into an OpenAI-shaped 500 carrying
    the proxy's id.

    A client's id is never the request's id: two calls may send the same one (a reused id, two
    users of one app), and the request log, feedback and traces must never merge them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        client_id = client_request_id_from(scope["headers"])
        state = scope.setdefault("state", {})
        state["request_id"], state["client_request_id"] = request_id, client_id
        headers = [(b"x-request-id", request_id.encode())]
        if client_id is not None:
            headers.append((b"x-client-request-id", client_id.encode()))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            if not started:
                await internal_error(request_id).to_response()(scope, receive, send_with_id)


def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and f"{request.url.path}/".startswith("/ui/"):
        return page_not_found(request)
    if exc.status_code == 404:
        message = f"Unknown route {request.method} {request.url.path}; see /v1/models."
        return ProxyError(404, message, code="unknown_url").to_response()
    if exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
        return ProxyError(405, message, code="method_not_allowed").to_response()
    return ProxyError(exc.status_code, str(exc.detail)).to_response()


def _proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return exc.to_response()


def _index_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("request %s: %s", request_id_of(request), exc)
    return index_unavailable().to_response()


def _storage_full(request: Request, exc: Exception) -> Response:
    log.error("request %s: storage full: %s", request_id_of(request), exc)
    return insufficient_storage().to_response()


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


def _model_entry(alias: str, tenant: str) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": 0, "owned_by": tenant}


async def list_models(request: Request) -> Response:
    policy = authenticate(request)
    data = [_model_entry(alias, policy.tenant) for alias in policy.models]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    policy = authenticate(request)
    alias = request.path_params["model"]
    if alias not in policy.models:
        raise model_not_found(alias, list(policy.models))
    return JSONResponse(_model_entry(alias, policy.tenant))


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready once started with tenants and while no component reports a problem (the index,
    say); the body lists the problems and counts write jobs given up (`failed_jobs`)."""
    registry: PolicyRegistry = request.app.state.policies
    health: Health = request.app.state.health
    tenants = registry.tenants()
    started = bool(tenants) and request.app.state.started
    problems = health.problems()
    status = "starting" if not started else "unhealthy" if problems else "ready"
    body: dict[str, Any] = {
        "status": status,
        "tenants": len(tenants),
        "policy_problems": len(registry.problems),
        "problems": [
            {"component": p.component, "message": p.message, "since": p.since} for p in problems
        ],
    }
    store = memory_store_of(request)
    if isinstance(store, JobAdmin):
        body["failed_jobs"] = await store.count_jobs("failed")
    return JSONResponse(body, status_code=200 if status == "ready" else 503)


def _routes(registry: PolicyRegistry) -> list[ModelRoute]:
    policies = (registry.get(tenant) for tenant in registry.tenants())
    return [route for policy in policies if policy for route in policy.models.values()]


def needs_litellm(registry: PolicyRegistry) -> bool:
    """Whether litellm will be used (slow to import: done before serving): a route reached
    through it, or a tenant with memory, whose token budget reads litellm's model info."""
    policies = (registry.get(tenant) for tenant in registry.tenants())
    if any(policy.memory.enabled for policy in policies if policy):
        return True
    return any(r.model != "echo" and not is_passthrough(r) for r in _routes(registry))


def uses_echo(registry: PolicyRegistry) -> bool:
    return any(r.model == "echo" for r in _routes(registry))


async def _close_quietly(memory: Any, upstreams: Upstreams, tracing: Any, span_store: Any) -> None:
    """Close what a failed start-up had opened; a failure here must not hide the first one."""
    close = getattr(memory, "aclose", None)
    steps = [close] if close is not None else []
    for step in (*steps, upstreams.aclose, tracing.shutdown, span_store.close):
        try:
            await step()
        except Exception:
            log.exception("while stopping after a failed start-up")


def build_app(
    settings: Settings,
    *,
    registry: PolicyRegistry | None = None,
    memory: MemoryHooks | None = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The proxy as an ASGI app.

    `registry` defaults to loading `settings.policies_dir` (raising PolicyFileError when a file
    is invalid, or lists a published key while `settings.host` is not loopback). `memory`
    defaults to the memory pipeline over `settings.data_dir` (pass `NoMemory()` for a plain
    proxy); hooks that have `start()` / `aclose()` coroutines are
    started and closed with the app. `extra_routes` adds surfaces such as the
    admin, feedback and trace APIs.
    """
    registry = registry or PolicyRegistry.load(
        settings.policies_dir, refused_keys=refused_keys(settings.host)
    )
    for warning in registry.warnings:
        log.warning("policy %s", warning)
    upstreams = Upstreams(settings)
    memory = memory or MemoryPipeline(
        registry,
        upstreams,
        data_dir=settings.data_dir,
        embedder=settings.embedder,
        workers=settings.memory_workers,
    )
    service = ChatService(upstreams, memory)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if needs_litellm(registry):
            await asyncio.to_thread(import_litellm)
        if uses_echo(registry):
            await asyncio.to_thread(encoding)  # so the first echo call does not load it
        span_store = await open_span_store(settings.data_dir)
        tracing = setup_tracing(
            settings, span_store, retention=retention_from(registry), health=app.state.health
        )
        app.state.span_store, app.state.tracing = span_store, tracing
        start = getattr(memory, "start", None)
        try:
            if start is not None:
                await start()
        except BaseException:
            # Start-up failed (a bad MEMENTO_* value, an embedder that cannot load): stop what
            # already runs, or its threads keep the process alive after uvicorn gives up.
            await _close_quietly(memory, upstreams, tracing, span_store)
            raise
        watch_memory(memory, app.state.health)
        watcher = None
        if settings.policy_reload_s > 0:
            watcher = asyncio.create_task(registry.watch(settings.policy_reload_s))
        # Everything loaded so far (litellm, the embedding model) lives as long as the process:
        # moving it out of the collector's generations keeps full collections short, which
        # per-request allocations (spans, bodies) would otherwise trigger over the whole heap.
        gc.collect()
        gc.freeze()
        app.state.started = True
        try:
            yield
        finally:
            app.state.started = False
            if watcher is not None:
                watcher.cancel()
            close = getattr(memory, "aclose", None)
            if close is not None:
                await close()
            await upstreams.aclose()
            await tracing.shutdown()  # after the memory worker drained: its spans are kept
            await span_store.close()

    routes: list[BaseRoute] = [
        Route("/v1/chat/completions", service.chat, methods=["POST"]),
        Route("/v1/embeddings", service.embeddings, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *admin_routes(),  # before any /v1/memories/{id} route: fixed paths must win
        *memory_routes(),
        *feedback_routes(),
        *trace_routes(),
        *ui_routes(),
        *extra_routes,
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ProxyError: _proxy_error,
            HTTPException: _http_exception,
            StorageFull: _storage_full,
            IndexUnavailable: _index_unavailable,
        },
    )
    app.add_middleware(RequestIdMiddleware)
    app.state.settings = settings
    app.state.policies = registry
    app.state.upstreams = upstreams
    app.state.memory = memory
    app.state.started = False
    app.state.health = Health()
    return app
