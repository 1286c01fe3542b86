"""The memory pipeline wired to storage: the `MemoryHooks` the chat route calls.

Hot path (`before_call`, inside the request span): wait for the user's earlier exchanges to be
learned (`pending.py`, bounded by `memory.retrieval.wait_for_writes_ms`), then query → retrieve →
budget → inject, bounded by the policy's retrieval deadline; on failure the call goes through
without memory (fail-open) unless the policy is fail-closed, and the span says why. The request
and the memories it injected are logged for feedback.

Write path (`after_call` only enqueues; a worker runs `learn_from_exchange`): extract → verify
evidence → sanitize → consolidate → write, each a span linked to the request's trace. The chat
route awaits `after_call` before the client has the whole answer, so an answered exchange is in the
durable queue (group-committed with other calls' writes) and its request log can be found by
feedback the moment the client reads the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from proxy.errors import bad_request
from proxy.memory.backlog import HeldJob, QueueBacklog
from proxy.memory.budget import (
    available_tokens,
    context_window,
    encoding_name_for,
    fit_to_budget,
)
from proxy.memory.candidates import Candidate, TrustVerdict
from proxy.memory.consolidate import Decision, Neighbour, decide, decide_with_model
from proxy.memory.extract import (
    Exchange,
    build_exchange,
    extract_with_model,
    extract_with_rules,
    verify_evidence,
)
from proxy.memory.inject import inject_block, render_block
from proxy.memory.learn import Learner, case_outcome_changes
from proxy.memory.pending import NO_WAIT, PendingWrites, WriteWait, answer_key
from proxy.memory.query import InvalidMemoryMode, MemoryAccess, build_query, resolve_access
from proxy.memory.retrieve import ScoredMemory, retrieve
from proxy.memory.sanitize import Sanitizer
from proxy.memory.seam import CallContext, MemoryUnavailable, PreparedCall
from proxy.memory.worker import WritePool
from proxy.policy import ModelRoute, Policy, TracingPolicy
from proxy.tracing import content_attr, json_attr, request_link
from proxy.upstream import Target, Upstreams
from storage.api import Embedder, MemoryStore, RequestStore, WriteQueue
from storage.records import (
    MemoryKind,
    MemoryRecord,
    MemoryStatus,
    NewMemory,
    QueuedJob,
    RequestLog,
    Scope,
)

log = logging.getLogger("memento.memory")
tracer = trace.get_tracer("memento.memory")

EXCHANGE_JOB = "exchange"
_STATUS_FOR_VERDICT: dict[str, MemoryStatus] = {
    "accept": "active",
    "quarantine": "quarantined",
    "reject": "rejected",
}
_NEIGHBOURS = 5


class Store(MemoryStore, RequestStore, WriteQueue, Protocol):
    """What the pipeline needs of storage: `storage.open_store` returns one."""

    async def close(self) -> None: ...


class PolicySource(Protocol):
    def get(self, tenant: str) -> Policy | None: ...


class MemoryPipeline:
    """Retrieve, budget and inject before the call; queue the exchange after it; learn."""

    def __init__(
        self,
        policies: PolicySource,
        upstreams: Upstreams,
        *,
        data_dir: Path | None = None,
        store: Store | None = None,
        embedder: str = "local",
        workers: int = 2,
    ) -> None:
        if store is None and data_dir is None:
            raise ValueError("give the pipeline a store or a data_dir to open one in")
        self.policies = policies
        self.upstreams = upstreams
        self._data_dir = data_dir
        self._embedder_spec = embedder
        self._store = store
        self._owns_store = store is None
        self._workers = workers  # write-path workers of this process; 0 only queues
        self._pool: WritePool | None = None
        self._pending = PendingWrites()  # exchanges queued here, not yet learned, by user
        self._backlog: QueueBacklog | None = None
        self._learner: Learner | None = None
        self._pending_logs: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the memory pipeline is not started")
        return self._store

    @property
    def backlog(self) -> QueueBacklog:
        """Answered exchanges waiting in memory for the queue to accept writes again."""
        if self._backlog is None:
            self._backlog = QueueBacklog(self.store)
        return self._backlog

    @property
    def learner(self) -> Learner:
        if self._learner is None:
            self._learner = Learner(self.store, self.store)
        return self._learner

    async def start(self) -> None:
        """Open the store (loading the embedder) and start the write workers."""
        if self._store is None:
            from storage import open_store

            assert self._data_dir is not None
            embedder = await shared_embedder(self._embedder_spec)
            self._store = await open_store(self._data_dir, embedder)
        await asyncio.to_thread(_warm_tokenizers)
        await asyncio.to_thread(self._warm_context_windows)
        # The first encode and the first index query are slow; pay for them before serving.
        warm_scope = Scope("memento-warm-up", "memento-warm-up")
        await self.store.search(warm_scope, query_text="warm up", embed_query=True, k=1)
        self._pool = WritePool(
            self.store,
            self.learn_from_exchange,
            workers=self._workers,
            pending=self._pending,
            policies=self.policies,
        )
        self._pool.start()

    def _warm_context_windows(self) -> None:
        """Look up every route's context window now: the first look-up imports litellm, which
        must not happen on the event loop in the middle of a request."""
        tenants = getattr(self.policies, "tenants", None)
        for tenant in tenants() if callable(tenants) else []:
            policy = self.policies.get(tenant)
            for route in policy.models.values() if policy else []:
                if route.model != "echo":
                    context_window(route)

    async def flush_request_logs(self) -> None:
        """Wait until every request logged so far is stored (feedback can find it)."""
        if self._pending_logs:
            await asyncio.gather(*self._pending_logs, return_exceptions=True)

    async def aclose(self, drain_timeout_s: float = 10.0) -> None:
        """Drain the write queue (bounded), stop the workers, close the store."""
        await self.flush_request_logs()
        if self._backlog is not None:
            await self._backlog.aclose()
        if self._pool is not None:
            await self._pool.stop(drain_timeout_s)
            self._pool = None
        if self._store is not None and self._owns_store:
            await self._store.close()
            self._store = None

    # -- hot path -----------------------------------------------------------------------------

    async def before_call(self, ctx: CallContext) -> PreparedCall:
        try:
            access = resolve_access(
                ctx.policy,
                user_id=ctx.user_id,
                session_id=ctx.session_id,
                mode_header=ctx.mode_header,
            )
        except InvalidMemoryMode as exc:
            raise bad_request(
                str(exc), param="X-Memento-Mode", code="invalid_memory_mode"
            ) from None
        state: dict[str, Any] = {"access": access, "injected": []}
        if access.scope is None or access.mode == "off":
            return PreparedCall(body=ctx.body, state=state)
        if not access.reads:
            state["logged"] = self._log_request(ctx, access.scope, [])
            return PreparedCall(body=ctx.body, state=state)
        policy = ctx.policy
        ranked, waited = await self._retrieve_in_time(ctx, access)
        unlearned = len(waited.unfinished)
        if ranked is None:
            state["logged"] = self._log_request(ctx, access.scope, [], status="memory_failed")
            return PreparedCall(body=ctx.body, unlearned_writes=unlearned, state=state)
        with tracer.start_as_current_span("memento.budget") as span:
            encoding_name = encoding_name_for(ctx.route.model)
            room = available_tokens(ctx.body, ctx.route, policy.memory.budget, encoding_name)
            plan = fit_to_budget(
                ranked,
                room,
                policy.memory.budget,
                k2_cases=policy.memory.retrieval.k2_cases,
                encoding_name=encoding_name,
            )
            span.set_attribute("memento.budget.available", plan.available_tokens)
            span.set_attribute("memento.budget.used", plan.used_tokens)
            span.set_attribute("memento.budget.dropped", len(plan.dropped))
            span.set_attribute(
                "memento.budget.dropped_ids", json_attr([[i.record.id, r] for i, r in plan.dropped])
            )
        if not plan.selected:
            state["logged"] = self._log_request(ctx, access.scope, [])
            return PreparedCall(body=ctx.body, unlearned_writes=unlearned, state=state)
        with tracer.start_as_current_span("memento.inject") as span:
            block = render_block(plan.selected)
            body = inject_block(ctx.body, block)
            span.set_attribute("memento.memory.injected", len(plan.selected))
            span.set_attribute("memento.memory.ids", [i.record.id for i in plan.selected])
            captured = content_attr(policy.tracing, block)
            if captured is not None:
                span.set_attribute("memento.memory.block", captured)
        injected = [_injected_entry(rank, item) for rank, item in enumerate(plan.selected)]
        state["injected"] = [{"id": i.record.id, "text": i.record.text} for i in plan.selected]
        state["logged"] = self._log_request(ctx, access.scope, injected)
        return PreparedCall(
            body=body,
            injected_count=len(plan.selected),
            unlearned_writes=unlearned,
            changed=True,
            state=state,
        )

    async def _retrieve_in_time(
        self, ctx: CallContext, access: MemoryAccess
    ) -> tuple[list[ScoredMemory] | None, WriteWait]:
        """Ranked candidates (None when memory failed and the policy allows going on), after
        waiting for the user's earlier exchanges to be learned; and what was waited for."""
        assert access.scope is not None
        with tracer.start_as_current_span("memento.retrieve") as span:
            waited = await self._wait_for_writes(ctx, access.scope)
            span.set_attribute("memento.memory.pending_writes", waited.pending)
            if waited.pending:
                span.set_attribute("memento.memory.waited_ms", waited.waited_ms)
                span.set_attribute("memento.memory.unlearned_writes", len(waited.unfinished))
                span.set_attribute("memento.memory.wait_timed_out", waited.timed_out)
            return await self._retrieve(ctx, access, span), waited

    async def _wait_for_writes(self, ctx: CallContext, scope: Scope) -> WriteWait:
        """Read your writes: wait (bounded by the policy) for the user's exchanges queued so far.
        A wait that runs out is not an error: retrieval goes on with what is already learned."""
        timeout_ms = ctx.policy.memory.retrieval.wait_for_writes_ms
        if not timeout_ms:
            return NO_WAIT
        messages = ctx.body.get("messages") or []
        waited = await self._pending.wait(scope, timeout_ms / 1000, messages)
        if waited.timed_out:
            log.info(
                "request %s retrieves without %d earlier exchanges still being learned after "
                "%.0f ms",
                ctx.request_id,
                len(waited.unfinished),
                waited.waited_ms,
            )
            await self._forget_finished_elsewhere(waited.unfinished)
        return waited

    async def _forget_finished_elsewhere(self, job_ids: Sequence[int]) -> None:
        """Jobs another process's worker finished are never signalled here: ask the queue."""
        try:
            still = await self.store.unfinished(job_ids)
        except Exception:  # the next wait asks again
            log.exception("could not look up the state of jobs %s", list(job_ids))
            return
        for job_id in set(job_ids) - still:
            self._pending.finish(job_id)

    async def _retrieve(
        self, ctx: CallContext, access: MemoryAccess, span: Span
    ) -> list[ScoredMemory] | None:
        """Ranked candidates within the retrieval deadline, or None (fail-open)."""
        policy = ctx.policy
        assert access.scope is not None
        query = build_query(
            ctx.body.get("messages") or [], policy.memory.retrieval.query_context_turns
        )
        captured = content_attr(policy.tracing, query)
        if captured is not None:
            span.set_attribute("memento.query", captured)
        try:
            ranked = await asyncio.wait_for(
                retrieve(
                    self.store,
                    access.scope,
                    query,
                    policy.memory,
                    guard_policy=policy,
                    include_shared=access.include_shared,
                ),
                timeout=policy.memory.retrieval.deadline_ms / 1000,
            )
        except Exception as exc:  # store down, index error, deadline: fail open or closed
            reason = "deadline exceeded" if isinstance(exc, TimeoutError) else type(exc).__name__
            _mark_failed(span, f"memory unavailable: {reason}", exc)
            log.warning("memory retrieval failed for request %s: %s", ctx.request_id, reason)
            if policy.memory.fail_closed:
                raise MemoryUnavailable(f"retrieval failed: {reason}") from exc
            span.set_attribute("memento.memory.fail_open", True)
            return None
        span.set_attribute("memento.memory.candidates", len(ranked))
        span.set_attribute(
            "memento.memory.scores",
            json_attr({item.record.id: item.parts() for item in ranked[:20]}),
        )
        return ranked

    def _log_request(
        self, ctx: CallContext, scope: Scope, injected: list[dict[str, Any]], status: str = "ok"
    ) -> asyncio.Task[None]:
        """Start recording the request (feedback and traces join on it) while the call goes
        upstream; `after_call` waits for it before the client has the answer."""
        entry = RequestLog(
            request_id=ctx.request_id,
            client_request_id=ctx.client_request_id,
            tenant_id=scope.tenant_id,
            user_id=scope.user_id,
            session_id=scope.session_id,
            trace_id=ctx.trace_id,
            model=ctx.model_alias,
            created_at=time.time(),
            injected=injected,
            status=status,
        )
        task = asyncio.create_task(self._write_log(entry))
        self._pending_logs.add(task)
        task.add_done_callback(self._pending_logs.discard)
        return task

    async def _write_log(self, entry: RequestLog) -> None:
        try:
            await self.store.log_request(entry)
        except Exception:
            log.exception("could not log request %s", entry.request_id)

    # -- write path ---------------------------------------------------------------------------

    async def after_call(
        self, ctx: CallContext, prepared: PreparedCall, response: dict[str, Any]
    ) -> None:
        access = prepared.state.get("access")
        scope = access.scope if isinstance(access, MemoryAccess) and access.writes else None
        # Only complete exchanges teach: not a failed call, nor a stream that broke off.
        if scope is not None and "error" not in response and response.get("choices"):
            await self._queue_exchange(ctx, scope, prepared, response)
        logged = prepared.state.get("logged")
        if isinstance(logged, asyncio.Task):
            # Feedback sent the moment the answer arrives must find the request. Its log was
            # submitted before the exchange, so they usually share one group commit.
            await asyncio.shield(logged)

    async def _queue_exchange(
        self, ctx: CallContext, scope: Scope, prepared: PreparedCall, response: dict[str, Any]
    ) -> None:
        answer = _answer_message(response)
        payload = {
            "request_id": ctx.request_id,
            "user_id": scope.user_id,
            "session_id": scope.session_id,
            "model": ctx.model_alias,
            "messages": ctx.body.get("messages") or [],
            "response": {"choices": [{"message": answer}]},
            "injected": prepared.state.get("injected", []),
            "trace_id": ctx.trace_id,
            "span_id": ctx.span_id,
            "created_at": time.time(),
        }
        try:
            job_id = await self.store.enqueue(scope.tenant_id, EXCHANGE_JOB, payload)
        except Exception as exc:  # the answer still goes out; the exchange waits in memory
            log.warning("queueing request %s failed, held in memory: %s", ctx.request_id, exc)
            trace.get_current_span().set_attribute("memento.memory.exchange_held", True)
            self.backlog.hold(HeldJob(scope.tenant_id, EXCHANGE_JOB, payload), exc)
            return
        if self._pool is not None and self._workers > 0:
            # The user's next call waits for it, unless that call carries this answer.
            self._pending.add(scope, job_id, answer_key(answer["content"]))
            self._pool.notify()

    async def learn_from_exchange(self, job: QueuedJob) -> None:
        """One queued exchange through extract → sanitize → consolidate → write."""
        if job.kind != EXCHANGE_JOB:
            raise ValueError(f"unknown job kind {job.kind!r}")
        policy = self.policies.get(job.tenant_id)
        if policy is None:
            log.info("dropping job %s: tenant %s no longer exists", job.id, job.tenant_id)
            return
        payload = job.payload
        request_id = str(payload.get("request_id"))
        scope = Scope(job.tenant_id, payload.get("user_id"), payload.get("session_id"))
        links = request_link(payload.get("trace_id"), payload.get("span_id"), request_id)
        attrs = {"memento.request_id": request_id, "memento.tenant": job.tenant_id}
        injected = [i for i in payload.get("injected") or [] if isinstance(i, dict)]
        with tracer.start_as_current_span("memento.extract", links=links, attributes=attrs) as span:
            exchange = build_exchange(
                list(payload.get("messages") or []),
                dict(payload.get("response") or {}),
                [str(i.get("text", "")) for i in injected],
            )
            proposed = await self._extract(exchange, policy, str(payload.get("model") or ""))
            candidates = [c for c in proposed if verify_evidence(c, exchange)]
            span.set_attribute("memento.candidates.proposed", len(proposed))
            span.set_attribute("memento.candidates.verified", len(candidates))
            span.set_attribute("memento.candidates.kinds", [c.kind for c in candidates])
        await self._mark_used(scope, [str(i["id"]) for i in injected if "id" in i])
        if not candidates:
            return
        with tracer.start_as_current_span(
            "memento.sanitize", links=links, attributes=attrs
        ) as span:
            sanitizer = Sanitizer(
                self.store,
                partial(self.call_model, policy),
                log_content=policy.logging.log_content,
            )
            verdicts = await sanitizer.assess(scope, candidates, policy.sanitizer)
            span.set_attribute(
                "memento.verdicts",
                json_attr(
                    [
                        {
                            "kind": c.kind,
                            "verdict": v.verdict,
                            "trust": round(v.trust, 3),
                            "reasons": _traced_reasons(v, policy.tracing),
                        }
                        for c, v in zip(candidates, verdicts, strict=True)
                    ]
                ),
            )
        meta = _WriteMeta(
            request_id=request_id,
            trace_id=str(payload["trace_id"]) if payload.get("trace_id") else None,
            model=str(payload.get("model") or "") or None,
            derived_from=[str(i["id"]) for i in injected if "id" in i],
            created_at=float(payload.get("created_at") or time.time()),
        )
        await self._consolidate_and_write(scope, policy, candidates, verdicts, meta, links, attrs)

    async def _mark_used(self, scope: Scope, memory_ids: list[str]) -> None:
        """Recency counts from the last time a memory was injected (off the request path)."""
        now = time.time()
        for record in await self.store.get_many(scope.tenant_id, memory_ids):
            await self.store.update(record.scope, record.id, last_used_at=now)

    async def _extract(self, exchange: Exchange, policy: Policy, model: str) -> list[Candidate]:
        settings = policy.memory.extraction
        if settings.model is None:
            return extract_with_rules(exchange, settings)
        name = settings.model

        async def call(body: dict[str, Any]) -> dict[str, Any]:
            return await self.call_model(policy, name, body)

        return await extract_with_model(exchange, settings, call)

    async def call_model(self, policy: Policy, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Ask a model (a tenant alias or a litellm string) through the proxy's own upstreams."""
        route = policy.models.get(name) or ModelRoute(model=name)
        target = Target(name, route, policy.limits.connect_timeout_s)
        reply = await self.upstreams.for_route(route).chat(target, {**body, "model": name})
        parsed = reply.json()
        if not isinstance(parsed, dict):
            raise ValueError(f"model {name} answered with {type(parsed).__name__}, not an object")
        return parsed

    async def _consolidate_and_write(
        self,
        scope: Scope,
        policy: Policy,
        candidates: Sequence[Candidate],
        verdicts: Sequence[TrustVerdict],
        meta: _WriteMeta,
        links: list[trace.Link],
        attrs: dict[str, str],
    ) -> None:
        decisions: list[dict[str, Any]] = []
        written: list[MemoryRecord] = []
        with tracer.start_as_current_span("memento.consolidate", links=links, attributes=attrs):
            for candidate, verdict in zip(candidates, verdicts, strict=True):
                memory = _new_memory(candidate, verdict, policy, meta)
                if verdict.verdict != "accept":
                    (added,) = await self.store.add(scope, [memory])
                    decisions.append(
                        {
                            "kind": candidate.kind,
                            "operation": "ADD",
                            "status": memory.status,
                            "memory_id": added.id,
                        }
                    )
                    written.append(added)
                    continue
                decision = await self._decide(scope, policy, candidate, memory)
                record = await self._apply(scope, decision, memory)
                memory_id = record.id if record is not None else None
                decisions.append(
                    {"kind": candidate.kind, **decision.as_dict(), "memory_id": memory_id}
                )
                if record is not None:
                    written.append(record)
        with tracer.start_as_current_span("memento.write", links=links, attributes=attrs) as span:
            span.set_attribute("memento.decisions", json_attr(decisions))
            span.set_attribute("memento.memory.ids", [r.id for r in written])
            case = next((r for r in written if r.kind == "case" and r.status == "active"), None)
            if case is not None:
                await self._attach_case(scope.tenant_id, meta.request_id, case)

    async def _decide(
        self, scope: Scope, policy: Policy, candidate: Candidate, memory: NewMemory
    ) -> Decision:
        kinds: tuple[MemoryKind, ...] = (
            ("case",) if candidate.kind == "case" else ("fact", "preference")
        )
        query = memory.key_text or memory.text
        hits = await self.store.search(
            Scope(scope.tenant_id, scope.user_id),
            query_text=query,
            embed_query=True,
            k=_NEIGHBOURS,
            kinds=kinds,
        )
        neighbours = [Neighbour(h.record, h.cosine or 0.0) for h in hits]
        settings = policy.memory.consolidation
        if settings.llm and settings.model:
            name = settings.model

            async def call(body: dict[str, Any]) -> dict[str, Any]:
                return await self.call_model(policy, name, body)

            return await decide_with_model(candidate, neighbours, settings, call)
        return decide(candidate, neighbours, settings)

    async def _apply(
        self, scope: Scope, decision: Decision, memory: NewMemory
    ) -> MemoryRecord | None:
        target = decision.target
        if decision.operation == "ADD" or target is None:
            if decision.operation in ("NOOP", "DELETE"):
                return None
            return (await self.store.add(scope, [memory]))[0]
        target_scope = target.scope
        if decision.operation == "UPDATE":
            return await self.store.supersede(target_scope, target.id, memory)
        if decision.operation == "DELETE":
            await self.store.delete(target_scope, target.id, actor="user:forget")
            return None
        reinforced = int(target.fields.get("reinforced", 0)) + 1
        fields = {**target.fields, "reinforced": reinforced}
        await self.store.update(target_scope, target.id, fields=fields)
        return None

    async def _attach_case(self, tenant_id: str, request_id: str, case: MemoryRecord) -> None:
        """Tie the case to its request; a reward that arrived first becomes its outcome."""
        entry = await self.store.get_request(tenant_id, request_id)
        if entry is None:
            return
        await self.store.set_request(tenant_id, request_id, written_case_id=case.id)
        if entry.reward is not None:
            await self.store.update(case.scope, case.id, **case_outcome_changes(case, entry.reward))


@dataclass(frozen=True)
class _WriteMeta:
    """Provenance every record written from one exchange carries."""

    request_id: str
    trace_id: str | None
    model: str | None
    derived_from: list[str]
    created_at: float


def _new_memory(
    candidate: Candidate, verdict: TrustVerdict, policy: Policy, meta: _WriteMeta
) -> NewMemory:
    ttl = policy.memory.ttl_days
    return NewMemory(
        kind=candidate.kind,
        text=verdict.text,
        key_text=candidate.key_text or verdict.text,
        fields=dict(candidate.fields),
        metadata=dict(candidate.metadata),
        source_role=candidate.source_role,
        source_request_id=meta.request_id,
        trace_id=meta.trace_id,
        trust=verdict.trust,
        trust_reasons=verdict.reasons_as_dicts(),
        status=_STATUS_FOR_VERDICT[verdict.verdict],
        q=policy.memory.feedback.q0,
        created_at=candidate.created_at,
        expires_at=meta.created_at + ttl * 86_400 if ttl else None,
        derived_from_ids=list(meta.derived_from),
        evidence=[{"role": e.role, "span": e.span, "turn": e.turn} for e in candidate.evidence],
        model=meta.model,
    )


def _injected_entry(rank: int, item: ScoredMemory) -> dict[str, Any]:
    return {"memory_id": item.record.id, "rank": rank, "kind": item.record.kind, **item.parts()}


def _answer_message(response: dict[str, Any]) -> dict[str, Any]:
    choices = response.get("choices") or []
    if choices and isinstance(choices[0], dict) and isinstance(choices[0].get("message"), dict):
        message = choices[0]["message"]
        return {"role": "assistant", "content": message.get("content")}
    return {"role": "assistant", "content": None}


def _mark_failed(span: Span, reason: str, exc: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, reason))
    span.set_attribute("memento.memory.error", reason)
    with contextlib.suppress(Exception):
        span.record_exception(exc)


_EMBEDDERS: dict[str, Embedder] = {}


async def shared_embedder(spec: str) -> Embedder:
    """One embedder per spec for the whole process: the model is loaded once, however many apps
    (tests, benchmarks) run in it. Embedders hold no per-app state."""
    from storage.embedders import load_embedder

    if spec not in _EMBEDDERS:
        _EMBEDDERS[spec] = await load_embedder(spec)
    return _EMBEDDERS[spec]


def _warm_tokenizers() -> None:
    from proxy.tokens import encoding

    for name in ("cl100k_base", "o200k_base"):
        encoding(name)


def _traced_reasons(verdict: TrustVerdict, tracing: TracingPolicy) -> list[dict[str, Any]]:
    """A verdict's reasons for a span: a reason's detail quotes the matched text, so it follows
    the tenant's content-capture rule like any other memory content."""
    reasons = []
    for reason in verdict.reasons_as_dicts():
        detail = content_attr(tracing, str(reason.pop("detail", "")))
        reasons.append(reason if detail is None else {**reason, "detail": detail})
    return reasons
