"""Negative feedback and trust: what a report does to a doubtful memory, and what it must not."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import api
from tests.memory.test_feedback_e2e import HELPFUL, ask, feedback
from tests.scripted_upstream import ScriptedUpstream

pytestmark = pytest.mark.usefixtures("each_database")


def doubtful_case(http: httpx.Client, trust: float) -> str:
    """A case of ivy's the question finds, imported with a doubtful trust."""
    line = {"user": "ivy", "kind": "case", "text": HELPFUL, "trust": trust}
    imported = http.post("/v1/memories/import", content=json.dumps(line) + "\n").json()
    assert imported["status"] == "completed", imported
    memory_id: str = imported["ids"][0]
    assert http.get(f"/v1/memories/{memory_id}").json()["trust"] == trust
    return memory_id


def test_negative_feedback_never_brings_a_rejected_memory_back_to_review(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy(memory={"default_mode": "read"})
    with api(proxy) as http:
        memory_id = doubtful_case(http, 0.5)
        request_id, shown = ask(proxy, upstream)
        assert shown == [memory_id[-8:]]
        # The reviewer takes it out after the call used it; then the user reports the answer.
        rejected = http.post(f"/v1/memories/quarantine/{memory_id}/reject", json={})
        assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
        assert feedback(http, request_id, -1.0).status_code == 200
        memory = http.get(f"/v1/memories/{memory_id}").json()
        assert memory["status"] == "rejected"
        queue = http.get("/v1/memories/quarantine", params={"user": "ivy"}).json()["data"]
        assert queue == []


def test_a_replaced_negative_report_takes_its_trust_penalty_back(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """One report per request counts, for trust as for Q: a retried or corrected report does
    not halve trust again, and one that is no longer negative gives back what the old one took."""
    proxy = memory_proxy(memory={"default_mode": "read"})
    with api(proxy) as http:
        memory_id = doubtful_case(http, 0.5)
        request_id, shown = ask(proxy, upstream)
        assert shown == [memory_id[-8:]]

        def state() -> tuple[float, str, int]:
            memory = http.get(f"/v1/memories/{memory_id}").json()
            penalties = [r for r in memory["trust_reasons"] if r["signal"] == "negative_feedback"]
            return memory["trust"], memory["status"], len(penalties)

        assert feedback(http, request_id, -1.0).status_code == 200
        assert state() == (0.25, "quarantined", 1)  # halved, and below 0.3
        assert feedback(http, request_id, -0.8).json()["replaced"] == -1.0
        assert state() == (0.25, "quarantined", 1)  # the same report, corrected: not again
        assert feedback(http, request_id, 1.0).json()["replaced"] == -0.8
        assert state() == (0.5, "active", 0)  # as before the negative report
