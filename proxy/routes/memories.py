"""The memory API, tenant-authenticated: list, search, get, create, update, delete, export, import.

`POST /v1/memories` stores a record as given (source `import`, still sanitized: the verdict sets
its status); `created_at` keeps an imported record's original date. Kind `lesson` is refused
there, in the import and in PATCH: lessons are the defence's own memory of attacks, made only by
the sanitizer and the quarantine review. A PATCH of the text is a new
version of the memory: sanitized again, and its key text (unless sent too), vector and index row
follow the new text. `GET /v1/memories` answers cursor pages (proxy/routes/pagination.py).
`POST /v1/memories/search` ranks exactly as the hot path does, scores included, in the scope a
chat call with that user reads (no user: the tenant-shared scope, if the policy gives anonymous
calls memory; else a 400 naming `user`). `DELETE /v1/users/{user}/memories` erases all of one
user's content. Export and import use JSONL, one memory per line (import:
proxy/routes/memory_import.py).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from proxy.app_state import pipeline_of, tenant_models
from proxy.auth import authenticate
from proxy.errors import ProxyError, bad_request
from proxy.memory.candidates import Candidate
from proxy.memory.model_call import CallModel
from proxy.memory.new_memory import STATUS_FOR_VERDICT, memory_from_verdict
from proxy.memory.query import resolve_access
from proxy.memory.retrieve import retrieve
from proxy.memory.sanitize import Sanitizer
from proxy.policy import Policy
from proxy.routes.memory_fields import (
    LESSON_MESSAGE,
    client_kind,
    kind_field,
    memory_cursor,
    object_field,
    strings_field,
    text_field,
    timestamp_field,
)
from proxy.routes.memory_import import import_memories, import_outcome, list_imports
from proxy.routes.pagination import page_request
from proxy.shapes import memory_json, memory_page_json
from proxy.tracing import TracingHandle
from proxy.validation import read_json_body, user_id
from storage.api import MemoryStore
from storage.records import (
    MEMORY_STATUSES,
    MemoryRecord,
    MemoryStatus,
    Scope,
)

__all__ = ["memory_routes"]

_PATCHABLE = {"text", "key_text", "metadata", "fields", "tags", "keywords", "expires_at", "kind"}
_PATCH_STATUSES = ("active", "quarantined", "rejected")
_CREATABLE = {
    "user",
    "kind",
    "text",
    "key_text",
    "fields",
    "metadata",
    "tags",
    "keywords",
    "created_at",
}


def not_found(memory_id: str) -> ProxyError:
    return ProxyError(
        404,
        f"No memory {memory_id!r} for this key's tenant; list them with GET /v1/memories.",
        code="memory_not_found",
    )


async def create_memory(
    store: MemoryStore, models: CallModel, policy: Policy, item: dict[str, Any]
) -> MemoryRecord:
    """Sanitize one API record and store it as given, with the verdict's status."""
    if not isinstance(item, dict):
        raise bad_request("The body must be a JSON object with 'kind' and 'text'.")
    unknown = set(item) - _CREATABLE
    if unknown:  # a field silently dropped (expires_at, status) would be a surprise later
        raise bad_request(
            f"Unknown field {', '.join(sorted(unknown))}; a new memory takes "
            f"{', '.join(sorted(_CREATABLE))} (the import takes every exported field).",
            param=sorted(unknown)[0],
        )
    kind = client_kind(item.get("kind"))
    text = text_field(item.get("text"))
    user = user_id(item.get("user"))
    created_at = timestamp_field(item.get("created_at"), "created_at")
    key_text = item.get("key_text")
    candidate = Candidate(
        kind=kind,
        text=text,
        source_role="import",
        key_text=text_field(key_text, "key_text") if key_text is not None else "",
        fields=object_field(item.get("fields"), "fields"),
        metadata=object_field(item.get("metadata"), "metadata"),
        created_at=created_at,
    )
    scope = Scope(policy.tenant, user)
    sanitizer = Sanitizer(store, models, log_content=policy.logging.log_content)
    (verdict,) = await sanitizer.assess(scope, [candidate], policy.sanitizer)
    memory = memory_from_verdict(
        candidate,
        verdict,
        policy,
        valid_from=candidate.created_at,
        tags=strings_field(item.get("tags"), "tags"),
        keywords=strings_field(item.get("keywords"), "keywords"),
    )
    (record,) = await store.add(scope, [memory])
    return record


async def list_memories(request: Request) -> Response:
    policy = authenticate(request)
    store = pipeline_of(request).store.memories
    user = user_id(request.query_params.get("user"))
    kind = request.query_params.get("kind")
    status = request.query_params.get("status")
    kinds = [kind_field(kind)] if kind is not None else None
    statuses: list[MemoryStatus] | None = None
    if status is not None:
        if status not in MEMORY_STATUSES:
            message = f"'status' must be one of {', '.join(MEMORY_STATUSES)}."
            raise bad_request(message, param="status")
        statuses = [status]
    page = page_request(request)
    records = await store.list(
        Scope(policy.tenant, user),
        kinds=kinds,
        statuses=statuses,
        limit=page.fetch,
        all_users=user is None,
        after=await memory_cursor(store, policy.tenant, page.after),
    )
    return JSONResponse(memory_page_json(records, page))


async def post_memory(request: Request) -> Response:
    policy = authenticate(request)
    store = pipeline_of(request).store.memories
    body = await read_json_body(request, policy.limits.max_body_bytes)
    record = await create_memory(store, tenant_models(request, policy), policy, body)
    return JSONResponse(memory_json(record), status_code=201)


async def _find(request: Request, policy: Policy) -> MemoryRecord:
    memory_id = request.path_params["memory_id"]
    found = await pipeline_of(request).store.memories.get_many(policy.tenant, [memory_id])
    if not found or found[0].status == "deleted":
        raise not_found(memory_id)
    return found[0]


async def get_memory(request: Request) -> Response:
    policy = authenticate(request)
    return JSONResponse(memory_json(await _find(request, policy)))


async def patch_memory(request: Request) -> Response:
    policy = authenticate(request)
    store = pipeline_of(request).store.memories
    record = await _find(request, policy)
    body = await read_json_body(request, policy.limits.max_body_bytes)
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object of fields to change.")
    unknown = set(body) - _PATCHABLE - {"status"}
    if unknown:
        allowed = ", ".join(sorted(_PATCHABLE | {"status"}))
        raise bad_request(f"Cannot change {', '.join(sorted(unknown))}; changeable: {allowed}.")
    changes: dict[str, Any] = dict(body)
    if record.kind == "lesson":
        raise bad_request(LESSON_MESSAGE, param="kind")
    if "kind" in changes:
        client_kind(changes["kind"])
    if "status" in changes:
        _check_status_change(record, changes["status"])
    if "expires_at" in changes:
        changes["expires_at"] = timestamp_field(changes["expires_at"], "expires_at")
    for name in ("fields", "metadata"):
        if name in changes:
            changes[name] = object_field(changes[name], name)
    for name in ("tags", "keywords"):
        if name in changes:
            changes[name] = strings_field(changes[name], name)
    if "key_text" in changes:
        changes["key_text"] = text_field(changes["key_text"], "key_text")
    if "text" in changes:
        # A new text is a new version: the store re-derives the key text (unless one is sent
        # too), the vector and the index row from it. The record itself is no witness for it.
        text = text_field(changes["text"])
        candidate = Candidate(
            kind=changes.get("kind", record.kind),
            text=text,
            source_role="import",
            key_text=changes.get("key_text", ""),
            same_as=frozenset({record.id}),
        )
        sanitizer = Sanitizer(
            store, tenant_models(request, policy), log_content=policy.logging.log_content
        )
        (verdict,) = await sanitizer.assess(record.scope, [candidate], policy.sanitizer)
        changes["text"] = verdict.text
        changes["trust"] = verdict.trust
        changes["trust_reasons"] = verdict.reasons_as_dicts()
        if verdict.verdict != "accept":
            changes["status"] = STATUS_FOR_VERDICT[verdict.verdict]
    updated = await store.update(record.scope, record.id, **changes)
    if updated is None:
        raise not_found(record.id)
    return JSONResponse(memory_json(updated))


def _check_status_change(record: MemoryRecord, status: Any) -> None:
    """A status a PATCH may set: any memory may be held for review (`quarantined`); making
    one servable or rejecting it is a review (`POST /v1/memories/quarantine/{id}/approve` or
    `/reject`), which also moves its trust and teaches or retires lessons."""
    if status not in _PATCH_STATUSES:
        raise bad_request(f"'status' may be set to {', '.join(_PATCH_STATUSES)}.", param="status")
    if status in (record.status, "quarantined"):
        return
    review = "approve" if status == "active" else "reject"
    if review == "approve" and record.status != "quarantined":
        raise ProxyError(
            409,
            f"Memory {record.id!r} is {record.status} and cannot be made active.",
            param="status",
            code="not_quarantined",
        )
    raise ProxyError(
        409,
        f"Memory {record.id!r} is {record.status}; to make it {status}, review it: POST "
        f"/v1/memories/quarantine/{record.id}/{review} (its trust and the sanitizer's lessons "
        "follow the review).",
        param="status",
        code="needs_review",
    )


async def delete_memory(request: Request) -> Response:
    policy = authenticate(request)
    record = await _find(request, policy)
    await pipeline_of(request).store.memories.delete(record.scope, record.id, actor="api")
    return JSONResponse({"object": "memory.deleted", "id": record.id, "deleted": True})


async def delete_user_memories(request: Request) -> Response:
    policy = authenticate(request)
    user = user_id(_path_user(request))
    assert user is not None
    store = pipeline_of(request).store
    count = await store.memories.delete_user(policy.tenant, user, actor="api")
    await store.responses.delete_user_responses(policy.tenant, user)  # their conversations too
    tracing: TracingHandle | None = getattr(request.app.state, "tracing", None)
    if tracing is not None:  # their traces too, which may hold their words
        await tracing.forget_user(policy.tenant, user)
    return JSONResponse({"object": "user.memories.deleted", "user": user, "deleted": count})


def _path_user(request: Request) -> str:
    """The user id of `/v1/users/{user}/memories` as the client encoded it: percent-escapes
    that are not UTF-8 (`%ff`) are refused as a header's would be, not read as U+FFFD (which
    would erase another user's memories)."""
    raw = request.scope.get("raw_path")
    if not raw:  # a server that does not pass the raw path: as decoded
        return str(request.path_params["user"])
    segment = raw.split(b"?", 1)[0].partition(b"/v1/users/")[2].removesuffix(b"/memories")
    try:
        return unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(
            "The user id in the path is not valid UTF-8 once its %-escapes are decoded. "
            "Percent-encode the id's UTF-8 bytes.",
            param="user",
            code="invalid_unicode",
        ) from None


class _AnyText(Convertor[str]):
    """A path parameter of any characters, '/' and line breaks included (the `path`
    convertor stops at a line break, so such an id met a 404 instead of the user id rule's 400)."""

    regex = "(?s:.+)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any_text", _AnyText())


async def search_memories(request: Request) -> Response:
    policy = authenticate(request)
    store = pipeline_of(request).store.memories
    body = await read_json_body(request, policy.limits.max_body_bytes)
    if not isinstance(body, dict):
        raise bad_request('Send {"user", "query", "limit"}.')
    query = text_field(body.get("query"), "query")
    limit = body.get("limit", 10)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 200:
        raise bad_request("'limit' must be an integer from 1 to 200.", param="limit")
    # The scope a chat call with this user would read: without a user, the tenant-shared
    # memories when the policy gives anonymous calls memory, else nothing to search.
    access = resolve_access(
        policy, user_id=user_id(body.get("user")), session_id=None, mode_header=None
    )
    if access.scope is None:
        raise bad_request(
            "'user' is required: memories belong to a user, and this tenant's policy gives "
            "calls without a user no memory (memory.anonymous: off). Send the user whose "
            "memories to search.",
            param="user",
        )
    started = time.perf_counter()
    ranked = await retrieve(
        store,
        access.scope,
        query,
        policy.memory,
        guard_policy=policy,
        include_shared=access.include_shared,
        limit=limit,
    )
    data = [{**memory_json(item.record), "scores": item.parts()} for item in ranked]
    took_ms = round((time.perf_counter() - started) * 1000, 2)
    return JSONResponse({"object": "list", "data": data, "took_ms": took_ms})


async def export_memories(request: Request) -> Response:
    policy = authenticate(request)
    store = pipeline_of(request).store.memories
    user = user_id(request.query_params.get("user"))

    async def lines() -> AsyncIterator[bytes]:
        after, page = None, 500
        while True:
            # By cursor, not offset: a memory written meanwhile shifts no page.
            records = await store.list(
                Scope(policy.tenant, user), limit=page, all_users=user is None, after=after
            )
            for record in records:
                # Lessons are the defence's own state, which no client may write back.
                if record.status != "deleted" and record.kind != "lesson":
                    yield (
                        json.dumps(dataclasses.asdict(record), ensure_ascii=False) + "\n"
                    ).encode()
            if len(records) < page:
                return
            after = records[-1].id

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def memory_routes() -> list[BaseRoute]:
    return [
        Route("/v1/memories", list_memories, methods=["GET"]),
        Route("/v1/memories", post_memory, methods=["POST"]),
        Route("/v1/memories/search", search_memories, methods=["POST"]),
        Route("/v1/memories/export", export_memories, methods=["GET"]),
        Route("/v1/memories/import", import_memories, methods=["POST"]),
        Route("/v1/memories/imports", list_imports, methods=["GET"]),
        Route("/v1/memories/imports/{import_id}", import_outcome, methods=["GET"]),
        Route("/v1/memories/{memory_id}", get_memory, methods=["GET"]),
        Route("/v1/memories/{memory_id}", patch_memory, methods=["PATCH"]),
        Route("/v1/memories/{memory_id}", delete_memory, methods=["DELETE"]),
        Route("/v1/users/{user:any_text}/memories", delete_user_memories, methods=["DELETE"]),
    ]
