"""Scope rules: tenant-shared kinds reach every user of the tenant; anonymous calls pass through."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import OTHER_KEY, api, client_for, memory_block
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]

ASK = [{"role": "user", "content": "Where is the company office?"}]


def test_shared_kinds_reach_every_user_of_the_tenant_only(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy(memory={"shared_kinds": ["fact"]})
    with api(proxy) as http:
        shared = http.post(
            "/v1/memories", json={"kind": "fact", "text": "The company office is in Oslo."}
        )
        assert shared.status_code == 201 and shared.json()["user_id"] is None
    client_for(proxy).chat.completions.create(model="gpt-4o-mini", messages=ASK, user="walt")
    assert "Oslo" in (memory_block(upstream.last().json) or "")
    client_for(proxy).chat.completions.create(model="gpt-4o-mini", messages=ASK, user="xena")
    assert "Oslo" in (memory_block(upstream.last().json) or "")
    client_for(proxy, OTHER_KEY).chat.completions.create(
        model="gpt-4o-mini", messages=ASK, user="walt"
    )
    assert memory_block(upstream.last().json) is None


def test_without_shared_kinds_tenant_memory_stays_out_and_anonymous_calls_pass_through(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    with api(proxy) as http:
        http.post("/v1/memories", json={"kind": "fact", "text": "The company office is in Oslo."})
    client_for(proxy).chat.completions.create(model="gpt-4o-mini", messages=ASK, user="walt")
    assert memory_block(upstream.last().json) is None
    raw = client_for(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "I am a pilot."}]
    )
    assert raw.headers["x-memento-memories"] == "0"
    assert upstream.last().json["messages"] == [{"role": "user", "content": "I am a pilot."}]
