"""What a sanitized candidate is stored as: the verdict decides its text, trust and status.

Shared by the write path (learned memories) and the memory API (created and imported ones), so
a memory is built from its verdict one way wherever it comes from; each adds its own provenance
with `dataclasses.replace`.
"""

from __future__ import annotations

from proxy.memory.candidates import Candidate, TrustVerdict, Verdict
from proxy.policy import Policy
from storage.records import MemoryStatus, NewMemory

STATUS_FOR_VERDICT: dict[Verdict, MemoryStatus] = {
    "accept": "active",
    "quarantine": "quarantined",
    "reject": "rejected",
}


def memory_from_verdict(candidate: Candidate, verdict: TrustVerdict, policy: Policy) -> NewMemory:
    """The memory to write for `candidate`: the verdict's (possibly redacted) text, trust,
    reasons and status, the policy's starting utility."""
    return NewMemory(
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
