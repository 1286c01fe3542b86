"""Consolidate: each accepted candidate against its nearest memories — ADD, UPDATE, DELETE, NOOP.

- NOOP: the memory is already known (same text, same slot and value, or a near-duplicate; for a
  case, the same request reworded, with the same numbers and names); the existing record is
  reinforced instead of written twice.
- UPDATE: the candidate changes what is known — a new value for a one-value slot ("I live in
  Paris" after Berlin), the opposite of a stated preference, or an explicit change ("I like tea
  now" after "I like coffee"). The new record supersedes the old one; the chain and the
  valid-from / valid-until times keep "where did the user live in May?" answerable.
- DELETE: the user asked to forget something; the matching memory's content is erased.
- ADD: anything new.

With `memory.consolidation.llm` and a model, the model picks the operation among the same
neighbours (mem0's reconciliation); its answer is checked, and the rules decide when it is unusable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from proxy.memory.candidates import Candidate
from proxy.memory.extract import is_single_valued
from proxy.memory.model_call import CallModel
from proxy.memory.particulars import particulars_of
from proxy.messages import answer_text
from proxy.policy import ConsolidationSettings
from storage.records import MemoryRecord, normalized_text

Operation = Literal["ADD", "UPDATE", "DELETE", "NOOP"]
OPERATIONS: tuple[Operation, ...] = ("ADD", "UPDATE", "DELETE", "NOOP")

# An explicit change ("now", "anymore", "instead") supersedes the closest preference of the same
# kind from this cosine up. Calibrated on all-MiniLM-L6-v2: "likes tea now" vs "likes coffee"
# is 0.65, unrelated likes ("hiking" vs "coffee") 0.46.
CHANGE_SUPERSEDE_COS = 0.55


@dataclass(frozen=True)
class ConsolidationNeighbour:
    """An existing memory near the candidate, with its cosine to the candidate."""

    record: MemoryRecord
    cosine: float


@dataclass(frozen=True)
class Consolidation:
    """What to do with one candidate: the operation, the memory it applies to, and why."""

    operation: Operation
    target: MemoryRecord | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        target = self.target.id if self.target else None
        return {"operation": self.operation, "target": target, "reason": self.reason}


def decide(
    candidate: Candidate,
    neighbours: Sequence[ConsolidationNeighbour],
    settings: ConsolidationSettings,
) -> Consolidation:
    """The rule-based decision for one candidate against its neighbours in scope."""
    if candidate.kind == "case":
        return _decide_case(candidate, neighbours, settings)
    about = sorted(
        (n for n in neighbours if n.record.kind in ("fact", "preference")),
        key=lambda n: n.cosine,
        reverse=True,
    )
    if candidate.fields.get("retract"):
        # "Forget my sister" names the slot it retracts, which its few words rarely resemble.
        slot = candidate.fields.get("slot")
        target = next((n for n in about if slot and n.record.fields.get("slot") == slot), None)
        target = target or next((n for n in about if n.cosine >= settings.same_topic_cos), None)
        if target is None:
            return Consolidation("NOOP", None, "nothing to forget")
        return Consolidation("DELETE", target.record, "user asked to forget it")
    text = normalized_text(candidate.text)
    slot = candidate.fields.get("slot")
    value = candidate.fields.get("value")
    polarity = candidate.fields.get("polarity", 1)
    for neighbour in about:
        record = neighbour.record
        same_slot = slot is not None and record.fields.get("slot") == slot
        if normalized_text(record.text) == text:
            return Consolidation("NOOP", record, "same text")
        if same_slot and is_single_valued(slot):
            if value is not None and record.fields.get("value") == value:
                return Consolidation("NOOP", record, f"same value for {slot}")
            return Consolidation("UPDATE", record, f"new value for {slot}")
        if same_slot and value is not None and record.fields.get("value") == value:
            if record.fields.get("polarity", 1) != polarity:
                return Consolidation("UPDATE", record, "contradicts the stated preference")
            return Consolidation("NOOP", record, "same preference")
        if neighbour.cosine >= settings.dup_cos and record.fields.get("polarity", 1) == polarity:
            return Consolidation("NOOP", record, f"near-duplicate (cos {neighbour.cosine:.2f})")
    if candidate.fields.get("change"):
        for neighbour in about:
            same_kind = neighbour.record.kind == candidate.kind
            if same_kind and neighbour.cosine >= CHANGE_SUPERSEDE_COS:
                slot_matches = slot is None or neighbour.record.fields.get("slot") in (slot, None)
                if slot_matches:
                    return Consolidation("UPDATE", neighbour.record, "stated change of preference")
    return Consolidation("ADD", None, "new")


def _decide_case(
    candidate: Candidate,
    neighbours: Sequence[ConsolidationNeighbour],
    settings: ConsolidationSettings,
) -> Consolidation:
    text = normalized_text(candidate.text)
    for neighbour in neighbours:
        if neighbour.record.kind != "case":
            continue
        if normalized_text(neighbour.record.text) == text:
            return Consolidation("NOOP", neighbour.record, "same case")
        # The same request asked again (its wording aside, its numbers and names the same).
        if neighbour.cosine >= settings.dup_cos and particulars_of(
            neighbour.record.key_text
        ) == particulars_of(candidate.key_text):
            detail = f"the same request (cos {neighbour.cosine:.2f})"
            return Consolidation("NOOP", neighbour.record, detail)
    return Consolidation("ADD", None, "new case")


CONSOLIDATION_PROMPT = """You maintain a memory of facts about one user.
Given a NEW fact and EXISTING memories (id and text), answer with JSON
{"operation": "ADD" | "UPDATE" | "DELETE" | "NOOP", "target_id": id or null, "reason": text}:
ADD when the fact is new; UPDATE when it replaces or refines one existing memory (target_id);
DELETE when it says an existing memory (target_id) is no longer true and nothing replaces it;
NOOP when it is already known (target_id of the memory that says it)."""


async def decide_with_model(
    candidate: Candidate,
    neighbours: Sequence[ConsolidationNeighbour],
    settings: ConsolidationSettings,
    model: str,
    call: CallModel,
) -> Consolidation:
    """The model's decision, checked; the rules decide when its answer cannot be used."""
    fallback = decide(candidate, neighbours, settings)
    if candidate.kind == "case" or not neighbours:
        return fallback
    by_id = {n.record.id: n.record for n in neighbours}
    existing = [{"id": n.record.id, "text": n.record.text} for n in neighbours]
    body = {
        "messages": [
            {"role": "system", "content": CONSOLIDATION_PROMPT},
            {"role": "user", "content": json.dumps({"new": candidate.text, "existing": existing})},
        ],
        "temperature": 0,
        "response_format": {"type": "json_object"},
    }
    try:
        parsed = json.loads(answer_text(await call(model, body)))
    except (json.JSONDecodeError, TypeError):
        return fallback
    if not isinstance(parsed, dict):
        return fallback
    operation = parsed.get("operation")
    target = by_id.get(str(parsed.get("target_id")))
    reason = f"model: {str(parsed.get('reason') or '')[:200]}"
    if operation == "ADD":
        return Consolidation("ADD", None, reason)
    if operation in ("UPDATE", "DELETE", "NOOP") and target is not None:
        return Consolidation(operation, target, reason)
    return fallback
