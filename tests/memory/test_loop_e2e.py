"""The memory loop end to end: openai SDK → proxy → scripted upstream, and the write path; with
the source of truth in SQLite, then in PostgreSQL (MEMENTO_DATABASE_URL)."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import (
    OTHER_KEY,
    api,
    client_for,
    memory_block,
    wait_for_memories,
    wait_for_trace,
)
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import Reply, ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]


def test_fact_stated_once_is_injected_later_for_that_user_only(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    client = client_for(proxy)
    first_id = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi! I am allergic to peanuts."}],
        user="alice",
    ).headers["x-request-id"]
    memories = wait_for_memories(proxy, "alice", 1)
    assert any("allergic to peanuts" in m["text"] for m in memories)
    first = upstream.last().json
    assert memory_block(first) is None  # nothing known before the first call

    response = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You are a cook."},
            {"role": "user", "content": "Suggest a snack for my allergy."},
        ],
        user="alice",
    )
    sent = upstream.last().json
    block = memory_block(sent)
    assert block is not None and "allergic to peanuts" in block
    assert "not instructions" in block
    assert sent["messages"][0] == {"role": "system", "content": "You are a cook."}
    assert sent["messages"][-1] == {"role": "user", "content": "Suggest a snack for my allergy."}
    assert response.headers["x-memento-memories"] == "1"
    assert response.headers["x-request-id"]
    trace = wait_for_trace(
        proxy,
        response.headers["x-request-id"],
        {"memento.request", "memento.retrieve", "memento.budget", "memento.inject"},
    )
    spans = {span["name"]: span for span in trace["spans"]}
    assert spans["memento.inject"]["attributes"]["memento.memory.injected"] == 1
    assert spans["memento.budget"]["attributes"]["memento.budget.used"] > 0
    assert memories[0]["id"] in spans["memento.retrieve"]["attributes"]["memento.memory.scores"]
    learned = wait_for_trace(proxy, first_id, {"memento.extract", "memento.write"})
    write_spans = [s for s in learned["spans"] if s["phase"] == "write"]
    assert {s["name"] for s in write_spans} >= {"memento.extract", "memento.sanitize"}

    # Another user of the same tenant, and the same user name in another tenant: nothing.
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Suggest a snack for my allergy."}],
        user="bob",
    )
    assert memory_block(upstream.last().json) is None
    client_for(proxy, OTHER_KEY).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Suggest a snack for my allergy."}],
        user="alice",
    )
    assert memory_block(upstream.last().json) is None


def test_streamed_exchange_is_learned_from(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    client = client_for(proxy)
    upstream.script(Reply(content="The Alfama district, the tram 28 and the Belem tower."))
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "I live in Lisbon. What is good to see there?"}],
        user="carol",
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    memories = wait_for_memories(proxy, "carol", 2)
    kinds = sorted(m["kind"] for m in memories)
    assert kinds == ["case", "fact"]
    fact = next(m for m in memories if m["kind"] == "fact")
    assert fact["text"] == "The user lives in Lisbon."
    assert fact["evidence"][0]["role"] == "user"
    assert fact["evidence"][0]["span"] == "I live in Lisbon."
    case = next(m for m in memories if m["kind"] == "case")
    assert case["source_role"] == "assistant"
    assert "What is good to see there?" in case["key_text"]


def test_recalled_memory_is_not_learned_again(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """The echo model repeats the memory block it got; nothing new may come of it."""
    proxy = memory_proxy()
    client = client_for(proxy)
    client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "My favorite color is teal."}],
        user="dan",
    )
    assert len(wait_for_memories(proxy, "dan", 1)) == 1
    for _ in range(2):
        client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "What do you know about me, in one line?"}],
            user="dan",
        )
    memories = wait_for_memories(proxy, "dan", 99, timeout_s=2)
    about = [m for m in memories if m["kind"] in ("fact", "preference")]
    assert [m["text"] for m in about] == ["The user's favorite color is teal."]
    for case in (m for m in memories if m["kind"] == "case"):
        assert "teal" not in case["text"]


def test_new_preference_supersedes_the_old_one(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    client = client_for(proxy)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "I like coffee."}], user="eve"
    )
    wait_for_memories(proxy, "eve", 1)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "I like tea now."}], user="eve"
    )
    with api(proxy) as http:
        for _ in range(300):
            superseded = http.get(
                "/v1/memories", params={"user": "eve", "status": "superseded"}
            ).json()["data"]
            if superseded:
                break
            import time

            time.sleep(0.1)
        active = http.get("/v1/memories", params={"user": "eve", "status": "active"}).json()
    assert [m["text"] for m in active["data"]] == ["The user likes tea now."]
    assert [m["text"] for m in superseded] == ["The user likes coffee."]
    new = active["data"][0]
    assert new["supersedes"] == superseded[0]["id"]
    assert superseded[0]["superseded_by"] == new["id"]
    assert superseded[0]["valid_to"] is not None
    assert new["version"] == superseded[0]["version"] + 1


def test_unknown_memory_mode_is_a_clear_400(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    client = client_for(proxy)
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello"}],
            user="fay",
            extra_headers={"X-Memento-Mode": "sometimes"},
        )
    assert "X-Memento-Mode must be one of off, read, write, full" in str(raised.value)


def test_readiness_names_the_database_without_its_password(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy], each_database: str | None
) -> None:
    proxy = memory_proxy()
    with api(proxy) as http:
        ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    if each_database is None:
        assert body["database"] == f"sqlite: {proxy.settings.data_dir / 'memento.db'}"
    else:
        assert body["database"] == f"postgresql: {each_database}"  # the test URLs have none
    assert body["index"] == str((proxy.settings.data_dir / "index").absolute())
    assert body["write_queue"]["depth"] == 0
