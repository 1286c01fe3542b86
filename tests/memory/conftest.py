"""Fixtures for the memory tests: a proxy with memory on, two tenants, a scripted upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.policy import deep_merge
from tests.harness import RunningProxy, write_tenant
from tests.scripted_upstream import ScriptedUpstream

KEY = "memory-tenant-key"
OTHER_KEY = "other-tenant-key"


def models(upstream: ScriptedUpstream, **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "gpt-4o-mini": {"model": "openai/gpt-4o-mini", "api_base": upstream.url},
        "echo": {"model": "echo"},
        **extra,
    }


@pytest.fixture
def memory_proxy(
    upstream: ScriptedUpstream, policies_dir: Path, start_proxy: Callable[..., RunningProxy]
) -> Iterator[Callable[..., RunningProxy]]:
    """`memory_proxy(memory={...policy memory section...}, models={...})` starts the proxy.
    At the end of the test, replies the upstream still holds are let go before the proxy stops
    (it drains its queue: an extraction held to the end would hold the stop up)."""

    def start(
        memory: dict[str, Any] | None = None,
        extra_models: dict[str, dict[str, Any]] | None = None,
        **settings: Any,
    ) -> RunningProxy:
        tenant_models = models(upstream, **(extra_models or {}))
        # Tests share two CPU cores with everything else: a generous retrieval deadline keeps
        # them about behaviour (the deadline itself is tested on its own, speed in bench/).
        section = deep_merge({"retrieval": {"deadline_ms": 20_000}}, memory or {})
        write_tenant(policies_dir, "acme", KEY, tenant_models, memory=section)
        write_tenant(policies_dir, "globex", OTHER_KEY, tenant_models, memory=section)
        return start_proxy(policies_dir, **settings)

    yield start
    upstream.release()


def client_for(proxy: RunningProxy, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=key, max_retries=0)


def api(proxy: RunningProxy, key: str = KEY) -> httpx.Client:
    return httpx.Client(
        base_url=proxy.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def wait_for_memories(
    proxy: RunningProxy, user: str, count: int, *, key: str = KEY, timeout_s: float = 30
) -> list[dict[str, Any]]:
    """Poll the memory API until the user has at least `count` active memories (the write path
    runs in the background)."""
    deadline = time.monotonic() + timeout_s
    with api(proxy, key) as http:
        while True:
            data = http.get("/v1/memories", params={"user": user, "status": "active"}).json()
            memories: list[dict[str, Any]] = data["data"]
            if len(memories) >= count or time.monotonic() > deadline:
                return memories
            time.sleep(0.1)


def seed_favourite_drink(proxy: RunningProxy) -> None:
    """One memory for user `lee` that the question "What is my favourite drink?" finds."""
    with api(proxy) as http:
        created = http.post(
            "/v1/memories",
            json={
                "user": "lee",
                "kind": "preference",
                "text": "The user's favourite drink is mate.",
            },
        )
        assert created.status_code == 201


def fill_retrieval_slots(proxy: RunningProxy) -> None:
    """Every retrieval slot of the proxy taken, as if it were busy with other calls."""
    proxy.app.state.memory.reads.slots._free = asyncio.Semaphore(0)


def memory_block(body: dict[str, Any]) -> str | None:
    """The memory block the upstream received, if any."""
    for message in body.get("messages") or []:
        content = message.get("content")
        if message.get("role") == "system" and isinstance(content, str) and "<memory" in content:
            return content
    return None


def wait_for_trace(
    proxy: RunningProxy, request_id: str, span_names: set[str], *, timeout_s: float = 30
) -> dict[str, Any]:
    """Poll the trace API until the request's trace holds every span named (batched export)."""
    deadline = time.monotonic() + timeout_s
    with api(proxy) as http:
        while True:
            response = http.get(f"/v1/traces/{request_id}")
            if response.status_code == 200:
                trace: dict[str, Any] = response.json()
                if span_names <= {span["name"] for span in trace["spans"]}:
                    return trace
            if time.monotonic() > deadline:
                raise AssertionError(f"trace of {request_id} lacks {span_names}: {response.text}")
            time.sleep(0.2)
