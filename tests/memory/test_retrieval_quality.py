"""Retrieval quality through the real memory API: distinct facts survive de-duplication."""

from __future__ import annotations

from collections.abc import Callable

from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for, memory_block
from tests.scripted_upstream import ScriptedUpstream

HOBBIES = [
    "kayaking",
    "knitting",
    "chess",
    "running",
    "painting",
    "gardening",
    "baking",
    "climbing",
    "fencing",
    "singing",
]


def test_facts_that_differ_only_in_a_date_are_all_found(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """Five kayaking days are five facts: with dedup on, near-duplicate collapse must not hide
    the ones that differ only in a number, while a true paraphrase still collapses."""
    proxy = memory_proxy(memory={"retrieval": {"dedup_cos": 0.92}})
    with api(proxy) as http:
        for hobby in HOBBIES:
            for day in range(0, 50, 10):
                text = f"Dana practises {hobby} on day {day}."
                response = http.post(
                    "/v1/memories", json={"user": "dana", "kind": "fact", "text": text}
                )
                assert response.status_code == 201, response.text
        http.post(
            "/v1/memories",
            json={"user": "dana", "kind": "fact", "text": "Dana practises kayaking on day 0!"},
        )
        found = http.post(
            "/v1/memories/search",
            json={"user": "dana", "query": "Does Dana practise kayaking?", "limit": 10},
        ).json()["data"]
    kayaking = [m["text"] for m in found if "kayaking" in m["text"]]
    days = sorted(int(text.split("day ")[1].rstrip(".!")) for text in kayaking)
    assert days == [0, 10, 20, 30, 40], kayaking  # all five days, the paraphrase collapsed


DRINK_CASES = [
    ("What should I drink with my curry tonight?", "a cold lassi or an off-dry riesling"),
    ("Suggest a refreshing drink for a hot afternoon.", "iced mint tea with lime"),
]


def test_cases_below_the_calibrated_similarity_are_not_injected(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """A vague request ("What is in this?") sits at cosine 0.15-0.2 to past drink requests: not
    similar, so no "Similar past requests" are injected; a drink question still gets them."""
    proxy = memory_proxy(memory={"default_mode": "read"})
    with api(proxy) as http:
        for request, answer in DRINK_CASES:
            response = http.post(
                "/v1/memories",
                json={
                    "user": "rita",
                    "kind": "case",
                    "text": f"Request: {request} → Answer: {answer}",
                    "key_text": request,
                },
            )
            assert response.status_code == 201, response.text
    client = client_for(proxy)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What is in this?"}], user="rita"
    )
    assert memory_block(upstream.last().json) is None
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What should I drink with a spicy curry?"}],
        user="rita",
    )
    block = memory_block(upstream.last().json)
    assert block is not None and "lassi" in block
