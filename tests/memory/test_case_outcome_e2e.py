"""A case's own outcome is one more update of its utility, not a reset of it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for, memory_block, wait_for_memories
from tests.memory.test_feedback_e2e import feedback, injected_ids
from tests.scripted_upstream import Reply, ScriptedUpstream

pytestmark = pytest.mark.usefixtures("each_database")

TRIP = "Plan a three day trip to Lisbon for me."
PLAN = "Day 1: Alfama and tram 28. Day 2: Belem. Day 3: Sintra by train."


def test_the_case_s_own_late_outcome_keeps_what_other_calls_taught_it(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    client = client_for(proxy)
    upstream.script(Reply(content=PLAN))
    wrote = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": TRIP}], user="ivy"
    ).headers["x-request-id"]
    [case] = wait_for_memories(proxy, "ivy", 1)
    assert case["kind"] == "case"
    used = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": TRIP}],
        user="ivy",
        extra_headers={"X-Memento-Mode": "read"},
    ).headers["x-request-id"]
    assert injected_ids(memory_block(upstream.last().json)) == [case["id"][-8:]]
    with api(proxy) as http:
        assert feedback(http, used, 1.0).status_code == 200
        assert http.get(f"/v1/memories/{case['id']}").json()["q"] == pytest.approx(0.3)
        # The call that wrote the case is rated late: its outcome moves Q from where the other
        # call's reward left it (0.3 + 0.3·(−1 − 0.3)), it does not start Q over at 0.3·r.
        own = feedback(http, wrote, -1.0).json()
        assert own["case_id"] == case["id"]
        stored = http.get(f"/v1/memories/{case['id']}").json()
        assert stored["q"] == pytest.approx(-0.09)
        assert stored["fields"]["outcome"] == "failed"
        # Corrected, the own report is replaced like any other: reversed, then applied.
        assert feedback(http, wrote, 1.0).json()["replaced"] == -1.0
        assert http.get(f"/v1/memories/{case['id']}").json()["q"] == pytest.approx(0.51)
        # A reward of 0 says the request neither worked nor failed (it was recorded 'failed').
        assert feedback(http, wrote, 0.0).status_code == 200
        assert http.get(f"/v1/memories/{case['id']}").json()["fields"]["outcome"] == "neutral"
