"""Session-level signals against query-only injection (MINJA).

MINJA needs no write access: an attacker session repeats near-identical requests whose stored
cases teach a bridging claim ("patient A's records are filed under patient B"). So, within a
session: a burst of near-duplicate writes, an entity mapping that the user never stated, or more
writes than the policy's per-session rate all cost trust.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from proxy.memory.signals import Hit, normalize, snippet

_BRIDGE = re.compile(
    r"\b(?:is|are|was|were|has been|have been)\s+(?:also |now |actually |really |officially )?"
    r"(?:known|referred to|stored|saved|filed|listed|recorded|kept|mapped|renamed|registered|"
    r"called|identified|treated|handled|interpreted|read)\s+(?:as|under|to|with|in)\s+"
    r"([\w' -]{2,40})|"
    r"\b(?:refer to|look up|consult|redirect to)\s+([\w' -]{2,40}?)\s+"
    r"(?:for|instead of|when asked about|in place of)\b|"
    r"\b(?:use|check|see)\s+([\w' -]{2,40}?)\s+(?:instead of|in place of|when asked about)\b|"
    r"\b(?:means|stands for|is the same as|is an alias (?:for|of)|"
    r"should be (?:treated|read|interpreted|answered) as)\s+([\w' -]{2,40})"
)


def bridging_claim(text: str, user_text: str) -> Hit | None:
    """An entity mapping asserted by the candidate whose target the user never mentioned."""
    norm = normalize(text)
    user_norm = normalize(user_text)
    for match in _BRIDGE.finditer(norm):
        target = next(group for group in match.groups() if group).strip()
        words = [w for w in re.findall(r"[a-z0-9]+", target) if len(w) > 2]
        if words and not all(word in user_norm for word in words[:3]):
            return Hit("session", 0.45, f"unsupported entity mapping: {snippet(match.group())}")
    return None


def burst(vectors: Sequence[Sequence[float]], index: int, cos: float, count: int) -> Hit | None:
    """The write at `index` belongs to a group of >= `count` near-identical session writes."""
    if len(vectors) < count:
        return None
    matrix = np.asarray(vectors, dtype=np.float32)
    similar = int(np.sum(matrix @ matrix[index] >= cos))  # includes itself
    if similar >= count:
        return Hit("session", 0.5, f"{similar} near-identical writes in one session")
    return None


def over_rate(session_writes: int, per_session: int) -> Hit | None:
    """More memory writes in one session than the policy allows."""
    if per_session and session_writes >= per_session:
        return Hit(
            "session", 0.5, f"session already wrote {session_writes} memories (limit {per_session})"
        )
    return None


def over_daily_rate(writes_today: int, per_day: int) -> Hit | None:
    """More memory writes by one user in 24 hours than the policy allows."""
    if per_day and writes_today >= per_day:
        return Hit(
            "session", 0.5, f"user already wrote {writes_today} memories today (limit {per_day})"
        )
    return None
