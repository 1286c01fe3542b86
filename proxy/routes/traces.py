"""The trace API: `GET /v1/traces` and `GET /v1/traces/{request_id}`, scoped to the caller's tenant.

A trace is named by the proxy's request id (the response's `x-request-id`); the id a client sent
(`x-client-request-id`) is an attribute of the request span, searched with
`GET /v1/traces?client_request_id=...`, which lists every call sent with it.

A trace is answered as `trace_document` (proxy/shapes.py) renders it, the shape every view of a
trace shares: this JSON, the `/ui/` page and `memento-proxy trace`. When the tenant's
`tracing.content` allows, `with_memory_texts` adds each memory's text, from the memory store,
under the same rule as text in spans.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.app_state import memory_store_of, span_store_of
from proxy.auth import authenticate
from proxy.errors import ProxyError, bad_request
from proxy.shapes import trace_document, with_memory_texts
from storage.numbers import parse_whole_number

MAX_LIST_LIMIT = 500
DEFAULT_LIST_LIMIT = 50


def parse_limit(raw: str | None) -> int:
    """`limit` query parameter: 1..MAX_LIST_LIMIT, default DEFAULT_LIST_LIMIT."""
    if raw is None or raw == "":
        return DEFAULT_LIST_LIMIT
    limit = parse_whole_number(raw, 1, MAX_LIST_LIMIT)
    if limit is None:
        raise bad_request(
            f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}; got {raw!r}.",
            param="limit",
        )
    return limit


def trace_not_found(request_id: str) -> ProxyError:
    return ProxyError(
        404,
        f"No trace for request id '{request_id}' in this tenant. Request ids come from the "
        "x-request-id response header; traces appear within a second or two and are kept for "
        "the policy's tracing.retention_days. An id your client sent (x-client-request-id) "
        "is searched with GET /v1/traces?client_request_id=ID.",
        param="request_id",
        code="trace_not_found",
    )


async def list_traces(request: Request) -> Response:
    policy = authenticate(request)
    limit = parse_limit(request.query_params.get("limit"))
    user = request.query_params.get("user") or None
    client_id = request.query_params.get("client_request_id") or None
    data = await span_store_of(request).list_traces(
        policy.tenant, limit=limit, user_id=user, client_request_id=client_id
    )
    return JSONResponse({"object": "list", "data": data})


async def get_trace(request: Request) -> Response:
    policy = authenticate(request)
    request_id = request.path_params["request_id"]
    rows = await span_store_of(request).get_trace(policy.tenant, request_id)
    if not rows:
        raise trace_not_found(request_id)
    doc = trace_document(request_id, rows)
    await with_memory_texts(doc, memory_store_of(request), policy.tenant, policy.tracing)
    return JSONResponse(doc)


def routes() -> list[Route]:
    return [
        Route("/v1/traces", list_traces, methods=["GET"]),
        Route("/v1/traces/{request_id}", get_trace, methods=["GET"]),
    ]
