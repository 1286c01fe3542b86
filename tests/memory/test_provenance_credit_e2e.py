"""Provenance credit: a reward also reaches the memories a rewarded memory was derived from."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import api
from tests.memory.test_feedback_e2e import HELPFUL, ask, feedback
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]

# HELPFUL was learned in a call that had PARENT injected, and PARENT in one that had GRANDPARENT.
GRANDPARENT = {
    "id": "case-grandparent",
    "user": "ivy",
    "kind": "case",
    "text": "Request: repair a flat bicycle tyre → Answer: patched the inner tube.",
}
PARENT = {
    "id": "case-parent",
    "user": "ivy",
    "kind": "case",
    "text": "Request: water the tomato plants while away → Answer: set up a drip bottle.",
    "derived_from_ids": ["case-grandparent"],
}
CHILD = {
    "id": "case-child",
    "user": "ivy",
    "kind": "case",
    "text": HELPFUL,
    "derived_from_ids": ["case-parent"],
}


def lineage_proxy(memory_proxy: Callable[..., RunningProxy], **credit: object) -> RunningProxy:
    """A proxy in read mode (one case per call, nothing new written) holding the three cases."""
    proxy = memory_proxy(
        memory={
            "default_mode": "read",
            "retrieval": {"k2_cases": 1},
            "feedback": {"alpha_case": 0.4, "provenance_credit": {"gamma_lambda": 0.5, **credit}},
        }
    )
    lines = "".join(json.dumps(m) + "\n" for m in (GRANDPARENT, PARENT, CHILD))
    with api(proxy) as http:
        imported = http.post("/v1/memories/import", content=lines).json()
    assert imported["imported"] == 3, imported
    return proxy


def utilities(http: httpx.Client) -> dict[str, float]:
    memories = http.get("/v1/memories", params={"user": "ivy"}).json()["data"]
    return {m["id"]: m["q"] for m in memories}


@pytest.mark.parametrize("enabled", [True, False])
def test_a_reward_credits_the_provenance_of_the_rewarded_memory(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy], enabled: bool
) -> None:
    proxy = lineage_proxy(memory_proxy, enabled=enabled, max_depth=2)
    with api(proxy) as http:
        request_id, shown = ask(proxy, upstream)
        assert shown == ["se-child"]  # only the child is injected (the block shows 8 characters)

        first = feedback(http, request_id, 1.0)
        assert first.status_code == 200, first.text
        q = utilities(http)
        assert q["case-child"] == pytest.approx(0.4)  # α·r: the injected memory, either way
        if enabled:
            assert q["case-parent"] == pytest.approx(0.4 * 0.5)  # (γλ)¹·α·r
            assert q["case-grandparent"] == pytest.approx(0.4 * 0.25)  # (γλ)²·α·r
            depths = {u["memory_id"]: u.get("provenance_depth") for u in first.json()["updated"]}
            assert depths == {"case-child": None, "case-parent": 1, "case-grandparent": 2}
        else:
            assert q["case-parent"] == q["case-grandparent"] == 0.0

        # A changed report replaces the first one along the provenance too: nothing stacks.
        assert feedback(http, request_id, -1.0).status_code == 200
        q = utilities(http)
        assert q["case-child"] == pytest.approx(-0.4)
        assert q["case-parent"] == pytest.approx(-0.2 if enabled else 0.0)
        assert q["case-grandparent"] == pytest.approx(-0.1 if enabled else 0.0)


def test_provenance_credit_stops_at_max_depth(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = lineage_proxy(memory_proxy, enabled=True, max_depth=1)
    with api(proxy) as http:
        request_id, _ = ask(proxy, upstream)
        assert feedback(http, request_id, 1.0).status_code == 200
        q = utilities(http)
        assert q["case-parent"] == pytest.approx(0.2)
        assert q["case-grandparent"] == 0.0
