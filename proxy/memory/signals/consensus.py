"""Consensus (A-MemGuard, moved to write time): does the candidate agree with what the scope
already trusts?

Facts: a candidate on the same subject as trusted memories that says the opposite (negation
flipped, or a different value for the same slot such as "my city is …") contradicts them. A user
correcting one of their own facts is an update, not an attack; contradicting several trusted
memories at once, or contradicting them from a less trusted source, costs trust.

Cases: among past cases for the same request, the candidate's answer should sit with the majority.
A lone dissenter (noise under DBSCAN over answer embeddings, A-MemGuard's eps 0.5 and
min_samples 2) loses trust; agreeing with the majority earns a small bonus.

A memory is never a witness for itself: neighbours that are the candidate's own record, one of
its versions, or a verbatim copy of its text (an earlier import of the same memory) are left out
before either check (`independent`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from proxy.memory.candidates import Candidate, Reason
from proxy.memory.signals import normalize
from proxy.policy import SanitizerPolicy
from storage.records import MemoryRecord, Vector

TRUSTED_MIN = 0.6  # the default accept threshold: what counts as a "trusted" neighbour
_NEGATION = re.compile(
    r"\b(?:not|no|never|don't|doesn't|didn't|isn't|aren't|wasn't|weren't|can't|cannot|won't|"
    r"hate|hates|dislike|dislikes|avoid|avoids|stopped|quit|no longer)\b"
)
_SLOT = re.compile(r"\bmy ([a-z][a-z ]{1,30}?) (?:is|are|was|were) ([^.,;!?]+)")


@dataclass(frozen=True)
class Neighbour:
    """An existing memory near the candidate, with its cosine similarity and stored vector."""

    record: MemoryRecord
    cosine: float
    vector: Vector | None = None


def independent(candidate: Candidate, neighbours: Sequence[Neighbour]) -> list[Neighbour]:
    """The neighbours that are other memories: not the candidate itself, not one of its
    versions (`candidate.same_as`), not a copy with the same text."""
    same = candidate.same_as
    text = normalize(candidate.text)
    return [
        n
        for n in neighbours
        if n.record.id not in same
        and n.record.supersedes not in same
        and n.record.superseded_by not in same
        and normalize(n.record.text) != text
    ]


def fact_consensus(
    candidate: Candidate, neighbours: Sequence[Neighbour], policy: SanitizerPolicy
) -> list[Reason]:
    """Agreement or contradiction with trusted facts on the same subject."""
    trusted = [
        n
        for n in neighbours
        if n.record.kind in ("fact", "preference")
        and n.record.status == "active"
        and n.record.trust >= TRUSTED_MIN
        and n.cosine >= policy.topic_cos
    ]
    if not trusted:
        return []
    contradicted = [n for n in trusted if contradicts(candidate.text, n.record.text)]
    if contradicted:
        ids = ", ".join(n.record.id for n in contradicted[:5])
        # The user may correct one of their own facts (that is supersession, not an attack).
        allowance = 1 if candidate.source_role in ("user", "import", "admin") else 0
        excess = len(contradicted) - allowance
        if excess <= 0:
            return [Reason("consensus", 0.0, f"updates memory {ids}")]
        delta = -min(0.45, 0.15 * excess)
        return [
            Reason("consensus", delta, f"contradicts {len(contradicted)} trusted memories: {ids}")
        ]
    agreeing = [n for n in trusted if n.cosine >= policy.dup_cos]
    if agreeing:
        return [Reason("consensus", 0.05, f"agrees with memory {agreeing[0].record.id}")]
    return []


def contradicts(new: str, old: str) -> bool:
    """Two statements on one subject that cannot both hold: opposite polarity, or one slot with
    two values."""
    new_norm, old_norm = normalize(new), normalize(old)
    if _polarity(new_norm) != _polarity(old_norm):
        return True
    new_slots = dict(_SLOT.findall(new_norm))
    for slot, value in _SLOT.findall(old_norm):
        if slot in new_slots and new_slots[slot].strip() != value.strip():
            return True
    return False


def _polarity(norm: str) -> int:
    return -1 if len(_NEGATION.findall(norm)) % 2 else 1


def case_consensus(
    candidate_vector: Sequence[float], neighbours: Sequence[Neighbour], policy: SanitizerPolicy
) -> list[Reason]:
    """The candidate case's answer against past answers to the same request."""
    peers = [
        n
        for n in neighbours
        if n.record.kind == "case"
        and n.record.status == "active"
        and n.cosine >= policy.case_key_cos
        and n.vector is not None
    ]
    if len(peers) < 2:
        return []
    vectors = np.array(
        [candidate_vector, *(n.vector for n in peers if n.vector is not None)], dtype=np.float32
    )
    labels = dbscan(vectors, policy.dbscan.eps, policy.dbscan.min_samples)
    mine = labels[0]
    peer_labels = [label for label in labels[1:] if label >= 0]
    if not peer_labels:
        return []
    majority = max(set(peer_labels), key=peer_labels.count)
    if mine == -1 or (mine != majority and peer_labels.count(majority) >= 2):
        return [Reason("consensus", -0.3, f"lone dissenter among {len(peers)} past answers")]
    if mine == majority:
        return [Reason("consensus", 0.1, f"agrees with {peer_labels.count(majority)} past answers")]
    return []


def dbscan(points: np.ndarray, eps: float, min_samples: int) -> list[int]:
    """Plain DBSCAN over a handful of unit vectors (euclidean); -1 marks noise."""
    count = len(points)
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    neighbourhoods = [np.flatnonzero(distances[i] <= eps).tolist() for i in range(count)]
    core = [len(neighbourhood) >= min_samples for neighbourhood in neighbourhoods]
    labels = [-1] * count
    cluster = 0
    for start in range(count):
        if labels[start] != -1 or not core[start]:
            continue
        labels[start] = cluster
        frontier = list(neighbourhoods[start])
        while frontier:
            point = frontier.pop()
            if labels[point] == -1:
                labels[point] = cluster
                if core[point]:
                    frontier.extend(neighbourhoods[point])
        cluster += 1
    return labels
