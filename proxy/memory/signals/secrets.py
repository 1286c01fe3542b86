"""Secrets and personal data: credentials, card numbers, national ids, phone numbers.

A memory is injected into later prompts and sent to the upstream model, so a secret written into
memory leaks on every call. Per policy (`sanitizer.pii`) each finding is redacted in the stored
text (`redact`, the default), refuses the memory (`reject`), or is kept (`allow`). A credential is
never kept in the clear unless the policy says `allow`; reasons name the kind, never the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from proxy.memory.signals import Hit

PiiMode = Literal["redact", "reject", "allow"]


@dataclass(frozen=True)
class Pattern:
    kind: str
    regex: re.Pattern[str]
    credential: bool  # a credential grants access; personal data identifies a person


_PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        "private key",
        re.compile(
            r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----[\s\S]*?"
            r"(?:-----END (?:[A-Z]+ )?PRIVATE KEY-----|$)"
        ),
        True,
    ),
    Pattern(
        "api key",
        re.compile(
            r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|"
            r"gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}|xox[abprs]-[A-Za-z0-9-]{10,}|"
            r"AIza[0-9A-Za-z_-]{35}|glpat-[A-Za-z0-9_-]{20}|sk_live_[0-9a-zA-Z]{20,}|"
            r"rk_live_[0-9a-zA-Z]{20,}|hf_[A-Za-z0-9]{30,})\b"
        ),
        True,
    ),
    Pattern(
        "jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), True
    ),
    Pattern("bearer token", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{20,}"), True),
    Pattern(
        "password",
        re.compile(
            r"(?i)\b(?:password|passwd|passcode|pin code|pin|api key|secret key|access token)"
            r"(?:\s+(?:is|was|=|:)|\s*[:=])\s*[\"']?(?!(?:is|was|a|an|the|my|too|not)\b)([^\s\"',;]{4,})"
        ),
        True,
    ),
    Pattern("card number", re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), False),
    Pattern("us ssn", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), False),
    Pattern(
        "iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b"), False
    ),
    Pattern(
        "phone number",
        re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]?\d{4}(?!\d)"
        ),
        False,
    ),
)


@dataclass(frozen=True)
class SecretScan:
    hits: list[Hit]
    text: str  # the text to store: redacted unless the policy allows or rejects


def _find(text: str) -> list[tuple[int, int, Pattern]]:
    found: list[tuple[int, int, Pattern]] = []
    for pattern in _PATTERNS:
        for match in pattern.regex.finditer(text):
            start, end = match.span(1) if pattern.kind == "password" else match.span()
            if pattern.kind == "card number" and not _luhn(match.group()):
                continue
            if any(start < e and s < end for s, e, _ in found):
                continue
            found.append((start, end, pattern))
    return found


def secrets_in(text: str) -> dict[str, str]:
    """Each secret found in `text`, as it is written there, with its kind: so that the same
    value can be redacted where it stands without its context (a slot's value, a keyword)."""
    return {text[start:end]: pattern.kind for start, end, pattern in _find(text)}


def scan(text: str, mode: PiiMode) -> SecretScan:
    """Find secrets and personal data in `text` and apply the policy's handling."""
    found = _find(text)
    if not found:
        return SecretScan([], text)

    kinds = sorted({pattern.kind for _, _, pattern in found})
    credential = any(pattern.credential for _, _, pattern in found)
    detail = f"{len(found)} found: {', '.join(kinds)}"
    if mode == "allow":
        return SecretScan([Hit("secrets", 0.0, f"kept by policy ({detail})")], text)
    if mode == "reject":
        return SecretScan([Hit("secrets", 1.0, f"refused by policy ({detail})", hard=True)], text)
    redacted = text
    for start, end, pattern in sorted(found, key=lambda item: item[0], reverse=True):
        redacted = f"{redacted[:start]}[redacted {pattern.kind}]{redacted[end:]}"
    # A credential pasted into a conversation is more often a mistake than an attack; the memory
    # is still worth keeping once redacted, so the penalty stays small.
    return SecretScan(
        [Hit("secrets", 0.1 if credential else 0.05, f"redacted ({detail})")], redacted
    )


def _luhn(candidate: str) -> bool:
    digits = [int(ch) for ch in candidate if ch.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0
