"""Fixtures for the Messages door: the proxy with memory on, a native and a translated route."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.harness import RunningProxy, write_tenant
from tests.scripted_upstream import ScriptedUpstream

KEY = "messages-tenant-key"
PROVIDER_KEY_VARIABLE = "SCRIPTED_ANTHROPIC_KEY"
PROVIDER_KEY = "sk-ant-provider-key"
NATIVE = "claude"  # relayed: its upstream serves Messages itself
TRANSLATED = "gpt-4o-mini"  # translated into chat completions
LOCAL = "claude-local"  # relayed to a server that needs no provider key


@pytest.fixture
def messages_proxy(
    upstream: ScriptedUpstream,
    policies_dir: Path,
    start_proxy: Callable[..., RunningProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> RunningProxy:
    monkeypatch.setenv(PROVIDER_KEY_VARIABLE, PROVIDER_KEY)
    models: dict[str, dict[str, Any]] = {
        NATIVE: {
            "model": "anthropic/claude-sonnet-4-5",
            "api_base": upstream.url,
            "api_key": f"env:{PROVIDER_KEY_VARIABLE}",
            "native_apis": ["messages"],
        },
        TRANSLATED: {"model": "openai/gpt-4o-mini", "api_base": upstream.url},
        LOCAL: {"model": "anthropic/local", "api_base": upstream.url, "native_apis": ["messages"]},
        "echo": {"model": "echo"},  # the README's offline quickstart
    }
    # A generous retrieval deadline: the tests share two cores (see tests/memory/conftest.py).
    memory = {"retrieval": {"deadline_ms": 20_000}}
    write_tenant(policies_dir, "acme", KEY, models, memory=memory)
    return start_proxy(policies_dir)


def client_for(proxy: RunningProxy, key: str = KEY) -> anthropic.Anthropic:
    """The official anthropic SDK pointed at the proxy, as ANTHROPIC_BASE_URL would."""
    return anthropic.Anthropic(base_url=proxy.base_url, api_key=key, max_retries=0)
