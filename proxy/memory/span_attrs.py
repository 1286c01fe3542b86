"""What each memory stage records on its span: one helper per stage, so the stages read as steps.

Memory content (the query, the injected block, a verdict's matched text) goes through
`proxy.tracing.content_attr`, which follows the tenant's content-capture rule; decisions and
scores are structured JSON (`json_attr`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode

from proxy.memory.budget import BudgetPlan
from proxy.memory.candidates import Candidate, TrustVerdict
from proxy.memory.pending import WriteWait
from proxy.memory.retrieve import ScoredMemory, score_parts
from proxy.policy import TracingPolicy
from proxy.tracing import content_attr, json_attr
from storage.records import MemoryRecord

_TRACED_SCORES = 20  # candidates whose score parts a retrieval span carries


def set_content(span: Span, name: str, tracing: TracingPolicy, text: str) -> None:
    """Set `name` to `text` as far as the tenant's tracing policy lets spans carry content."""
    captured = content_attr(tracing, text)
    if captured is not None:
        span.set_attribute(name, captured)


def record_wait(span: Span, waited: WriteWait) -> None:
    """Read your writes: what retrieval waited for."""
    span.set_attribute("memento.memory.pending_writes", waited.pending)
    if waited.pending:
        span.set_attribute("memento.memory.waited_ms", waited.waited_ms)
        span.set_attribute("memento.memory.unlearned_writes", len(waited.unfinished))
        span.set_attribute("memento.memory.wait_timed_out", waited.timed_out)


def record_ranked(span: Span, ranked: Sequence[ScoredMemory]) -> None:
    """The candidates' count, and the parts of the best ones' scores when the span is kept
    (building them is most of what recording costs)."""
    span.set_attribute("memento.memory.candidates", len(ranked))
    if not span.is_recording():
        return
    traced = ranked[:_TRACED_SCORES]
    scores = dict(zip([item.record.id for item in traced], score_parts(traced), strict=True))
    span.set_attribute("memento.memory.scores", json_attr(scores))


def mark_failed(span: Span, reason: str, exc: BaseException, *, stack: bool = True) -> None:
    """The span failed for `reason`; `exc` is recorded as its exception event, with its stack
    unless `stack` is False. A deadline or a full queue has no stack worth reading, and
    formatting one takes the event loop 0.36 ms for a shallow stack (more for a deep one),
    just when it is overloaded."""
    span.set_status(Status(StatusCode.ERROR, reason))
    span.set_attribute("memento.memory.error", reason)
    if not stack:
        kind = type(exc)
        named = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        span.add_event("exception", {"exception.type": named, "exception.message": str(exc)})
        return
    with contextlib.suppress(Exception):
        span.record_exception(exc)


def record_budget(span: Span, plan: BudgetPlan) -> None:
    span.set_attribute("memento.budget.available", plan.available_tokens)
    span.set_attribute("memento.budget.used", plan.used_tokens)
    span.set_attribute("memento.budget.frame", plan.frame_tokens)
    span.set_attribute("memento.budget.dropped", len(plan.dropped))
    dropped = [[item.record.id, reason] for item, reason in plan.dropped]
    span.set_attribute("memento.budget.dropped_ids", json_attr(dropped))


def record_injection(
    span: Span, selected: Sequence[ScoredMemory], block: str, tracing: TracingPolicy
) -> None:
    span.set_attribute("memento.memory.injected", len(selected))
    span.set_attribute("memento.memory.ids", [item.record.id for item in selected])
    set_content(span, "memento.memory.block", tracing, block)


def record_extraction(
    span: Span, proposed: Sequence[Candidate], verified: Sequence[Candidate]
) -> None:
    span.set_attribute("memento.candidates.proposed", len(proposed))
    span.set_attribute("memento.candidates.verified", len(verified))
    span.set_attribute("memento.candidates.kinds", [c.kind for c in verified])


def record_verdicts(
    span: Span,
    candidates: Sequence[Candidate],
    verdicts: Sequence[TrustVerdict],
    tracing: TracingPolicy,
) -> None:
    entries = [
        {
            "kind": candidate.kind,
            "verdict": verdict.verdict,
            "trust": round(verdict.trust, 3),
            "reasons": _traced_reasons(verdict, tracing),
        }
        for candidate, verdict in zip(candidates, verdicts, strict=True)
    ]
    span.set_attribute("memento.verdicts", json_attr(entries))


def record_writes(
    span: Span, decisions: Sequence[dict[str, Any]], written: Sequence[MemoryRecord]
) -> None:
    span.set_attribute("memento.decisions", json_attr(list(decisions)))
    span.set_attribute("memento.memory.ids", [record.id for record in written])


def _traced_reasons(verdict: TrustVerdict, tracing: TracingPolicy) -> list[dict[str, Any]]:
    """A verdict's reasons for a span: a reason's detail quotes the matched text, so it follows
    the tenant's content-capture rule like any other memory content."""
    reasons = []
    for reason in verdict.reasons_as_dicts():
        detail = content_attr(tracing, str(reason.pop("detail", "")))
        reasons.append(reason if detail is None else {**reason, "detail": detail})
    return reasons
