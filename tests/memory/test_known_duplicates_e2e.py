"""An exchange that states what the user's memories already hold word for word: its result is
known before anything is embedded (the memory is reinforced), through the real proxy."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import client_for, wait_for_memories, wait_for_trace
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import Reply, ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]


def test_a_fact_stated_again_is_reinforced_without_being_assessed(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    client = client_for(proxy)
    request_ids = []
    for statement in ["I am a marine biologist.", "i am a marine  biologist!"]:
        upstream.script(Reply(content="Noted."))
        response = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": statement}], user="kim"
        )
        request_ids.append(response.headers["x-request-id"])
        wait_for_memories(proxy, "kim", 1)
    # A third call waits until the second exchange is learned (read your writes).
    upstream.script(Reply(content="Noted, a cat."))
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "I have a cat."}], user="kim"
    )
    memories = wait_for_memories(proxy, "kim", 2)
    facts = [m for m in memories if m["text"] == "The user is a marine biologist."]
    assert len(facts) == 1 and facts[0]["fields"]["reinforced"] == 1

    trace = wait_for_trace(proxy, request_ids[1], {"memento.write"})
    names = {span["name"] for span in trace["spans"]}
    assert "memento.sanitize" not in names  # nothing left to assess: no embedding, no verdict
    (write,) = [span for span in trace["spans"] if span["name"] == "memento.write"]
    (decision,) = write["attributes"]["memento.decisions"]
    assert decision["operation"] == "NOOP" and decision["target"] == facts[0]["id"]
    assert "digest" in decision["reason"]
