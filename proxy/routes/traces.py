"""The trace API: `GET /v1/traces` and `GET /v1/traces/{request_id}`, scoped to the caller's tenant.

A trace is named by the proxy's request id (the response's `x-request-id`); the id a client sent
(`x-client-request-id`) is an attribute of the request span, searched with
`GET /v1/traces?client_request_id=...`, which lists every call sent with it.

`trace_document` turns one request's stored spans into the shape every view shares: this JSON,
the `/ui/` page and `memento-proxy trace`. The spans form a tree in display order: the request's
own trace first, then the later write-path traces linked to it. `memory` says for every
candidate whether it was injected and why (not), `writes` each write-path verdict as a sentence
(proxy/ui/explain.py). When the tenant's `tracing.content` allows, `with_memory_texts` adds each
memory's text, from the memory store, under the same rule as text in spans.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.auth import authenticate
from proxy.errors import ProxyError, bad_request
from proxy.memory.pipeline import MemoryPipeline
from proxy.policy import TracingPolicy
from proxy.tracing import content_attr
from proxy.ui.explain import explain_memory, explain_writes
from storage.api import MemoryStore, SpanStore
from storage.records import SpanRow
from storage.spans import CLIENT_REQUEST_ID_ATTR, REQUEST_SPAN

MAX_LIST_LIMIT = 500
DEFAULT_LIST_LIMIT = 50


def span_store_of(request: Request) -> SpanStore:
    store: SpanStore | None = getattr(request.app.state, "span_store", None)
    if store is None:
        raise ProxyError(
            503,
            "Tracing is not running in this proxy process yet; retry once /readyz says ready.",
            type="api_error",
            code="tracing_unavailable",
        )
    return store


def parse_limit(raw: str | None) -> int:
    """`limit` query parameter: 1..MAX_LIST_LIMIT, default DEFAULT_LIST_LIMIT."""
    if raw is None or raw == "":
        return DEFAULT_LIST_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIST_LIMIT:
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


def memory_store_of(request: Request) -> MemoryStore | None:
    """The memory store behind this proxy, if memory is running in it."""
    memory = getattr(request.app.state, "memory", None)
    if not isinstance(memory, MemoryPipeline):
        return None
    try:
        return memory.store.memories
    except RuntimeError:  # not started yet
        return None


async def with_memory_texts(
    doc: dict[str, Any], store: MemoryStore | None, tenant_id: str, tracing: TracingPolicy
) -> None:
    """Add each candidate's and each written memory's text, as `tracing.content` allows it
    (nothing when off, masked when redacted); a memory erased since has none."""
    entries = [*doc["memory"]["candidates"], *(w for w in doc["writes"] if w["memory_id"])]
    for entry in entries:
        entry["text"] = None
    if tracing.content == "off" or store is None or not entries:
        return
    ids = list({str(entry.get("id") or entry.get("memory_id")) for entry in entries})
    texts = {
        record.id: record.text
        for record in await store.get_many(tenant_id, ids)
        if record.status != "deleted"
    }
    for entry in entries:
        text = texts.get(str(entry.get("id") or entry.get("memory_id")))
        entry["text"] = None if text is None else content_attr(tracing, text)


def routes() -> list[Route]:
    return [
        Route("/v1/traces", list_traces, methods=["GET"]),
        Route("/v1/traces/{request_id}", get_trace, methods=["GET"]),
    ]


def trace_document(request_id: str, rows: Sequence[SpanRow]) -> dict[str, Any]:
    """One request's spans as a tree in display order, with times relative to the request."""
    ordered = _tree_order(rows)
    root = next((row for row, _ in ordered if row.name == REQUEST_SPAN), ordered[0][0])
    origin = root.start_ns
    spans = [_span_entry(row, depth, origin, root.trace_id) for row, depth in ordered]
    return {
        "object": "trace",
        "request_id": request_id,
        "client_request_id": root.attributes.get(CLIENT_REQUEST_ID_ATTR),
        "trace_id": root.trace_id,
        "user": root.user_id,
        "model": root.attributes.get("gen_ai.request.model"),
        "start": origin / 1e9,
        "duration_ms": _ms(root.end_ns - root.start_ns),
        "status": root.status,
        "memory": explain_memory(spans),
        "writes": explain_writes(spans),
        "spans": spans,
    }


def _tree_order(rows: Sequence[SpanRow]) -> list[tuple[SpanRow, int]]:
    """Depth-first, children by start time; roots (the request, then later work) by start."""
    ids = {(row.trace_id, row.span_id) for row in rows}
    children: dict[tuple[str, str], list[SpanRow]] = {}
    roots: list[SpanRow] = []
    for row in sorted(rows, key=lambda r: (r.start_ns, -r.end_ns)):
        parent = (row.trace_id, row.parent_span_id or "")
        if row.parent_span_id and parent in ids:
            children.setdefault(parent, []).append(row)
        else:
            roots.append(row)
    ordered: list[tuple[SpanRow, int]] = []
    stack = [(row, 0) for row in reversed(roots)]
    while stack:
        row, depth = stack.pop()
        ordered.append((row, depth))
        for child in reversed(children.get((row.trace_id, row.span_id), [])):
            stack.append((child, depth + 1))
    return ordered


def _span_entry(row: SpanRow, depth: int, origin_ns: int, request_trace: str) -> dict[str, Any]:
    return {
        "name": row.name,
        "phase": "request" if row.trace_id == request_trace else "write",
        "depth": depth,
        "trace_id": row.trace_id,
        "span_id": row.span_id,
        "parent_span_id": row.parent_span_id,
        "offset_ms": _ms(row.start_ns - origin_ns),
        "duration_ms": _ms(row.end_ns - row.start_ns),
        "status": row.status,
        "attributes": {key: decode_json_attr(value) for key, value in row.attributes.items()},
        "events": [
            {
                "name": event.get("name"),
                "offset_ms": _ms(int(event.get("time_ns") or origin_ns) - origin_ns),
                "attributes": event.get("attributes", {}),
            }
            for event in row.events
        ],
        "links": row.links,
    }


def decode_json_attr(value: Any) -> Any:
    """Decisions recorded as JSON text (scores, verdicts) come back as structures."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)
