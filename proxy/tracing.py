"""OpenTelemetry set-up and the content-capture rule every stage follows."""

from __future__ import annotations

import re

from proxy.policy import TracingPolicy

_SECRETISH = re.compile(r"\b(sk-[A-Za-z0-9_-]{8,}|[A-Za-z0-9_-]{32,})\b")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
_DIGITS = re.compile(r"\d")


def content_attr(policy: TracingPolicy, text: str) -> str | None:
    """What of `text` a span may carry: nothing (off), a redacted form, or all of it (full)."""
    if policy.content == "off":
        return None
    if policy.content == "full":
        return text
    redacted = _SECRETISH.sub("[secret]", text)
    redacted = _EMAIL.sub("[email]", redacted)
    return _DIGITS.sub("#", redacted)
