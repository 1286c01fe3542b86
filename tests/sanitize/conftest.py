"""A real store for the store-backed signals, and the real proxy with memory on for end-to-end
tests (scripted upstream, official openai SDK)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from proxy.policy import deep_merge
from storage import EmbeddedStore, open_store
from storage.embedders import LocalEmbedder
from tests.harness import RunningProxy, write_tenant
from tests.scripted_upstream import ScriptedUpstream


@pytest.fixture(scope="session")
def sanitizer_embedder() -> Iterator[LocalEmbedder]:
    embedder = LocalEmbedder()
    asyncio.run(embedder.load())
    yield embedder
    embedder.close()


# In the test's own event loop, as the storage tests' store: the store's locks and its
# background index writes belong to the loop that uses it, and a close run in another loop
# could find them bound to the test's.
@pytest_asyncio.fixture(loop_scope="function")
async def memory_store(
    tmp_path: Path, sanitizer_embedder: LocalEmbedder
) -> AsyncIterator[EmbeddedStore]:
    opened = await open_store(tmp_path / "data", sanitizer_embedder)
    yield opened
    await opened.close()


KEY = "sanitizer-tenant-key"


@pytest.fixture
def sanitizing_proxy(
    upstream: ScriptedUpstream, policies_dir: Path, start_proxy: Callable[..., RunningProxy]
) -> Callable[..., RunningProxy]:
    """`sanitizing_proxy(**policy_sections)` starts the real proxy, memory on, tenant acme."""

    def start(**sections: Any) -> RunningProxy:
        models = {"gpt-4o-mini": {"model": "openai/gpt-4o-mini", "api_base": upstream.url}}
        # Shared CPUs: a generous retrieval deadline keeps the tests about behaviour.
        memory = deep_merge({"retrieval": {"deadline_ms": 20_000}}, sections.pop("memory", {}))
        write_tenant(policies_dir, "acme", KEY, models, memory=memory, **sections)
        return start_proxy(policies_dir)

    return start


def http_for(proxy: RunningProxy, key: str = KEY) -> httpx.Client:
    return httpx.Client(
        base_url=proxy.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def chat(proxy: RunningProxy, user: str, *messages: dict[str, Any]) -> None:
    """One chat call through the official SDK."""
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=KEY, max_retries=0)
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=list(messages),  # type: ignore[arg-type]
        user=user,
    )


def memories_of(proxy: RunningProxy, user: str, status: str | None = None) -> list[dict[str, Any]]:
    params = {"user": user, **({"status": status} if status else {})}
    with http_for(proxy) as http:
        data: list[dict[str, Any]] = http.get("/v1/memories", params=params).json()["data"]
    return data


def wait_until_written(
    proxy: RunningProxy, user: str, count: int, *, containing: str = "", timeout_s: float = 60
) -> list[dict[str, Any]]:
    """Poll until the background write path has stored `count` memories of any status (and one
    containing `containing`, when given)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [
            m
            for status in ("active", "quarantined", "rejected")
            for m in memories_of(proxy, user, status)
        ]
        done = len(found) >= count and any(containing in m["text"] for m in found)
        if done or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def memory_block(body: dict[str, Any]) -> str:
    """The memory block the upstream received ("" when none was injected)."""
    for message in body.get("messages") or []:
        content = message.get("content")
        if message.get("role") == "system" and isinstance(content, str) and "<memory" in content:
            return content
    return ""
