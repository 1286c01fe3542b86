"""Independent signals the sanitizer fuses into one trust score.

Each module looks at a candidate memory from one angle (where it came from, whether it instructs
the assistant, whether it carries a payload out, whether it hides text, whether it holds secrets,
whether it agrees with what is already trusted, whether it resembles a known attack) and returns
`Hit`s: a strength in [0, 1], a rule id and a short, content-free detail. The text-only signals are
pure functions; the ones that need memory (consensus, lessons, session) take their neighbours as
arguments so they can be tested without a store.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

# The signals that judge what a text says, not where it came from: a rejection they caused is
# distilled into a lesson, and a memory they flagged is swept when a new lesson resembles it.
CONTENT_SIGNALS = frozenset(
    {"instructions", "steering", "exfiltration", "obfuscation", "session", "lessons"}
)


@dataclass(frozen=True)
class Hit:
    """One thing a signal found. `score` is its strength; `hard` rejects on its own."""

    signal: str
    score: float
    detail: str
    hard: bool = False


# Characters with no visible glyph that attackers use to split trigger words or hide text.
INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_TAGS = re.compile("[\U000e0000-\U000e007f]")
_SPACES = re.compile(r"\s+")


# A write's checks normalise the same texts over and over (a candidate once per signal, each
# of its neighbours once per check, the scope's memories again for the next candidate).
@functools.lru_cache(maxsize=8192)
def normalize(text: str) -> str:
    """Text as a reader would see it: NFKC (fullwidth → ASCII), invisible characters removed,
    Unicode tag characters removed, whitespace collapsed, lower case. Signals match on this so an
    attacker cannot dodge a rule by splitting a word with a zero-width space."""
    text = unicodedata.normalize("NFKC", text)
    text = INVISIBLE.sub("", text)
    text = _TAGS.sub("", text)
    return _SPACES.sub(" ", text).strip().lower()


_CLAUSE_BREAK = re.compile(r"(?<=[.!?;:])\s+|\s*[;\n]\s*|\s+[-–—]\s+|,\s+(?:and|but|so|then)\s+")


def clauses(normalized: str) -> list[str]:
    """Split normalized text into sentence-like clauses (a spliced instruction starts one)."""
    return [part.strip(" \"'()[]*_`") for part in _CLAUSE_BREAK.split(normalized) if part.strip()]


def snippet(match: str, limit: int = 40) -> str:
    """A short quote of what matched, for reasons; never the whole memory."""
    match = _SPACES.sub(" ", match).strip()
    return match if len(match) <= limit else match[: limit - 1] + "…"
