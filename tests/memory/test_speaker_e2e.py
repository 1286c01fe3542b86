"""Who said it: a memory learned from a named user turn is found by the speaker's name."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for, wait_for_memories
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import Reply, ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]


def test_a_fact_from_a_named_turn_is_found_by_the_speakers_name(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """The message's `name` is who spoke: "The user likes green tea." said by Ana is indexed
    with "Ana" (never shown), so "What does Ana like?" finds it by its words too, not only by
    its vector; the fact said without a name has no such keyword."""
    proxy = memory_proxy()
    client = client_for(proxy)
    upstream.script(Reply(content="Noted, green tea."))
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "name": "Ana", "content": "I like green tea."}],
        user="household",
    )
    upstream.script(Reply(content="Noted, a cat."))
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "I have a cat."}],
        user="household",
    )
    memories = {m["text"]: m for m in wait_for_memories(proxy, "household", 2)}
    assert memories["The user likes green tea."]["keywords"] == ["Ana"]
    assert memories["The user has a cat."]["keywords"] == []
    with api(proxy) as http:
        found = http.post(
            "/v1/memories/search", json={"user": "household", "query": "Ana", "limit": 5}
        ).json()["data"]
    # Found by the vector alone, a memory's fused relevance is at most 0.4 of the best.
    rel = {m["text"]: m["scores"]["rel"] for m in found}
    assert rel["The user likes green tea."] > 0.9 and rel["The user has a cat."] <= 0.4, rel
