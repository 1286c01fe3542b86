"""The source's prior trust: who wrote the words a candidate memory rests on.

The prior is the policy's `base_trust` for the candidate's source role, lowered to the least
trusted role among its evidence spans: a "user fact" whose words were really quoted from a tool
result or a retrieved page is only as trustworthy as that page. Tool output never becomes an
active fact: its prior (0.3 by default) sits in the quarantine band, so a reviewer sees it before
it can be injected; a role the policy gives no prior (system text, by default) starts at 0 and is
rejected (docs/design.md#source-prior).
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.memory.candidates import Candidate
from proxy.memory.signals import Hit
from storage.records import SourceRole


def prior(candidate: Candidate, base_trust: dict[str, float]) -> tuple[float, list[Hit]]:
    """The starting trust and the reasons for it."""
    role = candidate.source_role
    trust = base_trust.get(role, 0.0)
    hits = [Hit("source_prior", trust, role)]
    for evidence in candidate.evidence:
        evidence_trust = base_trust.get(evidence.role, 0.0)
        if evidence_trust < trust:
            hits.append(
                Hit("source_prior", evidence_trust - trust, f"evidence quoted from {evidence.role}")
            )
            trust = evidence_trust
    return trust, hits


def least_trusted_role(
    role: SourceRole, evidence_roles: Sequence[SourceRole], base_trust: dict[str, float]
) -> SourceRole:
    """The role whose words a candidate rests on and trusts least (ties keep `role`)."""
    least = role
    for each in evidence_roles:
        if base_trust.get(each, 0.0) < base_trust.get(least, 0.0):
            least = each
    return least
