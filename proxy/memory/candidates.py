"""What flows between the write-path stages: candidates, their evidence, and trust verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from storage.records import MemoryKind, SourceRole

Verdict = Literal["accept", "quarantine", "reject"]


@dataclass(frozen=True)
class Evidence:
    """The exact span of the exchange a candidate came from, and who wrote it."""

    role: SourceRole  # user, assistant, tool…
    span: str  # verbatim text, verified against the exchange
    turn: int | None = None  # index of the message in the exchange (None for the answer)


@dataclass
class Candidate:
    """A memory the extractor proposes; nothing is written before it is sanitized."""

    kind: MemoryKind
    text: str
    source_role: SourceRole
    key_text: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Words the memory is also found by (its BM25 text), never shown: the turn a short or
    # referring request answers, so the request is findable by what it refers to.
    keywords: list[str] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    created_at: float | None = None
    # Ids of the memory this candidate is (an edit or an import of it) and of its other
    # versions: consensus never counts the memory as a witness for itself.
    same_as: frozenset[str] = frozenset()

    @property
    def comparable_kinds(self) -> list[MemoryKind]:
        """The kinds it is compared with (consensus, duplicates, consolidation): a case with
        past cases, a fact or preference with the user's facts and preferences."""
        return ["case"] if self.kind == "case" else ["fact", "preference"]


@dataclass(frozen=True)
class Reason:
    """One signal's contribution to a trust score.

    `delta` is what the signal added to (negative: took from) the trust score; `hard` marks a
    rule that rejects on its own; `detail` says what matched, never the memory's full content.
    """

    signal: str
    delta: float
    detail: str = ""
    hard: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "delta": round(self.delta, 4),
            "detail": self.detail,
            "hard": self.hard,
        }


@dataclass
class TrustVerdict:
    """The sanitizer's decision for one candidate."""

    verdict: Verdict
    trust: float
    reasons: list[Reason]
    text: str  # the text to store: the candidate's, with secrets redacted where policy says so

    def reasons_as_dicts(self) -> list[dict[str, Any]]:
        return [reason.as_dict() for reason in self.reasons]
