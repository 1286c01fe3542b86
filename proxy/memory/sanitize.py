"""Sanitize: give every candidate memory a trust score and a verdict before anything is written.

This is the stage's interface with its conservative default (the source's prior trust only);
the trust-scored signals of MEMORY-DESIGN.md replace the body of `Sanitizer.assess`.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.memory.candidates import Candidate, Reason, TrustVerdict, Verdict
from proxy.policy import SanitizerPolicy
from storage.api import MemoryStore
from storage.records import Scope


def verdict_for(trust: float, policy: SanitizerPolicy, *, hard: bool = False) -> Verdict:
    """Map a trust score to accept / quarantine / reject by the policy's thresholds."""
    if hard or trust < policy.quarantine_min:
        return "reject"
    if trust < policy.active_min:
        return "quarantine"
    return "accept"


class Sanitizer:
    """Decides accept / quarantine / reject for candidates of one scope."""

    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store

    async def assess(
        self, scope: Scope, candidates: Sequence[Candidate], policy: SanitizerPolicy
    ) -> list[TrustVerdict]:
        """One verdict per candidate, in order. Never writes anything."""
        verdicts = []
        for candidate in candidates:
            prior = policy.base_trust.get(candidate.source_role, 0.0)
            reasons = [Reason("source_prior", prior, candidate.source_role)]
            verdicts.append(
                TrustVerdict(verdict_for(prior, policy), prior, reasons, candidate.text)
            )
        return verdicts
