"""Resemblance to a lesson: a candidate like a known attack loses trust (A-MemGuard's second
memory). The signal is named "lessons" in a memory's trust reasons.

Lessons are distilled from earlier rejections and reviewer decisions (proxy/memory/lessons.py).
A variant of a known attack sits close to its lesson in embedding space even when it dodges the
text rules, so it is caught by resemblance; a second, lexical check catches near-verbatim
replays when no vector is at hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.memory.candidates import Reason
from proxy.memory.signals import normalize

LESSON_PENALTY = 0.4  # the trust a lesson match costs (docs/design.md#lessons)
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class LessonMatch:
    lesson_id: str
    cosine: float | None
    overlap: float


def shingles(text: str, size: int = 3) -> set[str]:
    """Word trigrams of the normalized text: the lexical fingerprint of a lesson."""
    words = _WORD.findall(normalize(text))
    if len(words) < size:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


# Words too common to make two texts alike on their own.
_STOPWORDS = frozenset(
    [
        "about",
        "after",
        "again",
        "also",
        "always",
        "because",
        "been",
        "before",
        "being",
        "could",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "every",
        "from",
        "have",
        "having",
        "here",
        "into",
        "just",
        "like",
        "more",
        "most",
        "much",
        "must",
        "never",
        "only",
        "other",
        "over",
        "same",
        "should",
        "some",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "under",
        "until",
        "very",
        "want",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "will",
        "with",
        "would",
        "your",
        "yours",
        "user",
        "users",
        "really",
        "things",
        "thing",
        "know",
        "make",
        "made",
        "good",
        "well",
        "time",
    ]
)
_CONTENT_WORD = re.compile(r"[a-z][a-z'-]{3,}")


def content_words(text: str) -> set[str]:
    """Distinctive words of a text (4+ letters, not a stopword)."""
    return {w for w in _CONTENT_WORD.findall(normalize(text)) if w not in _STOPWORDS}


def containment(candidate: set[str], pattern: set[str]) -> float:
    """Share of the lesson's fingerprint found in the candidate (a spliced replay scores 1)."""
    if not pattern:
        return 0.0
    return len(candidate & pattern) / len(pattern)


def lesson_reasons(matches: Sequence[LessonMatch]) -> list[Reason]:
    """One penalty for the closest lesson; the others are named in its detail."""
    if not matches:
        return []
    best = max(matches, key=lambda m: (m.cosine or 0.0, m.overlap))
    others = len(matches) - 1
    how = f"cos {best.cosine:.2f}" if best.cosine is not None else f"overlap {best.overlap:.2f}"
    detail = f"resembles lesson {best.lesson_id} ({how})" + (
        f" and {others} more" if others else ""
    )
    return [Reason("lessons", -LESSON_PENALTY, detail)]


def is_match(cosine: float | None, overlap: float, cos_threshold: float) -> bool:
    """A lesson matches on embedding resemblance, or when most of its fingerprint reappears."""
    return (cosine is not None and cosine >= cos_threshold) or overlap >= 0.6
