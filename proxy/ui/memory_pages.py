"""The memory pages at `/ui/memories` and `/ui/quarantine`: the tenant's memory browser.

A list per user (or all users), paginated; a search that ranks as the hot path does; one memory
with its trust signals, its versions and the request that wrote it; and the quarantine review,
whose Release and Reject buttons do what `POST /v1/memories/quarantine/{id}/approve|reject` do.
Same login as the trace pages, and no more than the memory API shows to the same key: memory
text is shown here (the API returns it), while the trace pages follow `tracing.content`. Each
page names its JSON twin under `/v1/` and answers it itself with `?format=json` (the lists but
the search), under the page's login.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from proxy.app_state import memory_store_of
from proxy.errors import ProxyError, bad_request, unavailable
from proxy.memory import quarantine
from proxy.memory.retrieve import retrieve
from proxy.policy import Policy
from proxy.shapes import PageRequest, memory_json, memory_page_json
from proxy.ui.pages import (
    SECURITY_HEADERS,
    guarded,
    json_twin,
    page_url,
    read_form,
    render,
    same_origin,
)
from proxy.validation import user_id
from storage.api import MemoryStore
from storage.numbers import INT64_MAX, parse_whole_number
from storage.records import (
    MEMORY_KINDS,
    MEMORY_STATUSES,
    MemoryKind,
    MemoryRecord,
    MemoryStatus,
    Scope,
)

PAGE_SIZE = 50
SEARCH_LIMIT = 20
# An erased memory keeps only its id: the pages show the other statuses.
SHOWN_STATUSES = tuple(s for s in MEMORY_STATUSES if s != "deleted")
MAX_VERSIONS = 50  # a supersession chain is walked at most this far each way


async def memories_page(request: Request) -> Response:
    return await guarded(request, _memories)


async def memory_page(request: Request) -> Response:
    return await guarded(request, _memory)


async def quarantine_page(request: Request) -> Response:
    return await guarded(request, _quarantine)


async def review_action(request: Request) -> Response:
    return await guarded(request, _review)


def _store(request: Request) -> MemoryStore:
    store = memory_store_of(request)
    if store is None:
        raise unavailable("Memory is not running in this proxy process.", code="memory_disabled")
    return store


async def _memories(request: Request, policy: Policy) -> Response:
    store = _store(request)
    params = request.query_params
    user = user_id(params.get("user") or None)
    query = (params.get("q") or "").strip()
    kind = params.get("kind") or None
    status = params.get("status") or None
    if kind is not None and kind not in MEMORY_KINDS:
        raise bad_request(f"Kind must be one of {', '.join(MEMORY_KINDS)}.", param="kind")
    if status is not None and status not in SHOWN_STATUSES:
        message = (
            f"Status must be one of {', '.join(SHOWN_STATUSES)}; erased memories are left out "
            "here (GET /v1/memories?status=deleted lists what is left of them)."
        )
        raise bad_request(message, param="status")
    offset = _offset(params.get("offset"))
    context: dict[str, Any] = {
        "tenant": policy.tenant,
        "user": user or "",
        "q": query,
        "kind": kind or "",
        "status_filter": status or "",
        "kinds": MEMORY_KINDS,
        "statuses": SHOWN_STATUSES,
        "offset": offset,
    }
    if query:
        if user is None:
            context["problem"] = "Search needs a user: memories are searched one user at a time."
            return render("memories.html", **context, rows=[], searched=True)
        ranked = await retrieve(
            store,
            Scope(policy.tenant, user),
            query,
            policy.memory,
            guard_policy=policy,
            include_shared=bool(policy.memory.shared_kinds),
            limit=SEARCH_LIMIT,
        )
        rows = [{"record": item.record, "score": item.score} for item in ranked]
        return render("memories.html", **context, rows=rows, searched=True)
    records = await store.list(
        Scope(policy.tenant, user),
        kinds=[kind] if kind else None,
        statuses=[status] if status else None,
        limit=PAGE_SIZE + 1,
        offset=offset,
        all_users=user is None,
    )
    query_of = {"user": user, "kind": kind, "status": status}
    after = await _cursor(
        store,
        Scope(policy.tenant, user),
        offset,
        kinds=[kind] if kind else None,
        statuses=[status] if status else None,
        all_users=user is None,
    )
    context["json_url"] = page_url("/v1/memories", **query_of, limit=PAGE_SIZE, after=after)
    context["twin_url"] = page_url("/ui/memories", **query_of, offset=offset, format="json")
    page = PageRequest(PAGE_SIZE, after)
    if (twin := json_twin(request, memory_page_json(records, page))) is not None:
        return twin
    context["next_url"] = (
        page_url("/ui/memories", **query_of, offset=offset + PAGE_SIZE)
        if len(records) > PAGE_SIZE
        else None
    )
    context["previous_url"] = (
        page_url("/ui/memories", **query_of, offset=max(0, offset - PAGE_SIZE)) if offset else None
    )
    rows = [{"record": record, "score": None} for record in records[:PAGE_SIZE]]
    return render("memories.html", **context, rows=rows, searched=False)


async def _memory(request: Request, policy: Policy) -> Response:
    store = _store(request)
    memory_id = request.path_params["memory_id"]
    record = await _find(store, policy.tenant, memory_id)
    if record is None:
        message = f"No memory '{memory_id}' in tenant {policy.tenant}."
        raise ProxyError(404, message, param="memory_id", code="memory_not_found")
    if (twin := json_twin(request, memory_json(record))) is not None:
        return twin
    return render(
        "memory.html",
        tenant=policy.tenant,
        memory=record,
        versions=await versions(store, record),
        edits=await store.edits(policy.tenant, record.id),
        trust_total=round(sum(float(r.get("delta", 0.0)) for r in record.trust_reasons), 3),
    )


async def versions(store: MemoryStore, record: MemoryRecord) -> list[MemoryRecord]:
    """Every version of a memory, oldest first: the records it supersedes and that supersede
    it (consolidation's UPDATE, an edit of a preference), erased ones left out."""
    older = await _chain(store, record, "supersedes")
    newer = await _chain(store, record, "superseded_by")
    return [*reversed(older), record, *newer]


async def _chain(store: MemoryStore, record: MemoryRecord, link: str) -> list[MemoryRecord]:
    """The records reached from `record` by following `link`, at most MAX_VERSIONS of them."""
    chain: list[MemoryRecord] = []
    current = record
    while (next_id := getattr(current, link)) and len(chain) < MAX_VERSIONS:
        found = await _find(store, record.tenant_id, next_id)
        if found is None:
            break
        chain.append(found)
        current = found
    return chain


async def _quarantine(request: Request, policy: Policy) -> Response:
    store = _store(request)
    user = user_id(request.query_params.get("user") or None)
    offset = _offset(request.query_params.get("offset"))
    records = await store.list(
        Scope(policy.tenant, user),
        kinds=["fact", "preference", "case"],
        statuses=["quarantined"],
        limit=PAGE_SIZE + 1,
        offset=offset,
        all_users=user is None,
    )
    records = await quarantine.expire_quarantine(store, records, policy.sanitizer)
    after = await _cursor(
        store,
        Scope(policy.tenant, user),
        offset,
        kinds=["fact", "preference", "case"],
        statuses=["quarantined"],
        all_users=user is None,
    )
    page = PageRequest(PAGE_SIZE, after)
    if (twin := json_twin(request, memory_page_json(records, page))) is not None:
        return twin
    return render(
        "quarantine.html",
        tenant=policy.tenant,
        user=user or "",
        records=records[:PAGE_SIZE],
        reviewed=request.query_params.get("reviewed") or "",
        json_url=page_url("/v1/memories/quarantine", user=user, limit=PAGE_SIZE, after=after),
        twin_url=page_url("/ui/quarantine", user=user, offset=offset, format="json"),
        next_url=(
            page_url("/ui/quarantine", user=user, offset=offset + PAGE_SIZE)
            if len(records) > PAGE_SIZE
            else None
        ),
    )


async def _review(request: Request, policy: Policy) -> Response:
    store = _store(request)
    if not same_origin(request):
        raise ProxyError(403, "Review memories from the quarantine page of this proxy.")
    decision = request.path_params["decision"]
    if decision not in ("approve", "reject"):
        raise ProxyError(404, "A quarantined memory is approved or rejected.")
    memory_id = request.path_params["memory_id"]
    form = await read_form(request)
    try:
        await quarantine.review(
            store,
            policy.tenant,
            memory_id,
            "approve" if decision == "approve" else "reject",
            policy.sanitizer,
            actor="admin-ui",
            note=form.get("note") or None,
        )
    except quarantine.ReviewError as error:
        raise ProxyError(error.status, str(error), code=error.code) from error
    back = page_url(
        "/ui/quarantine", user=form.get("user") or None, reviewed=f"{decision}:{memory_id}"
    )
    return RedirectResponse(back, status_code=303, headers=SECURITY_HEADERS)


async def _find(store: MemoryStore, tenant_id: str, memory_id: str) -> MemoryRecord | None:
    found = await store.get_many(tenant_id, [memory_id])
    if not found or found[0].status == "deleted":
        return None
    return found[0]


def _offset(raw: str | None) -> int:
    if not raw:
        return 0
    offset = parse_whole_number(raw)
    if offset is None:
        raise bad_request(
            f"offset must be a whole number from 0 to {INT64_MAX}; got {raw!r}.", param="offset"
        )
    return offset


async def _cursor(
    store: MemoryStore,
    scope: Scope,
    offset: int,
    *,
    kinds: Sequence[MemoryKind] | None,
    statuses: Sequence[MemoryStatus] | None,
    all_users: bool,
) -> str | None:
    """The id just before this page, as the `/v1/` lists' `after=` wants it: the API pages
    by cursor and refuses `offset`, so a twin link carrying the page's offset was a 400."""
    if offset <= 0:
        return None
    before = await store.list(
        scope, kinds=kinds, statuses=statuses, limit=1, offset=offset - 1, all_users=all_users
    )
    return before[0].id if before else None


def routes() -> list[Route]:
    return [
        Route("/ui/memories", memories_page, methods=["GET"]),
        Route("/ui/memories/{memory_id}", memory_page, methods=["GET"]),
        Route("/ui/quarantine", quarantine_page, methods=["GET"]),
        Route("/ui/quarantine/{memory_id}/{decision}", review_action, methods=["POST"]),
    ]
