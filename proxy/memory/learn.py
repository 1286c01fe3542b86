"""Learn: feedback on a request moves the utility Q of every memory it injected.

    Q ← Q + α·(r − Q)

with α per kind (cases learn fast, facts slowly: an answer can be bad for reasons that are not
the fact's fault). One reward counts per (request, source): a repeated report replaces the earlier
one by reversing its update exactly, so retries never stack. The case the request itself wrote
records the outcome, one update of its Q at α = 0.3 (a new case: Q = 0.3·r). Negative feedback
also halves the trust of injected memories that were already doubtful, and quarantines them when
it falls below 0.3; positive feedback never raises trust (a reward must not launder a poisoned
memory).

Provenance credit (`memory.feedback.provenance_credit`, off by default): a memory written by a call
was derived from the memories injected into that call (`derived_from_ids`), so part of the credit
for its success is theirs. With it on, the ancestors d steps back (d ≤ max_depth) move too, by an
eligibility trace as in TD(λ):

    Q ← Q + (γλ)^d · α·(r − Q)

Only Q moves for an ancestor (no counters, no trust), each memory at most once per reward, at its
nearest depth; a replaced report is reversed the same way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from proxy.policy import FeedbackSettings, ProvenanceCredit
from storage.api import MemoryStore, RequestStore
from storage.locks import StoreLocks
from storage.records import MemoryRecord, RequestLog

CASE_INITIAL_Q_WEIGHT = 0.3  # a case's own outcome: Q += 0.3·(r − Q) (docs/design.md#learning-rule)
DOUBTFUL_TRUST = 0.7
QUARANTINE_TRUST = 0.3
NEGATIVE_REWARD = -0.5
PENALTY = "negative_feedback"  # the trust reason a negative report gives


class InvalidFeedback(ValueError):
    """The feedback body cannot be read; the message says what to send instead."""


def reward_from(body: dict[str, Any]) -> float:
    """The reward in [−1, 1] from a feedback body.

    `reward` is taken as given in [−1, 1] (or "up"/"down"); `score` is a 0..1 rating, mapped to
    2·score − 1. Exactly one of them must be present.
    """
    has_reward, has_score = "reward" in body, "score" in body
    if has_reward == has_score:
        raise InvalidFeedback(
            'Send exactly one of \'reward\' (a number in [-1, 1], or "up" / "down") '
            "and 'score' (a number in [0, 1])."
        )
    if has_score:
        score = body["score"]
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
            raise InvalidFeedback("'score' must be a number in [0, 1].")
        # Rounded so a 0.8 reads back as a reward of 0.6, not 0.6000000000000001.
        return round(2.0 * float(score) - 1.0, 12)
    reward = body["reward"]
    if reward in ("up", "down"):
        return 1.0 if reward == "up" else -1.0
    if isinstance(reward, bool) or not isinstance(reward, int | float) or not -1 <= reward <= 1:
        raise InvalidFeedback(
            '\'reward\' must be a number in [-1, 1] or "up" / "down"; '
            "send a 0..1 rating as 'score'."
        )
    return float(reward)


def q_update(q: float, reward: float, alpha: float) -> float:
    return q + alpha * (reward - q)


def q_revert(q: float, reward: float, alpha: float) -> float:
    """The Q before `q_update(·, reward, alpha)` produced `q`."""
    return (q - alpha * reward) / (1.0 - alpha) if alpha < 1.0 else 0.0


@dataclass
class FeedbackResult:
    request_id: str
    reward: float
    replaced: float | None
    updated: list[dict[str, Any]] = field(default_factory=list)
    case_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "memory.feedback",
            "request_id": self.request_id,
            "reward": self.reward,
            "replaced": self.replaced,
            "updated": self.updated,
            "case_id": self.case_id,
        }


FEEDBACK_LOCK = "feedback"  # the store lock feedback is applied under, in every process


class Learner:
    """Applies feedback one report at a time across every process serving the store (Q is read,
    moved and written back), so concurrent rewards, sent to one replica or several, never lose
    an update nor count one twice."""

    def __init__(self, memories: MemoryStore, requests: RequestStore, locks: StoreLocks) -> None:
        self.memories = memories
        self.requests = requests
        self._locks = locks
        self._lock = asyncio.Lock()

    async def apply(
        self,
        tenant_id: str,
        request_id: str,
        reward: float,
        settings: FeedbackSettings,
        *,
        comment: str | None = None,
        source: str = "api",
    ) -> FeedbackResult | None:
        """Record the reward and update Q; None when the tenant has no such request."""
        async with self._lock, self._locks.hold(FEEDBACK_LOCK):
            entry = await self.requests.get_request(tenant_id, request_id)
            if entry is None:
                return None
            previous = await self.requests.record_feedback(
                tenant_id, request_id, source, reward, comment
            )
            result = FeedbackResult(request_id, reward, previous)
            if previous is not None and abs(previous - reward) < 1e-12:
                return result  # the same report again: nothing changes
            await self.requests.set_request(tenant_id, request_id, reward=reward)
            ids = [str(item["memory_id"]) for item in entry.injected if "memory_id" in item]
            records = await self.memories.get_many(tenant_id, ids)
            rewarded = []
            for record in records:
                if record.kind == "lesson" or record.id == entry.written_case_id:
                    continue
                changes = utility_changes(record, reward, previous, settings, request_id)
                await self.memories.update(record.scope, record.id, **changes)
                result.updated.append({"memory_id": record.id, "q": round(changes["q"], 4)})
                rewarded.append(record)
            if settings.provenance_credit.enabled:
                skip = {r.id for r in records} | {entry.written_case_id or ""}
                await self._credit_provenance(
                    tenant_id, rewarded, skip, (reward, previous), settings, result
                )
            result.case_id = await self._record_outcome(entry, reward, previous)
            return result

    async def attach_case(self, tenant_id: str, request_id: str, case: MemoryRecord) -> None:
        """Tie the case a request wrote to its request; a reward that arrived first becomes
        its outcome. Under the feedback lock: a report applied meanwhile would otherwise read
        the request before the case was tied to it, while this read it before the reward was
        recorded, and the outcome would reach neither."""
        async with self._lock, self._locks.hold(FEEDBACK_LOCK):
            entry = await self.requests.get_request(tenant_id, request_id)
            if entry is None:
                return
            await self.requests.set_request(tenant_id, request_id, written_case_id=case.id)
            if entry.reward is not None:
                await self.memories.update(
                    case.scope, case.id, **case_outcome_changes(case, entry.reward)
                )

    async def _credit_provenance(
        self,
        tenant_id: str,
        rewarded: list[MemoryRecord],
        skip: set[str],
        rewards: tuple[float, float | None],
        settings: FeedbackSettings,
        result: FeedbackResult,
    ) -> None:
        """Walk `derived_from_ids` back from the rewarded memories, one step at a time;
        `rewards` is (this reward, the one it replaces or None)."""
        reward, previous = rewards
        seen = set(skip)
        frontier = rewarded
        for depth in range(1, settings.provenance_credit.max_depth + 1):
            parents = [i for r in frontier for i in r.derived_from_ids if i not in seen]
            if not parents:
                return
            seen.update(parents)
            frontier = await self.memories.get_many(tenant_id, list(dict.fromkeys(parents)))
            for record in frontier:
                if record.kind == "lesson" or record.status == "deleted":
                    continue
                q = provenance_q(record, reward, previous, settings, depth)
                await self.memories.update(record.scope, record.id, q=q)
                result.updated.append(
                    {"memory_id": record.id, "q": round(q, 4), "provenance_depth": depth}
                )

    async def _record_outcome(
        self, entry: RequestLog, reward: float, previous: float | None
    ) -> str | None:
        """The request's own case takes the outcome (replacing `previous`); a case not written
        yet reads it later."""
        if entry.written_case_id is None:
            return None
        records = await self.memories.get_many(entry.tenant_id, [entry.written_case_id])
        if not records:
            return None
        case = records[0]
        await self.memories.update(
            case.scope, case.id, **case_outcome_changes(case, reward, previous)
        )
        return case.id


def utility_changes(
    record: MemoryRecord,
    reward: float,
    previous: float | None,
    settings: FeedbackSettings,
    request_id: str,
) -> dict[str, Any]:
    """The Q, counters and trust of one injected memory after the reward of `request_id`
    (replacing `previous`)."""
    alpha = settings.alpha_case if record.kind == "case" else settings.alpha_fact
    q, reward_ma = record.q, record.reward_ma
    n_pos, n_neg, visits = record.n_pos, record.n_neg, record.q_visits
    if previous is not None:
        q = q_revert(q, previous, alpha)
        reward_ma = q_revert(reward_ma, previous, alpha)
        n_pos -= previous > 0
        n_neg -= previous < 0
    else:
        visits += 1
    changes: dict[str, Any] = {
        "q": max(-1.0, min(1.0, q_update(q, reward, alpha))),
        "reward_ma": q_update(reward_ma, reward, alpha),
        "last_reward": reward,
        "q_visits": visits,
        "n_pos": max(0, n_pos + (reward > 0)),
        "n_neg": max(0, n_neg + (reward < 0)),
    }
    return {**changes, **trust_changes(record, reward, request_id)}


def trust_changes(record: MemoryRecord, reward: float, request_id: str) -> dict[str, Any]:
    """The trust (and status) of one injected memory after this request's reward.

    The penalty is the request's own reason (it names the request): a report replacing an
    earlier one first takes that one's penalty back, and its quarantine, so a retried or
    corrected report never halves trust twice.
    """
    trust, reasons, status = record.trust, list(record.trust_reasons), record.status
    earlier = next(
        (r for r in reasons if r.get("signal") == PENALTY and r.get("request_id") == request_id),
        None,
    )
    if earlier is not None:
        reasons.remove(earlier)
        trust = min(1.0, trust - float(earlier.get("delta", 0)))
        if earlier.get("quarantined") and status == "quarantined":
            status = "active"
    doubtful = trust < DOUBTFUL_TRUST or any(reason.get("delta", 0) < 0 for reason in reasons)
    if reward <= NEGATIVE_REWARD and doubtful:
        penalty: dict[str, Any] = {
            "signal": PENALTY,
            "delta": round(-trust * 0.5, 4),
            "hard": False,
            "request_id": request_id,
        }
        trust *= 0.5
        # Only a served memory is held for review: a rejected, deleted or superseded one
        # has left service already, and quarantine would put it back in the review queue.
        if trust < QUARANTINE_TRUST and status == "active":
            status = "quarantined"
            penalty["quarantined"] = True
        reasons.append(penalty)
    if earlier is None and trust == record.trust:
        return {}
    return {"trust": trust, "trust_reasons": reasons, "status": status}


def provenance_q(
    record: MemoryRecord,
    reward: float,
    previous: float | None,
    settings: FeedbackSettings,
    depth: int,
) -> float:
    """The Q of a memory `depth` provenance steps behind a rewarded one (replacing `previous`):
    the kind's learning rate scaled by the trace (γλ)^depth."""
    alpha = settings.alpha_case if record.kind == "case" else settings.alpha_fact
    alpha *= credit_weight(settings.provenance_credit, depth)
    q = record.q if previous is None else q_revert(record.q, previous, alpha)
    return max(-1.0, min(1.0, q_update(q, reward, alpha)))


def credit_weight(credit: ProvenanceCredit, depth: int) -> float:
    """The eligibility of a memory `depth` steps behind the rewarded one."""
    return float(credit.gamma_lambda**depth)


def case_outcome_changes(
    case: MemoryRecord, reward: float, previous: float | None = None
) -> dict[str, Any]:
    """A case's own outcome: its reward, and one update of its Q at the weight 0.3 (from a new
    case's Q = 0, 0.3·r), the update of the report it replaces (`previous`) reversed first.
    Q moves rather than restarts: what other calls' rewards taught the case is kept."""
    q = case.q if previous is None else q_revert(case.q, previous, CASE_INITIAL_Q_WEIGHT)
    return {
        "fields": {
            **case.fields,
            "outcome": _outcome(reward),
            "reward": reward,
        },
        "q": max(-1.0, min(1.0, q_update(q, reward, CASE_INITIAL_Q_WEIGHT))),
        "last_reward": reward,
    }


def _outcome(reward: float) -> str:
    return "worked" if reward > 0 else "failed" if reward < 0 else "neutral"
