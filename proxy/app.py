"""The application, assembled in one visible place: `build_app(settings)`.

Routes: the OpenAI-compatible surface (`/v1/chat/completions` and `/v1/embeddings` in
`proxy.routes.chat`, `/v1/models` here), Anthropic's `/v1/messages` (`proxy.routes.messages`),
the probes (`/healthz`, `/readyz`), and the admin, memory, feedback, trace and UI routes of
`proxy.routes` and `proxy.ui`. Every request gets the proxy's own id (`proxy.request_ids`);
failures become OpenAI-shaped errors (Anthropic-shaped on Anthropic's routes). The lifespan loads
what the first calls would wait for, starts the memory hooks and closes everything in order.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from proxy.app_state import store_of
from proxy.auth import authenticate
from proxy.doors.messages_errors import error_response as messages_error_response
from proxy.errors import (
    ProxyError,
    database_unavailable,
    index_unavailable,
    insufficient_storage,
    model_not_found,
    unauthorized,
)
from proxy.health import Health, watch_memory
from proxy.llm import import_litellm
from proxy.memory.budget import window_needs_litellm
from proxy.memory.pipeline import MemoryPipeline
from proxy.memory.seam import MemoryHooks
from proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.metrics import render as render_metrics
from proxy.metrics_share import SharedMetrics
from proxy.policy import ModelRoute
from proxy.request_ids import RequestIdMiddleware, request_id_of
from proxy.routes.admin import routes as admin_routes
from proxy.routes.chat import ChatRoutes
from proxy.routes.feedback import feedback_routes
from proxy.routes.flow import CallFlow
from proxy.routes.memories import memory_routes
from proxy.routes.messages import MessagesRoutes
from proxy.routes.responses import ResponsesRoutes
from proxy.routes.traces import routes as trace_routes
from proxy.settings import Settings
from proxy.tenants import PolicyRegistry, model_references, refused_keys
from proxy.tokens import encoding
from proxy.tracing import retention_from, setup_tracing
from proxy.ui.pages import page_not_found
from proxy.ui.routes import routes as ui_routes
from proxy.upstreams.registry import Upstreams
from proxy.upstreams.routing import is_passthrough
from storage import open_span_store
from storage.api import DatabaseUnavailable, IndexUnavailable, StorageFull
from storage.postgres.url import database_url

log = logging.getLogger("memento.proxy")


async def _http_exception(request: Request, exc: Exception) -> Response:
    """A route or method the app does not serve, in the shape of the API the path belongs to
    (Anthropic's under `/v1/messages`, OpenAI's elsewhere; the trace page's own under `/ui/`)."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404 and f"{path}/".startswith("/ui/"):
        return await page_not_found(request)
    if exc.status_code == 404:
        message = f"Unknown route {request.method} {path}; see /v1/models."
        error = ProxyError(404, message, code="unknown_url")
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {path}."
        error = ProxyError(405, message, code="method_not_allowed")
    else:
        error = ProxyError(exc.status_code, str(exc.detail))
    if f"{path}/".startswith("/v1/messages/"):
        return messages_error_response(error, request_id_of(request))
    return error.to_response()


def _proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return exc.to_response()


def _index_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("request %s: %s", request_id_of(request), exc)
    return index_unavailable().to_response()


def _database_unavailable(request: Request, exc: Exception) -> Response:
    log.error("request %s: %s", request_id_of(request), exc)
    return database_unavailable().to_response()


def _storage_full(request: Request, exc: Exception) -> Response:
    log.error("request %s: storage full: %s", request_id_of(request), exc)
    return insufficient_storage().to_response()


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
    """Ready once started with tenants and while no component reports a problem (the index, or
    a database out of reach, say); the body lists the problems, names the database (`database`,
    without its password) and the index (`index`: a folder or a bucket's URI), counts write jobs
    given up (`failed_jobs`) and says how far behind the write queue is (`write_queue`: `depth`,
    `oldest_age_s`)."""
    registry: PolicyRegistry = request.app.state.policies
    health: Health = request.app.state.health
    tenants = registry.tenants()
    started = bool(tenants) and request.app.state.started
    body: dict[str, Any] = {"tenants": len(tenants), "policy_problems": len(registry.problems)}
    store = store_of(request)
    if store is not None:
        body["database"] = store.database
        body["index"] = store.index_location
        try:  # a database out of reach fails here, and the store reports it to `health`
            body["failed_jobs"] = await store.queue.count_jobs("failed")
            depths = (await store.queue.depths()).values()
        except DatabaseUnavailable:
            depths = None
        if depths is not None:
            now = time.time()
            body["write_queue"] = {
                "depth": sum(d.jobs for d in depths),
                "oldest_age_s": round(max((d.age_s(now) for d in depths), default=0.0), 3),
            }
    problems = health.problems()
    status = "starting" if not started else "unhealthy" if problems else "ready"
    body = {
        "status": status,
        **body,
        "problems": [
            {"component": p.component, "message": p.message, "since": p.since} for p in problems
        ],
    }
    return JSONResponse(body, status_code=200 if status == "ready" else 503)


async def metrics(request: Request) -> Response:
    """Prometheus' text format (`proxy.metrics`); with `MEMENTO_METRICS_TOKEN` set, only for a
    scraper that sends it as a bearer token."""
    token = request.app.state.settings.metrics_token
    if token is not None:
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise unauthorized(
                "GET /metrics needs the metrics token (MEMENTO_METRICS_TOKEN) as "
                "'Authorization: Bearer <token>'."
            )
    store = store_of(request)
    depths = await store.queue.depths() if store is not None else None
    body = render_metrics(depths)
    shared: SharedMetrics | None = request.app.state.shared_metrics
    if shared is not None:  # one of several serving processes: theirs too
        body = shared.merged(body)
    return Response(body, media_type=METRICS_CONTENT_TYPE)


def _routes(registry: PolicyRegistry) -> list[ModelRoute]:
    policies = (registry.get(tenant) for tenant in registry.tenants())
    return [route for policy in policies if policy for route in policy.models.values()]


def needs_litellm(registry: PolicyRegistry) -> bool:
    """Whether litellm will be used (slow to import and heavy: then it is imported before
    serving, off the event loop, and only then): a route it translates, including a memory model
    named by a litellm string, or a route of a tenant with memory whose token budget needs
    litellm's model info (no `context_window` of its own, and not one of OpenAI's models, whose
    windows are read from litellm's map without it). The built-in echo model needs none."""
    for tenant in registry.tenants():
        policy = registry.get(tenant)
        if policy is None:
            continue
        for _, route in model_references(policy):
            if route.model == "echo":
                continue
            if not is_passthrough(route):
                return True
            if policy.memory.enabled and window_needs_litellm(route):
                return True
    return False


def uses_echo(registry: PolicyRegistry) -> bool:
    return any(r.model == "echo" for r in _routes(registry))


async def _close_quietly(
    memory: MemoryHooks, upstreams: Upstreams, tracing: Any, span_store: Any
) -> None:
    """Close what a failed start-up had opened; a failure here must not hide the first one."""
    for step in (memory.aclose, upstreams.aclose, tracing.shutdown, span_store.close):
        try:
            await step()
        except Exception:
            log.exception("while stopping after a failed start-up")


# Libraries that log what they carry at DEBUG: aiosqlite each statement with its values (memory
# text, queued exchanges), the SDKs and litellm each request's body. Memory and message content
# is logged only where a tenant's policy allows it (`logging.log_content`), which these cannot
# know, so they log at INFO at most, whatever MEMENTO_LOG_LEVEL says.
CONTENT_LOGGERS = ("aiosqlite", "openai", "anthropic", "LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


def quiet_content_loggers() -> None:
    for name in CONTENT_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:  # unset (it would follow the root) or below INFO
            logger.setLevel(logging.INFO)


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc keeps what start-up's imports
    freed: ~15 MB). Elsewhere this does nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


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
    proxy); the hooks are started and closed with the app. `extra_routes` adds surfaces such as the
    admin, feedback and trace APIs.
    """
    quiet_content_loggers()
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
        retrieval_slots=settings.retrieval_slots_per_process,
        shared_queue=settings.processes > 1 or database_url() is not None,
    )
    flow = CallFlow(memory)  # every door's calls go through it
    chat = ChatRoutes(flow, upstreams)
    messages = MessagesRoutes(flow, upstreams)

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
        try:
            await memory.start()
        except BaseException:
            # Start-up failed (a bad MEMENTO_* value, an embedder that cannot load): stop what
            # already runs, or its threads keep the process alive after uvicorn gives up.
            await _close_quietly(memory, upstreams, tracing, span_store)
            raise
        watch_memory(memory, app.state.health)
        shared = None
        if settings.metrics_share_dir is not None:
            shared = SharedMetrics(settings.metrics_share_dir)
            shared.start(lambda: render_metrics(None))
        app.state.shared_metrics = shared
        watcher = None
        if settings.policy_reload_s > 0:
            watcher = asyncio.create_task(registry.watch(settings.policy_reload_s))
        # Everything loaded so far (litellm, the embedding model) lives as long as the process:
        # moving it out of the collector's generations keeps full collections short, which
        # per-request allocations (spans, bodies) would otherwise trigger over the whole heap.
        gc.collect()
        gc.freeze()
        release_free_heap()
        app.state.started = True
        try:
            yield
        finally:
            app.state.started = False
            if watcher is not None:
                watcher.cancel()
            if shared is not None:
                shared.close()
            await memory.aclose()
            await upstreams.aclose()
            await tracing.shutdown()  # after the memory worker drained: its spans are kept
            await span_store.close()

    routes: list[BaseRoute] = [
        Route("/v1/chat/completions", chat.chat, methods=["POST"]),
        Route("/v1/embeddings", chat.embeddings, methods=["POST"]),
        *ResponsesRoutes(flow, upstreams).routes(),
        Route("/v1/messages", messages.create, methods=["POST"]),
        Route("/v1/messages/count_tokens", messages.count_tokens, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
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
            DatabaseUnavailable: _database_unavailable,
        },
    )
    app.add_middleware(RequestIdMiddleware)
    app.state.settings = settings
    app.state.policies = registry
    app.state.upstreams = upstreams
    app.state.memory = memory
    app.state.started = False
    app.state.shared_metrics = None
    app.state.health = Health()
    return app
