"""What a sanitized candidate is stored as: the verdict decides its text, trust and status.

Shared by the write path (learned memories) and the memory API (created and imported ones), so
a memory is built from its verdict one way wherever it comes from; each passes its own
provenance. A secret the sanitizer redacted in the text is redacted in everything else the
memory keeps of the conversation as well (its key text, fields, keywords, tags and evidence):
otherwise the API, an export, a search and the index would still hold it. The caller's own
`metadata` JSON is stored as given.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from proxy.memory.candidates import Candidate, TrustVerdict, Verdict
from proxy.memory.signals import secrets
from proxy.policy import Policy
from storage.records import MemoryRecord, MemoryStatus, NewMemory

STATUS_FOR_VERDICT: dict[Verdict, MemoryStatus] = {
    "accept": "active",
    "quarantine": "quarantined",
    "reject": "rejected",
}


def memory_from_verdict(
    candidate: Candidate, verdict: TrustVerdict, policy: Policy, **provenance: Any
) -> NewMemory:
    """The memory to write for `candidate`: the verdict's (possibly redacted) text, trust,
    reasons and status, the policy's starting utility, and the caller's `provenance` (fields of
    `NewMemory` such as `evidence` or `source_request_id`); secrets redacted throughout unless
    the policy keeps them (`sanitizer.pii: allow`)."""
    memory = NewMemory(
        kind=candidate.kind,
        text=verdict.text,
        key_text=candidate.key_text or verdict.text,
        fields=dict(candidate.fields),
        metadata=dict(candidate.metadata),
        keywords=list(candidate.keywords),
        source_role=candidate.source_role,
        trust=verdict.trust,
        trust_reasons=verdict.reasons_as_dicts(),
        status=STATUS_FOR_VERDICT[verdict.verdict],
        q=policy.memory.feedback.q0,
        created_at=candidate.created_at,
    )
    memory = dataclasses.replace(memory, **provenance)
    return memory if policy.sanitizer.pii == "allow" else without_secrets(memory)


_Memory = TypeVar("_Memory", NewMemory, MemoryRecord)


def without_secrets(memory: _Memory) -> _Memory:
    """`memory` with every secret found in its conversation-derived strings redacted wherever
    its value appears in them (a password's value stands alone in a slot, without the words
    that make it recognisable). The text may already be redacted (the sanitizer's verdict):
    its placeholders are left as they are, so redacting twice changes nothing."""
    parts: list[Any] = [memory.text, memory.key_text, memory.fields, memory.keywords, memory.tags]
    found: dict[str, str] = {}
    for text in _strings([*parts, memory.evidence]):
        found.update(secrets.secrets_in(text))
    if not found:
        return memory

    def redacted(value: Any) -> Any:
        if isinstance(value, str):
            return secrets.redact(value, found)
        if isinstance(value, dict):
            return {key: redacted(item) for key, item in value.items()}
        if isinstance(value, list):
            return [redacted(item) for item in value]
        return value

    return dataclasses.replace(
        memory,
        text=redacted(memory.text),
        key_text=redacted(memory.key_text),
        fields=redacted(memory.fields),
        keywords=redacted(memory.keywords),
        tags=redacted(memory.tags),
        evidence=redacted(memory.evidence),
    )


def _strings(value: Any) -> list[str]:
    """Every string inside `value` (dicts and lists searched through)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []
