"""The memory block never exceeds the policy's budget nor the model's context window."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from proxy.memory.budget import prompt_tokens
from proxy.tokens import count_tokens
from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for, memory_block, wait_for_trace
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]

FACTS = [
    f"The user's {thing} is {value}."
    for thing, value in [
        ("favorite food", "ramen with extra egg and spring onions"),
        ("favorite city", "Kyoto in autumn when the maples turn red"),
        ("favorite book", "The Left Hand of Darkness by Ursula K. Le Guin"),
        ("favorite sport", "bouldering at the climbing gym on Tuesdays"),
        ("favorite drink", "jasmine green tea without sugar"),
        ("favorite film", "Spirited Away, watched every winter"),
        ("favorite band", "Radiohead, especially the album In Rainbows"),
        ("favorite season", "late autumn with cold clear mornings"),
        ("favorite dessert", "cheesecake with a blueberry topping"),
        ("favorite holiday", "a week of hiking in the Dolomites"),
        ("favorite app", "a plain text editor with vim keys"),
        ("favorite animal", "the red panda at the city zoo"),
    ]
]


def seed(proxy: RunningProxy, user: str) -> None:
    with api(proxy) as http:
        for text in FACTS:
            created = http.post("/v1/memories", json={"user": user, "kind": "fact", "text": text})
            assert created.status_code == 201, created.text
            assert created.json()["status"] == "active"


def test_block_stays_within_the_policy_budget(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    # 115 tokens: the frame (fence and preamble) takes 62 in o200k, so some facts fit, not all.
    proxy = memory_proxy(memory={"budget": {"max_tokens": 115}})
    seed(proxy, "gina")
    response = client_for(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What are my favorite things?"}],
        user="gina",
    )
    block = memory_block(upstream.last().json)
    assert block is not None
    used = count_tokens(block, "o200k_base")  # gpt-4o-mini's encoding
    assert used <= 115
    injected = block.count("\n- [")
    assert 1 <= injected < len(FACTS)  # some fit, not all
    assert int(response.headers["x-memento-memories"]) == injected


def test_block_respects_the_context_window(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    window = 700
    proxy = memory_proxy(
        memory={"budget": {"max_tokens": 5000}},
        extra_models={
            "small": {
                "model": "openai/gpt-4o-mini",
                "api_base": upstream.url,
                "context_window": window,
            }
        },
    )
    seed(proxy, "hank")
    question = "Tell me about my favorite things. " + "Please be thorough. " * 60
    messages = [{"role": "user", "content": question}]
    client = client_for(proxy)
    client.chat.completions.create(model="small", messages=messages, user="hank", max_tokens=200)
    sent = upstream.last().json
    block = memory_block(sent)
    assert block is not None
    own = prompt_tokens(messages, {"messages": messages}, "o200k_base")
    assert own + count_tokens(block, "o200k_base") + 4 + 200 <= window

    # No room left at all: the call goes through unchanged, without a block.
    full = client.chat.completions.with_raw_response.create(
        model="small", messages=messages, user="hank", max_tokens=480
    )
    sent = upstream.last().json
    assert memory_block(sent) is None
    assert sent["messages"] == messages
    # The trace blames the request's share of the window, not the policy's budget.
    whys = {(c["reason"], c["why"]) for c in ranked_candidates(proxy, full)}
    assert len(whys) == 1, whys
    ((reason, why),) = whys
    assert reason == "no room"
    assert why.startswith("no memory fits: the request itself")
    assert "context window" in why and "(fence and preamble, 62 tokens)" in why


def test_a_budget_no_larger_than_the_blocks_frame_says_so(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """60 tokens: the block's fence and preamble alone take 62 (o200k), so no memory fits,
    whatever the window; the trace names the policy's budget as the reason."""
    proxy = memory_proxy(memory={"budget": {"max_tokens": 60}})
    seed(proxy, "ivan")
    response = client_for(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What are my favorite things?"}],
        user="ivan",
    )
    assert memory_block(upstream.last().json) is None
    candidates = ranked_candidates(proxy, response)
    assert len(candidates) >= 1
    for candidate in candidates:
        assert candidate["reason"] == "no room"
        assert candidate["why"] == (
            "no memory fits: memory.budget.max_tokens is no larger than the memory block's "
            "frame (fence and preamble, 62 tokens), so no budget is left for any memory; "
            "raise it (see `memento-proxy policy check`)"
        )


def ranked_candidates(proxy: RunningProxy, response: Any) -> list[dict[str, Any]]:
    """The call's ranked candidates as its trace explains them."""
    request_id = response.headers["x-request-id"]
    trace = wait_for_trace(proxy, request_id, {"memento.budget"})
    return [c for c in trace["memory"]["candidates"] if c["rank"] is not None]
