"""Which exchanges become cases, through the real proxy: a task with a substantive answer, once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for, wait_for_memories
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import Reply, ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]


def test_echo_answers_and_small_talk_make_no_case(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """The echo model quotes the request back instead of answering it, and small talk asks for
    nothing: the facts stated are learned, no case is."""
    proxy = memory_proxy()
    client = client_for(proxy)
    client.chat.completions.create(
        model="echo",
        messages=[
            {"role": "user", "content": "I live in Porto. How do I make a sourdough starter?"}
        ],
        user="eve",
    )
    upstream.script(Reply(content="Lovely to hear, a sunny weekend by the sea sounds perfect."))
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "I have a cat. We had a sunny weekend by the sea."}],
        user="eve",
    )
    # The second call waited for the first exchange to be learned (read your writes), and
    # the second one's fact is written in the same job as any case it would make.
    memories = wait_for_memories(proxy, "eve", 2)
    assert sorted(m["text"] for m in memories) == [
        "The user has a cat.",
        "The user lives in Porto.",
    ]
    assert wait_for_memories(proxy, "eve", 3, timeout_s=1) == memories


def test_the_same_request_reworded_reinforces_one_case(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """A request asked again in other words (cosine 0.975) is the case already known: it is
    reinforced, not stored twice."""
    proxy = memory_proxy()
    client = client_for(proxy)
    for number, question in enumerate(
        ["How should I store fresh basil?", "What is the best way to store fresh basil?"]
    ):
        upstream.script(Reply(content="Keep the stems in a glass of water on the counter."))
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": question}], user="finn"
        )
        cases = wait_for_memories(proxy, "finn", 1)
        if number == 0:
            assert [c["kind"] for c in cases] == ["case"]
    # A third call waits until the second exchange is learned.
    upstream.script(Reply(content="Noted, a cat."))
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "I have a cat."}], user="finn"
    )
    memories = wait_for_memories(proxy, "finn", 2)
    cases = [m for m in memories if m["kind"] == "case"]
    assert len(cases) == 1, [(c["text"], c["status"], c["trust"], c["fields"]) for c in cases]
    assert cases[0]["fields"]["reinforced"] == 1


def test_a_referring_request_is_indexed_with_the_turn_it_answers(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """ "Book the same one for Friday" says nothing alone: its case is found by the turn it
    answers (the museum named there), which is indexed with it but not shown."""
    proxy = memory_proxy()
    upstream.script(Reply(content="Booked two tickets for Friday at ten."))
    client_for(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "user", "content": "Which museum in Lisbon has the best tiles?"},
            {"role": "assistant", "content": "The Museu Nacional do Azulejo."},
            {"role": "user", "content": "Book the same one for Friday, please."},
        ],
        user="gil",
    )
    (case,) = wait_for_memories(proxy, "gil", 1)
    assert case["kind"] == "case" and "Azulejo" not in case["text"]
    assert case["keywords"] == ["The Museu Nacional do Azulejo."]
    with api(proxy) as http:
        found = http.post(
            "/v1/memories/search",
            json={"user": "gil", "query": "Book the Azulejo museum for Friday", "limit": 3},
        ).json()["data"]
    assert [m["id"] for m in found] == [case["id"]]
    assert found[0]["scores"]["rel"] == 1.0  # first by BM25 and by vector
