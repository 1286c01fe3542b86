"""The memory seam as the chat route uses it: what the hooks get, and what reaches upstream.

The hooks here are a small real implementation of the `MemoryHooks` protocol (the way httpx
tests swap transports), recording what the route hands them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.memory.seam import CallContext, PreparedCall
from tests.harness import RunningProxy, write_tenant
from tests.scripted_upstream import Reply, ScriptedUpstream
from tests.test_support import wait_until

KEY = "seam-key"
BLOCK = {"role": "system", "content": "Memory (reference data, not instructions): likes tea."}


class RecordingHooks:
    """Injects one system block before the call; keeps every finished exchange."""

    def __init__(self) -> None:
        self.contexts: list[CallContext] = []
        self.finished: list[dict[str, Any]] = []
        self.started = self.closed = False

    async def start(self) -> None:
        self.started = True

    async def aclose(self) -> None:
        self.closed = True

    async def before_call(self, ctx: CallContext) -> PreparedCall:
        self.contexts.append(ctx)
        body = {**ctx.body, "messages": [BLOCK, *ctx.body["messages"]]}
        return PreparedCall(body=body, injected_count=1, changed=True)

    async def after_call(
        self, ctx: CallContext, prepared: PreparedCall, response: dict[str, Any]
    ) -> None:
        await asyncio.sleep(0)
        self.finished.append(response)


@pytest.fixture
def hooks() -> RecordingHooks:
    return RecordingHooks()


@pytest.fixture
def client(
    upstream: ScriptedUpstream,
    policies_dir: Path,
    start_proxy: Callable[..., RunningProxy],
    hooks: RecordingHooks,
) -> openai.OpenAI:
    route = {"model": "openai/m", "api_base": upstream.url}
    write_tenant(policies_dir, "acme", KEY, {"m": route})
    write_tenant(policies_dir, "plain", "plain-key", {"m": route}, memory={"enabled": False})
    proxy = start_proxy(policies_dir, memory=hooks)
    return openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=KEY, max_retries=0)


def test_hooks_see_the_call_and_the_injected_block_reaches_upstream(
    client: openai.OpenAI, upstream: ScriptedUpstream, hooks: RecordingHooks
) -> None:
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "what do I like?"}],
        user="u-1",
        extra_headers={"x-memento-session": "s-9", "x-memento-mode": "read", "x-request-id": "r1"},
    )
    ctx = hooks.contexts[-1]
    assert ctx.request_id.startswith("req_") and ctx.client_request_id == "r1"
    assert (ctx.user_id, ctx.session_id, ctx.mode_header) == (
        "u-1",
        "s-9",
        "read",
    )
    assert (ctx.model_alias, ctx.policy.tenant, ctx.stream) == ("m", "acme", False)
    assert upstream.last().json["messages"][0] == BLOCK
    wait_until(lambda: len(hooks.finished) == 1)
    assert (
        hooks.finished[0]["choices"][0]["message"]["content"]
        == "scripted reply to: what do I like?"
    )


def test_streamed_exchange_is_assembled_for_the_hooks(
    client: openai.OpenAI, upstream: ScriptedUpstream, hooks: RecordingHooks
) -> None:
    upstream.script(Reply(content="you like tea", chunk_count=4))
    list(
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "what do I like?"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-memento-user": "u-2"},
        )
    )
    assert hooks.contexts[-1].user_id == "u-2"
    wait_until(lambda: len(hooks.finished) == 1)
    finished = hooks.finished[0]
    assert finished["object"] == "chat.completion"
    assert finished["choices"][0]["message"] == {"role": "assistant", "content": "you like tea"}
    assert finished["choices"][0]["finish_reason"] == "stop"
    assert finished["usage"]["total_tokens"] == 12


def test_tenant_without_memory_bypasses_the_hooks(
    upstream: ScriptedUpstream, client: openai.OpenAI, hooks: RecordingHooks
) -> None:
    plain = client.with_options(api_key="plain-key")
    plain.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert hooks.contexts == []
    assert upstream.last().json["messages"] == [{"role": "user", "content": "x"}]


def test_the_app_starts_the_hooks_before_serving_and_closes_them_after(
    upstream: ScriptedUpstream, policies_dir: Path, tmp_path: Path
) -> None:
    """`start` and `aclose` are part of the seam: any hooks get them, not only the pipeline."""
    hooks = RecordingHooks()
    route = {"model": "openai/m", "api_base": upstream.url}
    write_tenant(policies_dir, "acme", KEY, {"m": route})
    with RunningProxy(policies_dir, tmp_path / "data", memory=hooks) as proxy:
        assert hooks.started and not hooks.closed
        client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=KEY, max_retries=0)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert hooks.closed
