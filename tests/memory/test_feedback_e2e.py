"""Feedback moves utility: the memory that helped comes first, the one that misled sinks."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import OTHER_KEY, api, client_for, memory_block, wait_for_trace
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]

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
        assert bad.json()["error"]["param"] == "reward"
        # The error names the field the client sent: a bad score is not a bad 'reward'.
        bad = http.post("/v1/memory/feedback", json={"request_id": request_id, "score": 2})
        assert bad.status_code == 400 and "[0, 1]" in bad.json()["error"]["message"]
        assert bad.json()["error"]["param"] == "score"
        both = {"request_id": request_id, "score": 1, "reward": 1}
        assert http.post("/v1/memory/feedback", json=both).json()["error"]["param"] == "reward"
        long = {"request_id": request_id, "reward": 1, "comment": "x" * 2001}
        assert http.post("/v1/memory/feedback", json=long).json()["error"]["param"] == "comment"
        unknown = http.post("/v1/memory/feedback", json={"request_id": "req_nope", "reward": 1})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "request_not_found"
    with api(proxy, OTHER_KEY) as other:
        foreign = other.post("/v1/memory/feedback", json={"request_id": request_id, "reward": 1})
        assert foreign.status_code == 404
        assert other.get(f"/v1/memories/{memory_id}").status_code == 404


def test_a_reused_client_request_id_never_moves_another_users_memories(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """Carol and Dave (one tenant) send the same x-request-id: each call still gets its own
    request id, Carol's rewards reach only her memories, and the two traces stay apart."""
    shared = "shared-rid-0001"
    proxy = memory_proxy(memory={"default_mode": "read"})
    client = client_for(proxy)

    def call(user: str, key_client: openai.OpenAI = client) -> tuple[str, list[str]]:
        raw = key_client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": QUESTION}],
            user=user,
            extra_headers={"x-request-id": shared},
        )
        assert raw.headers["x-client-request-id"] == shared  # echoed, never adopted
        assert raw.headers["x-request-id"].startswith("req_")
        return raw.headers["x-request-id"], injected_ids(memory_block(upstream.last().json))

    with api(proxy) as http:
        mine = {}
        for user in ("carol", "dave"):
            created = http.post(
                "/v1/memories", json={"user": user, "kind": "case", "text": HELPFUL}
            )
            mine[user] = created.json()["id"]

        carol_request, carol_shown = call("carol")
        assert carol_shown == [mine["carol"][-8:]]
        assert feedback(http, carol_request, 1.0).status_code == 200
        dave_request, dave_shown = call("dave")
        assert dave_shown == [mine["dave"][-8:]] and dave_request != carol_request
        again = feedback(http, carol_request, -1.0).json()
        assert again["replaced"] == 1.0
        assert [u["memory_id"] for u in again["updated"]] == [mine["carol"]]

        carol, dave = (http.get(f"/v1/memories/{mine[u]}").json() for u in ("carol", "dave"))
        assert abs(carol["q"] + 0.3) < 1e-9  # the +1 reversed, then −1 applied
        assert (dave["q"], dave["n_pos"], dave["n_neg"]) == (0.0, 0, 0)

        # The client's id names two calls: feedback refuses it and says what to send.
        by_client = http.post("/v1/memory/feedback", json={"request_id": shared, "reward": 1})
        assert by_client.status_code == 400
        error = by_client.json()["error"]
        assert error["code"] == "client_request_id_given" and "x-request-id" in error["message"]
        assert http.get(f"/v1/memories/{mine['dave']}").json()["q"] == 0.0

        # One trace per call, each with its own user; the client's id finds both.
        for request_id, user in ((carol_request, "carol"), (dave_request, "dave")):
            trace = wait_for_trace(proxy, request_id, {"memento.inject"})
            roots = [s for s in trace["spans"] if s["name"] == "memento.request"]
            assert len(roots) == 1 and trace["user"] == user
            assert trace["client_request_id"] == shared
        listed = http.get("/v1/traces", params={"client_request_id": shared}).json()["data"]
        assert [(t["request_id"], t["user"]) for t in listed] == [
            (dave_request, "dave"),
            (carol_request, "carol"),
        ]

    # Another tenant using the same client id sees only its own call, and vice versa.
    other_request, _ = call("erin", client_for(proxy, OTHER_KEY))
    with api(proxy, OTHER_KEY) as other:
        for _ in range(100):  # spans are exported in batches
            theirs = other.get("/v1/traces", params={"client_request_id": shared}).json()["data"]
            if theirs:
                break
            time.sleep(0.1)
        assert [t["request_id"] for t in theirs] == [other_request]
        refused = other.post("/v1/memory/feedback", json={"request_id": carol_request, "reward": 1})
        assert refused.status_code == 404
    with api(proxy) as http:
        listed = http.get("/v1/traces", params={"client_request_id": shared}).json()["data"]
        assert {t["request_id"] for t in listed} == {carol_request, dave_request}


def test_a_malformed_feedback_body_is_told_what_feedback_takes(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    with api(proxy) as http:
        empty = http.post("/v1/memory/feedback", content=b"")
        assert empty.status_code == 400
        message = empty.json()["error"]["message"]
        assert "request_id" in message and "messages" not in message  # not a chat call's body
        typed = http.post("/v1/memory/feedback", json={"request_id": 5, "reward": 1})
        assert typed.status_code == 400 and typed.json()["error"]["param"] == "request_id"
        assert "string" in typed.json()["error"]["message"]
