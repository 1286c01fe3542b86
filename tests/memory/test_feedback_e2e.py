"""Feedback moves utility: the memory that helped comes first, the one that misled sinks."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx

from tests.harness import RunningProxy
from tests.memory.conftest import OTHER_KEY, api, client_for, memory_block
from tests.scripted_upstream import ScriptedUpstream

QUESTION = "How should I book a table for dinner on Friday?"
HELPFUL = "Request: book a dinner table for Friday → Answer: called the restaurant directly."
MISLEADING = "Request: book a table for dinner on Friday → Answer: used the booking website."


def injected_ids(block: str | None) -> list[str]:
    return re.findall(r"^- \[([^\]]+)\]", block or "", re.MULTILINE)


def ask(proxy: RunningProxy, upstream: ScriptedUpstream) -> tuple[str, list[str]]:
    raw = client_for(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}], user="ivy"
    )
    return raw.headers["x-request-id"], injected_ids(memory_block(upstream.last().json))


def feedback(http: httpx.Client, request_id: str, reward: float) -> httpx.Response:
    # The request log is written beside the upstream call; give it a moment when needed.
    for _ in range(50):
        response = http.post(
            "/v1/memory/feedback", json={"request_id": request_id, "reward": reward}
        )
        if response.status_code != 404:
            return response
        time.sleep(0.05)
    return response


def test_feedback_reorders_look_alike_cases(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    # One case per request (k2 = 1), and no new cases written by these calls.
    proxy = memory_proxy(memory={"retrieval": {"k2_cases": 1}, "default_mode": "read"})
    with api(proxy) as http:
        ids = {}
        for text in (HELPFUL, MISLEADING):
            created = http.post("/v1/memories", json={"user": "ivy", "kind": "case", "text": text})
            assert created.status_code == 201, created.text
            ids[text] = created.json()["id"][-8:]
        helpful, misleading = ids[HELPFUL], ids[MISLEADING]

        first_id, first = ask(proxy, upstream)
        assert first == [misleading]  # the closer wording wins before any feedback
        history = []
        request_id, shown = first_id, first
        for _ in range(6):
            reward = 1.0 if shown == [helpful] else -1.0
            result = feedback(http, request_id, reward)
            assert result.status_code == 200, result.text
            history.append(shown[0])
            request_id, shown = ask(proxy, upstream)
        assert shown == [helpful]
        assert history[0] == misleading and history[-1] == helpful
        # Once first, the rewarded case stays first.
        assert history[history.index(helpful) :] == [helpful] * (
            len(history) - history.index(helpful)
        )

        stored = {
            m["id"][-8:]: m for m in http.get("/v1/memories", params={"user": "ivy"}).json()["data"]
        }
        assert stored[helpful]["q"] > 0 > stored[misleading]["q"]


def test_feedback_is_idempotent_and_tenant_scoped(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy(memory={"default_mode": "read"})
    with api(proxy) as http:
        created = http.post("/v1/memories", json={"user": "ivy", "kind": "case", "text": HELPFUL})
        memory_id = created.json()["id"]
        request_id, shown = ask(proxy, upstream)
        assert shown == [memory_id[-8:]]
        for _ in range(3):  # the same report three times counts once
            assert feedback(http, request_id, 1.0).status_code == 200
        q_once = http.get(f"/v1/memories/{memory_id}").json()["q"]
        assert abs(q_once - 0.3) < 1e-9  # Q ← 0 + 0.3·(1 − 0)
        assert feedback(http, request_id, -1.0).json()["replaced"] == 1.0
        q_replaced = http.get(f"/v1/memories/{memory_id}").json()["q"]
        assert abs(q_replaced + 0.3) < 1e-9  # the +1 was reversed, then −1 applied

        score = http.post("/v1/memory/feedback", json={"request_id": request_id, "score": 0.75})
        assert score.json()["reward"] == 0.5
        bad = http.post("/v1/memory/feedback", json={"request_id": request_id, "reward": 3})
        assert bad.status_code == 400 and "[-1, 1]" in bad.json()["error"]["message"]
        unknown = http.post("/v1/memory/feedback", json={"request_id": "req_nope", "reward": 1})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "request_not_found"
    with api(proxy, OTHER_KEY) as other:
        foreign = other.post("/v1/memory/feedback", json={"request_id": request_id, "reward": 1})
        assert foreign.status_code == 404
        assert other.get(f"/v1/memories/{memory_id}").status_code == 404
