"""The write path: queue → extract → sanitize → consolidate → write.

`after_call` only queues: the chat route awaits it before the client has the whole answer, so an
answered exchange is in the durable queue (group-committed with other calls' writes), and its
request log can be found by feedback, the moment the client reads the response. A worker
(`worker.py`) then runs `learn_from_exchange` on each queued job: extract → verify evidence →
sanitize → consolidate → write, each a span linked to the request's trace. Models (extraction,
the judge, consolidation) are asked through the tenant's own routes (`model_call.TenantModels`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace

from proxy.memory.backlog import HeldJob, QueueBacklog
from proxy.memory.candidates import Candidate, TrustVerdict
from proxy.memory.consolidate import (
    Consolidation,
    ConsolidationNeighbour,
    decide,
    decide_with_model,
)
from proxy.memory.exchange_job import EXCHANGE_JOB, ExchangeJob
from proxy.memory.extract import Exchange, build_exchange, extract_with_rules, verify_evidence
from proxy.memory.extract_model import extract_with_model
from proxy.memory.learn import Learner
from proxy.memory.model_call import CallModel, TenantModels
from proxy.memory.new_memory import memory_from_verdict
from proxy.memory.pending import PendingWrites, answer_key
from proxy.memory.queue_watch import QueueWatch
from proxy.memory.sanitize import Sanitizer
from proxy.memory.seam import CallContext, CallState, PreparedCall
from proxy.memory.span_attrs import record_extraction, record_verdicts, record_writes
from proxy.memory.worker import WritePool
from proxy.messages import answer_message
from proxy.metrics import SHED_EXCHANGES
from proxy.policy import Policy
from proxy.policy_source import PolicySource
from proxy.tracing import request_link
from proxy.upstreams.registry import Upstreams
from storage.api import Store
from storage.records import MemoryRecord, NewMemory, QueuedJob, Scope

log = logging.getLogger("memento.memory")
tracer = trace.get_tracer("memento.memory")

_NEIGHBOURS = 5  # nearest memories a candidate is consolidated against


class WritePath:
    """Queues answered exchanges and, in `workers` tasks, learns memories from them."""

    def __init__(
        self,
        store: Store,
        policies: PolicySource,
        upstreams: Upstreams,
        pending: PendingWrites,
        learner: Learner,
        *,
        workers: int = 2,
    ) -> None:
        self.store = store
        self.learner = learner  # ties a written case to its request, as feedback reads it
        self.policies = policies
        self.upstreams = upstreams  # the tenants' models are asked through them
        self.pending = pending  # exchanges queued here, not yet learned, by user
        self.backlog = QueueBacklog(store.queue)  # exchanges waiting for the queue to accept writes
        self.queue_watch = QueueWatch(store.queue)  # each tenant's queue, for its policy's bound
        self._workers = workers  # write-path workers of this process; 0 only queues
        self._pool: WritePool | None = None

    def start(self) -> None:
        self._pool = WritePool(
            self.store.queue,
            self.learn_from_exchange,
            workers=self._workers,
            pending=self.pending,
            policies=self.policies,
        )
        self._pool.start()

    async def aclose(self, drain_timeout_s: float) -> None:
        """Hand held exchanges to the queue, then drain it (bounded) and stop the workers."""
        await self.backlog.aclose()
        if self._pool is not None:
            await self._pool.stop(drain_timeout_s)
            self._pool = None

    async def after_call(
        self, ctx: CallContext, prepared: PreparedCall, response: dict[str, Any]
    ) -> None:
        """Queue the exchange durably (after the call's request log, which its job reads)."""
        state = prepared.state
        access = state.access
        scope = access.scope if access is not None and access.writes else None
        # Only complete exchanges teach: not a failed call, nor a stream that broke off.
        if scope is not None and "error" not in response and response.get("choices"):
            shed = await self.queue_watch.over_bound(scope.tenant_id, ctx.policy.memory.write_queue)
            if shed is not None:
                _shed(ctx, shed)
                return
            if state.logged is not None:
                # The job links the case it writes to the request's log, so the log goes
                # first; submitted before the exchange, they usually share one group commit.
                await asyncio.shield(state.logged)
            await self._queue_exchange(ctx, scope, state, response)
        # Otherwise nothing waits for the log: feedback waits for pending logs itself
        # (`MemoryPipeline.flush_request_logs`), so a read-only call answers without a commit.

    async def _queue_exchange(
        self, ctx: CallContext, scope: Scope, state: CallState, response: dict[str, Any]
    ) -> None:
        answer = answer_message(response)
        job = ExchangeJob.answered(
            request_id=ctx.request_id,
            user_id=scope.user_id,
            session_id=scope.session_id,
            model=ctx.model_alias,
            messages=ctx.conversation,
            answer=answer,
            injected=state.injected,
            trace_id=ctx.trace_id,
            span_id=ctx.span_id,
        )
        payload = job.to_json()
        try:
            job_id = await self.store.queue.enqueue(scope.tenant_id, EXCHANGE_JOB, payload)
        except Exception as exc:  # the answer still goes out; the exchange waits in memory
            log.warning("queueing request %s failed, held in memory: %s", ctx.request_id, exc)
            trace.get_current_span().set_attribute("memento.memory.exchange_held", True)
            self.backlog.hold(HeldJob(scope.tenant_id, EXCHANGE_JOB, payload), exc)
            return
        self.queue_watch.queued(scope.tenant_id)
        if self._pool is not None and self._workers > 0:
            # The user's next call waits for it, unless that call carries this answer.
            self.pending.add(scope, job_id, answer_key(answer["content"]))
            self._pool.notify()

    async def learn_from_exchange(self, queued: QueuedJob) -> None:
        """One queued exchange through extract → sanitize → consolidate → write."""
        if queued.kind != EXCHANGE_JOB:
            raise ValueError(f"unknown job kind {queued.kind!r}")
        policy = self.policies.get(queued.tenant_id)
        if policy is None:
            log.info("dropping job %s: tenant %s no longer exists", queued.id, queued.tenant_id)
            return
        job = ExchangeJob.from_json(queued.payload)
        scope = Scope(queued.tenant_id, job.user_id, job.session_id)
        links = request_link(job.trace_id, job.span_id, job.request_id)
        attrs = {"memento.request_id": job.request_id, "memento.tenant": queued.tenant_id}
        models = TenantModels(self.upstreams, policy)
        with tracer.start_as_current_span("memento.extract", links=links, attributes=attrs) as span:
            exchange = build_exchange(job.messages, job.response, [i.text for i in job.injected])
            proposed = await _extract(exchange, policy, models)
            candidates = [c for c in proposed if verify_evidence(c, exchange)]
            record_extraction(span, proposed, candidates)
        await self._mark_used(scope, _injected_ids(job))
        if not candidates:
            return
        known, candidates = await self._known_duplicates(scope, candidates)
        verdicts: list[TrustVerdict] = []
        if candidates:
            with tracer.start_as_current_span(
                "memento.sanitize", links=links, attributes=attrs
            ) as span:
                sanitizer = Sanitizer(
                    self.store.memories, models, log_content=policy.logging.log_content
                )
                verdicts = await sanitizer.assess(scope, candidates, policy.sanitizer)
                record_verdicts(span, candidates, verdicts, policy.tracing)
        written = await self._consolidate_and_write(
            scope, policy, models, job, candidates, verdicts, links, attrs, known=known
        )
        if written and not await self.store.queue.exists(queued.id):
            # The user was erased while this exchange was learned (the erase took its job):
            # what it wrote is erased too, as if it had been written a moment sooner.
            for record in written:
                await self.store.memories.delete(record.scope, record.id, actor="erasure")

    async def _known_duplicates(
        self, scope: Scope, candidates: Sequence[Candidate]
    ) -> tuple[list[dict[str, Any]], list[Candidate]]:
        """Candidates the user's memories already hold word for word (an active memory with the
        same normalised text, found by its digest) have a known result: consolidation would
        reinforce that memory (NOOP, "same text"). They are reinforced here, before anything is
        embedded, assessed or searched for; the others go on. Returns the decisions taken and
        the candidates left."""
        user_scope = Scope(scope.tenant_id, scope.user_id)
        decisions: list[dict[str, Any]] = []
        rest: list[Candidate] = []
        for candidate in candidates:
            same = None
            if not candidate.fields.get("retract"):
                kinds = candidate.comparable_kinds
                same = await self.store.memories.same_text(user_scope, kinds, candidate.text)
            if same is None:
                rest.append(candidate)
                continue
            await self._reinforce(same)
            noop = Consolidation("NOOP", same, "same text, found by its digest")
            decisions.append({"kind": candidate.kind, **noop.as_dict(), "memory_id": None})
        return decisions, rest

    async def _mark_used(self, scope: Scope, memory_ids: list[str]) -> None:
        """Recency counts from the last time a memory was injected (off the request path)."""
        now = time.time()
        for record in await self.store.memories.get_many(scope.tenant_id, memory_ids):
            await self.store.memories.update(record.scope, record.id, last_used_at=now)

    async def _consolidate_and_write(
        self,
        scope: Scope,
        policy: Policy,
        models: CallModel,
        job: ExchangeJob,
        candidates: Sequence[Candidate],
        verdicts: Sequence[TrustVerdict],
        links: list[trace.Link],
        attrs: dict[str, str],
        *,
        known: Sequence[dict[str, Any]] = (),
    ) -> list[MemoryRecord]:
        """Consolidate and write the candidates; returns the records written."""
        decisions: list[dict[str, Any]] = list(known)
        written: list[MemoryRecord] = []
        with tracer.start_as_current_span("memento.consolidate", links=links, attributes=attrs):
            for candidate, verdict in zip(candidates, verdicts, strict=True):
                memory = _new_memory(candidate, verdict, policy, job)
                if verdict.verdict != "accept":
                    (added,) = await self.store.memories.add(scope, [memory])
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
                decision = await self._consolidate(scope, policy, models, candidate, memory)
                record = await self._apply(scope, decision, memory)
                memory_id = record.id if record is not None else None
                decisions.append(
                    {"kind": candidate.kind, **decision.as_dict(), "memory_id": memory_id}
                )
                if record is not None:
                    written.append(record)
        with tracer.start_as_current_span("memento.write", links=links, attributes=attrs) as span:
            record_writes(span, decisions, written)
            case = next((r for r in written if r.kind == "case" and r.status == "active"), None)
            if case is not None:
                await self.learner.attach_case(scope.tenant_id, job.request_id, case)
        return written

    async def _consolidate(
        self,
        scope: Scope,
        policy: Policy,
        models: CallModel,
        candidate: Candidate,
        memory: NewMemory,
    ) -> Consolidation:
        """What to do with an accepted candidate, against its nearest memories of its kind."""
        kinds = candidate.comparable_kinds
        hits = await self.store.memories.search(
            Scope(scope.tenant_id, scope.user_id),
            query_text=memory.key_text or memory.text,
            embed_query=True,
            k=_NEIGHBOURS,
            kinds=kinds,
        )
        neighbours = [ConsolidationNeighbour(h.record, h.cosine or 0.0) for h in hits]
        settings = policy.memory.consolidation
        if settings.llm and settings.model:
            return await decide_with_model(candidate, neighbours, settings, settings.model, models)
        return decide(candidate, neighbours, settings)

    async def _apply(
        self, scope: Scope, decision: Consolidation, memory: NewMemory
    ) -> MemoryRecord | None:
        """Carry out a consolidation: the record written, or None when nothing new was."""
        target = decision.target
        if decision.operation == "ADD" or target is None:
            if decision.operation in ("NOOP", "DELETE"):
                return None
            return (await self.store.memories.add(scope, [memory]))[0]
        target_scope = target.scope
        if decision.operation == "UPDATE":
            return await self.store.memories.supersede(target_scope, target.id, memory)
        if decision.operation == "DELETE":
            await self.store.memories.delete(target_scope, target.id, actor="user:forget")
            return None
        await self._reinforce(target)
        return None

    async def _reinforce(self, target: MemoryRecord) -> None:
        """Count one more time the memory was learned again (a NOOP's effect)."""
        reinforced = int(target.fields.get("reinforced", 0)) + 1
        fields = {**target.fields, "reinforced": reinforced}
        await self.store.memories.update(target.scope, target.id, fields=fields)


async def _extract(exchange: Exchange, policy: Policy, models: CallModel) -> list[Candidate]:
    """Candidates from the policy's extraction model, or from the rules when it names none."""
    settings = policy.memory.extraction
    if settings.model is None:
        return extract_with_rules(exchange, settings)
    return await extract_with_model(exchange, settings, settings.model, models)


def _injected_ids(job: ExchangeJob) -> list[str]:
    return [i.id for i in job.injected if i.id is not None]


def _shed(ctx: CallContext, reason: str) -> None:
    """Count and trace an exchange not learned because the tenant's queue bound was hit."""
    SHED_EXCHANGES.add(1, {"tenant": ctx.policy.tenant, "reason": reason})
    trace.get_current_span().set_attribute("memento.memory.exchange_shed", reason)
    log.info(
        "request %s: not learned, tenant %s is over its write-queue bound (%s)",
        ctx.request_id,
        ctx.policy.tenant,
        reason,
    )


def _new_memory(
    candidate: Candidate, verdict: TrustVerdict, policy: Policy, job: ExchangeJob
) -> NewMemory:
    """The memory for a candidate of this exchange, with its provenance."""
    ttl = policy.memory.ttl_days
    return memory_from_verdict(
        candidate,
        verdict,
        policy,
        source_request_id=job.request_id,
        trace_id=job.trace_id,
        expires_at=job.created_at + ttl * 86_400 if ttl else None,
        derived_from_ids=_injected_ids(job),
        evidence=[{"role": e.role, "span": e.span, "turn": e.turn} for e in candidate.evidence],
        model=job.model or None,
    )
