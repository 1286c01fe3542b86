"""What of a text a span may carry, per the tenant's tracing policy."""

from __future__ import annotations

from proxy.policy import TracingPolicy
from proxy.tracing import content_attr


def test_content_capture_follows_the_policy() -> None:
    text = "Mail me at ann@example.com, key sk-abcdefghijklmnop, I was born in 1984"
    assert content_attr(TracingPolicy(content="off"), text) is None
    assert content_attr(TracingPolicy(content="full"), text) == text
    redacted = content_attr(TracingPolicy(content="redacted"), text)
    assert redacted == "Mail me at [email], key [secret], I was born in ####"
