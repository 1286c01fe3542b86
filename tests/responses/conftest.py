"""Fixtures for the Responses door: the memory proxy with a translated and a relayed route."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import memory_proxy
from tests.scripted_upstream import ScriptedUpstream

__all__ = ["memory_proxy"]

TRANSLATED = "gpt-4o-mini"  # an OpenAI-compatible chat upstream: Responses calls are translated
NATIVE = "native"  # the same upstream, said to serve the Responses API: calls are relayed


@pytest.fixture
def responses_proxy(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> Callable[..., RunningProxy]:
    """`responses_proxy(**memory_proxy_arguments)`: memory on, both routes."""

    def start(**kwargs: Any) -> RunningProxy:
        native = {"model": "openai/gpt-4o", "api_base": upstream.url, "native_apis": ["responses"]}
        return memory_proxy(extra_models={NATIVE: native}, **kwargs)

    return start
