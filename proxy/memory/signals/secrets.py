"""Secrets and personal data: credentials, card numbers, national ids, phone numbers.

A memory is injected into later prompts and sent to the upstream model, so a secret written into
memory leaks on every call. Per policy (`sanitizer.pii`) each finding is redacted in the stored
text (`redact`, the default), refuses the memory (`reject`), or is kept (`allow`). A credential is
never kept in the clear unless the policy says `allow`; reasons name the kind, never the value.

Redaction is idempotent: a `[redacted …]` placeholder is never itself a secret. The write path
scans text that the sanitizer has already redacted (to find the same values in a memory's other
fields), and "password is [redacted password]" would otherwise read as a password whose value
is "[redacted", garbling the stored text on every pass.
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
        "password",  # or the credential its keyword names (`_KEYWORD_KINDS`)
        re.compile(
            r"(?i)\b(?P<keyword>password|passwd|passcode|pin code|pin|api key|secret key|"
            r"access token)(?:\s+(?:is|was|=|:)|\s*[:=])\s*[\"']?"
            r"(?!(?:is|was|a|an|the|my|too|not)\b)(?P<value>[^\s\"',;]{4,})"
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


# A keyword names the credential that follows it: "my api key is 3f9a…" is an api key.
_KEYWORD_KINDS = {"api key": "api key", "secret key": "secret key", "access token": "access token"}
PLACEHOLDER = re.compile(r"\[redacted [a-z ]+\]")
# What ends a sentence after a value ("my password is hunter2."): the extractor cuts it off a
# slot's value, so the value is also looked for without it.
_SENTENCE_END = re.compile(r"[.!?]+$")


@dataclass(frozen=True)
class SecretScan:
    hits: list[Hit]
    text: str  # the text to store: redacted unless the policy allows or rejects


@dataclass(frozen=True)
class Finding:
    start: int
    end: int
    kind: str
    credential: bool


def _find(text: str) -> list[Finding]:
    """The secrets in `text`, left to right, none overlapping another or a placeholder."""
    taken = [match.span() for match in PLACEHOLDER.finditer(text)]
    found: list[Finding] = []
    for pattern in _PATTERNS:
        for match in pattern.regex.finditer(text):
            kind = pattern.kind
            start, end = match.span()
            if pattern.kind == "password":
                start, end = match.span("value")
                kind = _KEYWORD_KINDS.get(" ".join(match.group("keyword").lower().split()), kind)
            if pattern.kind == "card number" and not _luhn(match.group()):
                continue
            if any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            found.append(Finding(start, end, kind, pattern.credential))
    return sorted(found, key=lambda finding: finding.start)


def secrets_in(text: str) -> dict[str, str]:
    """Each secret found in `text`, as it is written there, with its kind: so that the same
    value can be redacted where it stands without its context (a slot's value, a keyword).
    A value that ends a sentence is listed without the sentence's end as well."""
    found: dict[str, str] = {}
    for finding in _find(text):
        value = text[finding.start : finding.end]
        found[value] = finding.kind
        if len(bare := _SENTENCE_END.sub("", value)) >= 4:
            found.setdefault(bare, finding.kind)
    return found


def redact(text: str, found: dict[str, str]) -> str:
    """`text` with each value of `found` (from `secrets_in`) replaced by its placeholder, in one
    pass: a placeholder already there, or one just written, is never redacted again."""
    if not found:
        return text
    values = sorted(found, key=len, reverse=True)  # a longer secret first, then what it holds
    either = re.compile("|".join([PLACEHOLDER.pattern, *(re.escape(value) for value in values)]))

    def placeholder(match: re.Match[str]) -> str:
        value = match.group()
        return f"[redacted {found[value]}]" if value in found else value

    return either.sub(placeholder, text)


def scan(text: str, mode: PiiMode) -> SecretScan:
    """Find secrets and personal data in `text` and apply the policy's handling."""
    found = _find(text)
    if not found:
        return SecretScan([], text)

    kinds = sorted({finding.kind for finding in found})
    credential = any(finding.credential for finding in found)
    detail = f"{len(found)} found: {', '.join(kinds)}"
    if mode == "allow":
        return SecretScan([Hit("secrets", 0.0, f"kept by policy ({detail})")], text)
    if mode == "reject":
        return SecretScan([Hit("secrets", 1.0, f"refused by policy ({detail})", hard=True)], text)
    redacted = text
    for finding in reversed(found):
        start, end = finding.start, finding.end
        redacted = f"{redacted[:start]}[redacted {finding.kind}]{redacted[end:]}"
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
