"""Two proxies serving one store (replicas): a memory accepted through one is injected by the
other without a restart, even where the other already holds the user's memories in memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for, memory_block
from tests.scripted_upstream import ScriptedUpstream


def injected(proxy: RunningProxy, upstream: ScriptedUpstream, question: str) -> str | None:
    """The memory block of one read-only call through `proxy`, as the upstream received it."""
    client_for(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": question}],
        user="eve",
        extra_headers={"X-Memento-Mode": "read"},
    )
    return memory_block(upstream.received[-1].json)


def test_a_memory_accepted_by_one_replica_is_injected_by_the_other(
    upstream: ScriptedUpstream,
    memory_proxy: Callable[..., RunningProxy],
    start_proxy: Callable[..., RunningProxy],
    policies_dir: Path,
) -> None:
    first = memory_proxy()
    second = start_proxy(policies_dir)  # same policies, same data folder
    with api(first) as http:
        created = http.post(
            "/v1/memories", json={"user": "eve", "kind": "fact", "text": "Eve sails a sloop."}
        )
        assert created.status_code == 201, created.text
    # The second replica now holds eve's memories in memory.
    assert "Eve sails a sloop." in (injected(second, upstream, "What do I sail?") or "")

    with api(first) as http:
        created = http.post(
            "/v1/memories",
            json={"user": "eve", "kind": "fact", "text": "Eve's sloop is called Nautilus."},
        )
        assert created.status_code == 201, created.text
    deadline = time.monotonic() + 30  # a bound for a busy machine; bench/ measures the delay
    while "Nautilus" not in (injected(second, upstream, "What is my sloop called?") or ""):
        assert time.monotonic() < deadline, "the other replica never saw the new memory"
        time.sleep(0.1)

    with api(first) as http:
        assert http.delete("/v1/users/eve/memories").status_code == 200
    deadline = time.monotonic() + 30
    while (injected(second, upstream, "What is my sloop called?") or "") != "":
        assert time.monotonic() < deadline, "the other replica still injects an erased memory"
        time.sleep(0.1)
    assert httpx.get(second.base_url + "/readyz").status_code == 200
