"""Quarantine: what becomes of a quarantined memory. A reviewer approves or rejects it, or it
expires unreviewed after `sanitizer.quarantine_ttl_days`.

Both decisions teach the lessons (proxy/memory/lessons.py): an approval retires the lessons the
memory was matched against, since a person judged that pattern benign; a rejection distils the
memory into a new lesson, so its variants are caught.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any, Literal

from proxy.memory.candidates import Reason
from proxy.memory.lessons import forget_lessons, record_lesson
from proxy.policy import SanitizerPolicy
from storage.api import MemoryStore
from storage.records import MemoryRecord

_LESSON_ID = re.compile(r"\blesson ([\w-]+)")

ReviewDecision = Literal["approve", "reject"]


class ReviewError(Exception):
    """A review that cannot be applied; the message says why and what to do."""

    def __init__(self, message: str, *, code: str, status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


async def review(
    store: MemoryStore,
    tenant_id: str,
    memory_id: str,
    decision: ReviewDecision,
    policy: SanitizerPolicy,
    *,
    actor: str,
    note: str | None = None,
) -> MemoryRecord:
    """Apply a reviewer's decision to a quarantined memory; both decisions teach the lessons.

    Approve: the memory becomes active (trust raised to the accept line) and the lessons it was
    matched against are retired, since a person judged that pattern benign. Reject (also of an
    active memory that turned out harmful): the memory is rejected, so it is never injected
    again from the next request on, and distilled into a lesson, so its variants are caught.
    """
    found = await store.get_many(tenant_id, [memory_id])
    record = found[0] if found else None
    if record is None or record.kind == "lesson":
        raise ReviewError(
            f"No memory '{memory_id}' in this tenant; list reviewable ones with "
            "GET /v1/memories/quarantine.",
            code="memory_not_found",
            status=404,
        )
    reviewable = ("quarantined",) if decision == "approve" else ("quarantined", "active")
    if record.status not in reviewable:
        raise ReviewError(
            f"Memory '{memory_id}' is {record.status}; only quarantined memories can be "
            "approved, and only quarantined or active ones rejected.",
            code="not_quarantined",
        )
    detail = f"{decision}d by {actor}" + (f": {note[:200]}" if note else "")
    if decision == "approve":
        trust = max(record.trust, policy.active_min)
        reasons = [*record.trust_reasons, Reason("review", trust - record.trust, detail).as_dict()]
        updated = await store.update(
            record.scope, memory_id, status="active", trust=trust, trust_reasons=reasons
        )
        await _retire_matched_lessons(store, tenant_id, record, actor)
    else:
        reasons = [*record.trust_reasons, Reason("review", -record.trust, detail).as_dict()]
        updated = await store.update(
            record.scope, memory_id, status="rejected", trust=0.0, trust_reasons=reasons
        )
        flagged = [_reason_of(r) for r in record.trust_reasons]
        await record_lesson(
            store,
            record.scope,
            record.text,
            [*flagged, Reason("review", -1.0, "rejected by a reviewer")],
            origin="review",
            about_ids=[memory_id],
            sweep_cos=policy.lesson_cos_read,
        )
    if updated is None:  # deleted between the read and the write
        raise ReviewError(f"Memory '{memory_id}' was deleted.", code="memory_not_found", status=404)
    return updated


async def _retire_matched_lessons(
    store: MemoryStore, tenant_id: str, record: MemoryRecord, actor: str
) -> None:
    ids = [
        match.group(1)
        for reason in record.trust_reasons
        if reason.get("signal") == "lessons"
        for match in _LESSON_ID.finditer(str(reason.get("detail", "")))
    ]
    for lesson in await store.get_many(tenant_id, ids) if ids else []:
        if lesson.kind == "lesson" and lesson.status == "active":
            await store.update(
                lesson.scope,
                lesson.id,
                status="rejected",
                fields={**lesson.fields, "retired_by": actor, "retired_for": record.id},
            )
    forget_lessons(store, tenant_id)


def _reason_of(data: dict[str, Any]) -> Reason:
    return Reason(
        str(data.get("signal", "")),
        float(data.get("delta", 0.0)),
        str(data.get("detail", "")),
        bool(data.get("hard", False)),
    )


async def expire_quarantine(
    store: MemoryStore,
    records: Sequence[MemoryRecord],
    policy: SanitizerPolicy,
    *,
    now: float | None = None,
) -> list[MemoryRecord]:
    """Move quarantined memories older than `quarantine_ttl_days` to rejected (unreviewed
    quarantine expires, docs/design.md#verdicts-and-quarantine); return those still waiting."""
    cutoff = (now if now is not None else time.time()) - policy.quarantine_ttl_days * 86_400
    waiting = []
    for record in records:
        if record.status != "quarantined" or record.created_at >= cutoff:
            waiting.append(record)
            continue
        reason = Reason("review", -record.trust, "expired unreviewed in quarantine")
        await store.update(
            record.scope,
            record.id,
            status="rejected",
            trust=0.0,
            trust_reasons=[*record.trust_reasons, reason.as_dict()],
        )
    return waiting
