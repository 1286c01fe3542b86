"""The read path, inside the request span: scope → query → retrieve → budget → inject.

First the call's scope and mode (`query.resolve_access`); then read your writes: wait for the
user's earlier exchanges to be learned (`pending.py`, bounded by
`memory.retrieval.wait_for_writes_ms`); then the query is built and retrieval runs, bounded by
the policy's retrieval deadline. A process runs a few retrievals at once and queues the rest in
arrival order (`RetrievalSlots`): on a busy box, thirty-two retrievals sharing the CPU would
each take thirty-two times as long and all miss the deadline, where queued ones each run at
the speed of a few. The wait for a slot has its own bound (`memory.retrieval.queue_ms`). On
failure the call goes through without memory (fail-open) unless the policy is fail-closed, and
the span says why. What fits the token budget is injected as one block. The request and the
memories it injected are logged for feedback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry import trace

from proxy.errors import bad_request
from proxy.memory.budget import BudgetPlan, available_tokens, encoding_name_for, fit_to_budget
from proxy.memory.exchange_job import EXCHANGE_JOB, ExchangeJob
from proxy.memory.inject import render_block
from proxy.memory.pending import NO_WAIT, PendingWrites, WriteWait, answer_key
from proxy.memory.query import InvalidMemoryMode, MemoryAccess, build_query, resolve_access
from proxy.memory.request_log import RequestLogger
from proxy.memory.retrieve import ScoredMemory, retrieve
from proxy.memory.seam import (
    CallContext,
    CallState,
    InjectedMemory,
    MemoryUnavailable,
    PreparedCall,
    Skipped,
)
from proxy.memory.span_attrs import (
    mark_failed,
    record_budget,
    record_injection,
    record_ranked,
    record_wait,
    set_content,
)
from proxy.messages import answer_message
from proxy.metrics import MEMORIES_INJECTED, MEMORY_READ_DURATION, RETRIEVAL_FAILURES
from proxy.tokens import load_encoding
from storage.api import Store
from storage.records import Scope

log = logging.getLogger("memento.memory")
# Retrievals one process runs at once (MEMENTO_RETRIEVAL_SLOTS). Enough to batch concurrent
# queries' embeddings and to overlap a remote store's round trips; few enough that on a
# saturated CPU each retrieval still finishes within its deadline.
DEFAULT_RETRIEVAL_SLOTS = 8
tracer = trace.get_tracer("memento.memory")


class NoSlot(Exception):
    """No retrieval slot came free within the policy's queue time."""


class RetrievalSlots:
    """At most `size` retrievals of this process at once; the others wait in arrival order."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"retrieval slots must be at least 1, got {size}")
        self._free = asyncio.Semaphore(size)

    @property
    def waiting(self) -> int:
        """Retrievals queued for a slot now."""
        return len(self._free._waiters or ())

    @asynccontextmanager
    async def held(self, timeout_s: float) -> AsyncIterator[float]:
        """Hold a slot, waiting up to `timeout_s` for one (`NoSlot` past it); yields the
        milliseconds waited."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                await self._free.acquire()
        except TimeoutError:
            raise NoSlot from None
        try:
            yield (time.perf_counter() - started) * 1000
        finally:
            self._free.release()


class ReadPath:
    """Prepares one chat call: the memories that fit, injected into its body."""

    def __init__(
        self,
        store: Store,
        pending: PendingWrites,
        requests: RequestLogger,
        slots: RetrievalSlots | None = None,
        *,
        shared_queue: bool = False,
    ) -> None:
        self.store = store
        self.pending = pending  # exchanges queued in this process, not yet learned, by user
        self.requests = requests
        self.slots = slots or RetrievalSlots(DEFAULT_RETRIEVAL_SLOTS)
        # Other processes queue exchanges too (serving processes, replicas): a call asks the
        # queue for its user's, not only this process's ledger.
        self.shared_queue = shared_queue

    async def before_call(self, ctx: CallContext) -> PreparedCall:
        started = time.perf_counter()
        prepared = await self._before_call(ctx)
        if prepared.state.access is not None and prepared.state.access.reads:
            MEMORY_READ_DURATION.record(time.perf_counter() - started, {"stage": "before_call"})
            MEMORIES_INJECTED.record(prepared.injected_count)
        return prepared

    async def _before_call(self, ctx: CallContext) -> PreparedCall:
        access = _access(ctx)
        state = CallState(access)
        if access.scope is None or access.mode == "off":
            return PreparedCall(body=ctx.body, state=state)
        if not access.reads:
            state.logged = self.requests.log(ctx, access.scope, [])
            return PreparedCall(body=ctx.body, state=state)
        ranked, waited = await self._retrieve_in_time(ctx, access)
        unlearned = len(waited.unfinished)
        if isinstance(ranked, str):
            state.logged = self.requests.log(ctx, access.scope, [], status="memory_failed")
            return PreparedCall(
                body=ctx.body, unlearned_writes=unlearned, memory_skipped=ranked, state=state
            )
        await load_encoding(encoding_name_for(ctx.route.model))  # at once, unless a route is new
        plan = _budget(ctx, ranked)
        if not plan.selected:
            state.logged = self.requests.log(ctx, access.scope, [])
            return PreparedCall(body=ctx.body, unlearned_writes=unlearned, state=state)
        body = _inject(ctx, plan.selected)
        state.injected = [InjectedMemory(i.record.id, i.record.text) for i in plan.selected]
        state.logged = self.requests.log(ctx, access.scope, plan.selected)
        return PreparedCall(
            body=body,
            injected_count=len(plan.selected),
            unlearned_writes=unlearned,
            changed=True,
            state=state,
        )

    async def _retrieve_in_time(
        self, ctx: CallContext, access: MemoryAccess
    ) -> tuple[list[ScoredMemory] | Skipped, WriteWait]:
        """Ranked candidates (or why there are none, when memory failed and the policy allows
        going on), after waiting for the user's earlier exchanges to be learned; and what was
        waited for."""
        assert access.scope is not None
        with tracer.start_as_current_span("memento.retrieve") as span:
            waited = await self._wait_for_writes(ctx, access.scope)
            record_wait(span, waited)
            started = time.perf_counter()
            ranked = await self._retrieve(ctx, access, span)
            MEMORY_READ_DURATION.record(time.perf_counter() - started, {"stage": "retrieve"})
            return ranked, waited

    async def _wait_for_writes(self, ctx: CallContext, scope: Scope) -> WriteWait:
        """Read your writes: wait (bounded by the policy) for the user's exchanges queued so far.
        A wait that runs out is not an error: retrieval goes on with what is already learned."""
        timeout_ms = ctx.policy.memory.retrieval.wait_for_writes_ms
        if not timeout_ms:
            return NO_WAIT
        if self.shared_queue:
            await self._note_queued_elsewhere(scope)
        # Another process's workers may learn this process's exchanges: the queue says when.
        ask = self.store.queue.unfinished
        waited = await self.pending.wait(scope, timeout_ms / 1000, ctx.conversation, ask)
        if waited.timed_out:
            log.info(
                "request %s retrieves without %d earlier exchanges still being learned after "
                "%.0f ms",
                ctx.request_id,
                len(waited.unfinished),
                waited.waited_ms,
            )
        return waited

    async def _note_queued_elsewhere(self, scope: Scope) -> None:
        """Add to the ledger the user's exchanges another process queued and nobody has
        learned yet (one indexed read); the wait then covers them too."""
        if scope.user_id is None:
            return
        try:
            jobs = await self.store.queue.open_jobs_of(scope.tenant_id, scope.user_id)
        except Exception:  # the wait covers this process's own exchanges meanwhile
            log.exception("could not read the queued exchanges of a user")
            return
        for job in jobs:
            if job.kind == EXCHANGE_JOB:
                answer = answer_message(ExchangeJob.from_json(job.payload).response)
                self.pending.add(scope, job.id, answer_key(answer["content"]))

    async def _retrieve(
        self, ctx: CallContext, access: MemoryAccess, span: trace.Span
    ) -> list[ScoredMemory] | Skipped:
        """Ranked candidates within the retrieval deadline, or why not (fail-open)."""
        policy = ctx.policy
        settings = policy.memory.retrieval
        assert access.scope is not None
        query = build_query(ctx.conversation, settings.query_context_turns)
        set_content(span, "memento.query", policy.tracing, query)
        try:
            async with self.slots.held(settings.queue_ms / 1000) as queued_ms:
                span.set_attribute("memento.retrieve.queued_ms", round(queued_ms, 2))
                MEMORY_READ_DURATION.record(queued_ms / 1000, {"stage": "queue"})
                ranked = await asyncio.wait_for(
                    retrieve(
                        self.store.memories,
                        access.scope,
                        query,
                        policy.memory,
                        guard_policy=policy,
                        include_shared=access.include_shared,
                    ),
                    timeout=settings.deadline_ms / 1000,
                )
        except Exception as exc:  # busy, store down, index error, deadline: fail open or closed
            skipped = _skipped(exc)
            RETRIEVAL_FAILURES.add(1, {"reason": skipped})
            reason = _REASONS.get(skipped) or type(exc).__name__
            mark_failed(span, f"memory unavailable: {reason}", exc, stack=skipped == "error")
            log.warning("memory retrieval failed for request %s: %s", ctx.request_id, reason)
            if policy.memory.fail_closed:
                raise MemoryUnavailable(f"retrieval failed: {reason}") from exc
            span.set_attribute("memento.memory.fail_open", True)
            return skipped
        record_ranked(span, ranked)
        return ranked


def _skipped(exc: Exception) -> Skipped:
    """Why retrieval gave up: no slot in time, past the deadline, or anything else failed."""
    if isinstance(exc, NoSlot):
        return "busy"
    return "deadline" if isinstance(exc, TimeoutError) else "error"


_REASONS: dict[str, str] = {
    "deadline": "deadline exceeded",
    "busy": "no retrieval slot free within the queue time",
}


def _access(ctx: CallContext) -> MemoryAccess:
    """The call's scope and mode; a bad `X-Memento-Mode` is the client's error."""
    try:
        return resolve_access(
            ctx.policy,
            user_id=ctx.user_id,
            session_id=ctx.session_id,
            mode_header=ctx.mode_header,
        )
    except InvalidMemoryMode as exc:
        raise bad_request(str(exc), param="X-Memento-Mode", code="invalid_memory_mode") from None


def _budget(ctx: CallContext, ranked: list[ScoredMemory]) -> BudgetPlan:
    """The ranked memories that fit the room the call leaves in the model's context."""
    budget = ctx.policy.memory.budget
    started = time.perf_counter()
    with tracer.start_as_current_span("memento.budget") as span:
        encoding_name = encoding_name_for(ctx.route.model)
        room = available_tokens(
            ctx.conversation,
            ctx.body,
            ctx.door.requested_output_tokens(ctx.body),
            ctx.route,
            budget,
            encoding_name,
        )
        plan = fit_to_budget(
            ranked,
            room,
            budget,
            k2_cases=ctx.policy.memory.retrieval.k2_cases,
            encoding_name=encoding_name,
        )
        record_budget(span, plan)
    MEMORY_READ_DURATION.record(time.perf_counter() - started, {"stage": "budget"})
    return plan


def _inject(ctx: CallContext, selected: list[ScoredMemory]) -> dict[str, Any]:
    """The call's body with the selected memories as one block, where its door puts it."""
    started = time.perf_counter()
    with tracer.start_as_current_span("memento.inject") as span:
        block = render_block(selected)
        body = ctx.door.with_block(ctx.body, block)
        record_injection(span, selected, block, ctx.policy.tracing)
    MEMORY_READ_DURATION.record(time.perf_counter() - started, {"stage": "inject"})
    return body
