"""Sanitizer admin surface, scoped to the caller's tenant.

- `POST /v1/memories/check`: dry run. Each candidate gets the verdict, trust and reasons the
  write path would give it now (same signals, same store, same policy); nothing is written, no
  lesson is recorded.
- `GET /v1/memories/quarantine`: quarantined memories awaiting review (`?user=&limit=&after=`),
  a page of the same items as `GET /v1/memories`.
- `POST /v1/memories/quarantine/{memory_id}/approve` and `/reject` (optional body
  `{"note": "..."}`): a reviewer's decision, which also teaches the lessons. Reject also takes
  an active memory that turned out harmful: it stops being injected at once.
- `GET /v1/memories/jobs?state=failed`: a page of the tenant's write-path jobs, newest first
  (`state` is queued, running, done or failed; `limit`, `after`). A job that failed
  `max_attempts` times stays as `failed` with its last error.
- `POST /v1/memories/jobs/{job_id}/retry`: queue a failed job again, with a fresh count of
  attempts (after the cause is fixed: an upstream back, an index rebuilt).
"""

from __future__ import annotations

from typing import cast, get_args

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.app_state import memory_store_of, store_of, tenant_models
from proxy.auth import authenticate
from proxy.errors import ProxyError, bad_request, unavailable
from proxy.memory import quarantine
from proxy.memory.sanitize import Sanitizer
from proxy.routes.memory_fields import memory_cursor
from proxy.routes.pagination import page_request
from proxy.shapes import (
    job_json,
    memory_json,
    memory_page_json,
    optional_str,
    page_json,
    parse_candidates,
    verdict_json,
)
from proxy.validation import read_json_body, user_id
from storage.api import JobAdmin, MemoryStore, Store
from storage.numbers import parse_whole_number
from storage.records import JobState, Scope


def _running_store(request: Request) -> Store:
    store = store_of(request)
    if store is None:
        raise unavailable(
            "Memory is not running in this proxy process, so there is no quarantine to review; "
            "start the proxy with memory enabled and retry.",
            code="memory_unavailable",
        )
    return store


def require_store(request: Request) -> MemoryStore:
    return _running_store(request).memories


async def check(request: Request) -> Response:
    policy = authenticate(request)
    if request.headers.get("content-length") == "0":
        raise bad_request(
            'The body is empty. Send {"user": "...", "candidates": [{"text": "...", '
            '"source": "user"}]}.'
        )
    body = await read_json_body(request, policy.limits.max_body_bytes)
    user, session, candidates = parse_candidates(body)
    scope = Scope(policy.tenant, user, session)
    sanitizer = Sanitizer(
        memory_store_of(request),
        tenant_models(request, policy),
        log_content=policy.logging.log_content,
    )
    verdicts = await sanitizer.assess(scope, candidates, policy.sanitizer, dry_run=True)
    return JSONResponse({"object": "list", "data": [verdict_json(v) for v in verdicts]})


async def list_quarantine(request: Request) -> Response:
    """A page of quarantined memories, in the shape and order of `GET /v1/memories`."""
    policy = authenticate(request)
    store = require_store(request)
    user = user_id(request.query_params.get("user"))
    page = page_request(request)
    after = await memory_cursor(store, policy.tenant, page.after)
    while True:
        records = await store.list(
            Scope(policy.tenant, user),
            kinds=["fact", "preference", "case"],
            statuses=["quarantined"],
            limit=page.fetch,
            all_users=user is None,
            after=after,
        )
        waiting = await quarantine.expire_quarantine(store, records, policy.sanitizer)
        if len(waiting) == len(records):  # none expired: the page is whole
            break
    return JSONResponse(memory_page_json(waiting, page))


async def approve(request: Request) -> Response:
    return await _review(request, "approve")


async def reject(request: Request) -> Response:
    return await _review(request, "reject")


async def _review(request: Request, decision: quarantine.ReviewDecision) -> Response:
    policy = authenticate(request)
    store = require_store(request)
    note = None
    if request.headers.get("content-length", "0") != "0":
        body = await read_json_body(request, policy.limits.max_body_bytes)
        note = optional_str(body, "note") if isinstance(body, dict) else None
    try:
        record = await quarantine.review(
            store,
            policy.tenant,
            request.path_params["memory_id"],
            decision,
            policy.sanitizer,
            actor="admin-api",
            note=note,
        )
    except quarantine.ReviewError as error:
        raise ProxyError(error.status, str(error), param="memory_id", code=error.code) from error
    return JSONResponse(memory_json(record))


def _job_admin(request: Request) -> JobAdmin:
    return _running_store(request).queue


async def list_jobs(request: Request) -> Response:
    policy = authenticate(request)
    store = _job_admin(request)
    raw_state = request.query_params.get("state") or None
    states = get_args(JobState)
    if raw_state is not None and raw_state not in states:
        raise bad_request(
            f"state must be one of {', '.join(states)}; got {raw_state!r}.", param="state"
        )
    state = cast("JobState | None", raw_state)
    page = page_request(request)
    after = parse_whole_number(page.after) if page.after is not None else None
    if page.after is not None and after is None:
        raise bad_request(
            f"'after' must be a job id (the last_id of a previous page); got {page.after!r}.",
            param="after",
        )
    jobs = await store.list_jobs(policy.tenant, state=state, limit=page.fetch, after=after)
    return JSONResponse(page_json([job_json(job) for job in jobs], page))


async def retry_job(request: Request) -> Response:
    policy = authenticate(request)
    store = _job_admin(request)
    raw_id = request.path_params["job_id"]
    job_id = parse_whole_number(raw_id)  # None for an id no job can have ("²", 30 digits)
    job = await store.retry_job(policy.tenant, job_id) if job_id is not None else None
    if job is None:
        raise ProxyError(
            404,
            f"No failed job {raw_id!r} for this key's tenant; list them with "
            "GET /v1/memories/jobs?state=failed.",
            param="job_id",
            code="job_not_found",
        )
    return JSONResponse(job_json(job))  # an idle worker claims it at its next poll


def routes() -> list[Route]:
    """Register before any `/v1/memories/{id}` route so these fixed paths win."""
    return [
        Route("/v1/memories/check", check, methods=["POST"]),
        Route("/v1/memories/quarantine", list_quarantine, methods=["GET"]),
        Route("/v1/memories/quarantine/{memory_id}/approve", approve, methods=["POST"]),
        Route("/v1/memories/quarantine/{memory_id}/reject", reject, methods=["POST"]),
        Route("/v1/memories/jobs", list_jobs, methods=["GET"]),
        Route("/v1/memories/jobs/{job_id}/retry", retry_job, methods=["POST"]),
    ]
