"""Small rules: what of a text a span may carry, and where OTLP export goes."""

from __future__ import annotations

import pytest

from proxy.policy import TracingPolicy
from proxy.tracing import content_attr, otlp_traces_url


def test_content_capture_follows_the_policy() -> None:
    text = "Mail me at ann@example.com, key sk-abcdefghijklmnop, I was born in 1984"
    assert content_attr(TracingPolicy(content="off"), text) is None
    assert content_attr(TracingPolicy(content="full"), text) == text
    redacted = content_attr(TracingPolicy(content="redacted"), text)
    assert redacted == "Mail me at [email], key [secret], I was born in ####"


def test_otlp_url_from_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert otlp_traces_url() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert otlp_traces_url() == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4318/custom")
    assert otlp_traces_url() == "http://tempo:4318/custom"
    assert otlp_traces_url("http://other:4318") == "http://other:4318/v1/traces"
