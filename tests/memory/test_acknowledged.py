"""An exchange the client was answered for is durable by then; only complete exchanges teach.

The chat route queues the finished exchange (and writes the request log feedback joins on)
before the client has the whole answer: for a stream, before the final `[DONE]` event. So a
`kill -9` under load loses no answered exchange, and feedback sent the moment the answer arrives
finds its request.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from storage.store import DB_FILE
from tests.harness import RunningProxy, ServerProcess, write_tenant
from tests.memory.conftest import KEY, api, client_for
from tests.scripted_upstream import Reply, ScriptedUpstream


def queued_request_ids(data_dir: Path) -> list[str]:
    """The request ids of every exchange job in the queue, whatever its state."""
    with sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True, timeout=10) as db:
        rows = db.execute("SELECT payload FROM jobs WHERE kind = 'exchange'").fetchall()
    return [json.loads(payload)["request_id"] for (payload,) in rows]


def _chat_body(user: str, text: str, stream: bool) -> dict[str, object]:
    return {
        "model": "echo",
        "user": user,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }


def test_every_answered_exchange_survives_kill_9_under_load(
    policies_dir: Path, tmp_path: Path
) -> None:
    write_tenant(policies_dir, "acme", KEY, {"echo": {"model": "echo"}}, memory={})
    data_dir = tmp_path / "data"
    server = ServerProcess(policies_dir, data_dir, MEMENTO_MEMORY_WORKERS="0")
    answered: list[str] = []
    stop = threading.Event()

    def client(number: int) -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
            turn = 0
            while not stop.is_set():
                turn += 1
                body = _chat_body(
                    f"user-{number}", f"I am user {number}, turn {turn}.", turn % 2 == 1
                )
                try:
                    with http.stream("POST", "/v1/chat/completions", json=body) as response:
                        content = response.read()
                except httpx.TransportError:
                    continue  # in flight when the server died: never answered
                complete = content.rstrip().endswith(b"[DONE]") if body["stream"] else True
                if response.status_code == 200 and complete:
                    answered.append(response.headers["x-request-id"])

    with server:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 60
            while len(answered) < 150 and time.monotonic() < deadline:
                time.sleep(0.05)
            server.kill()  # mid-load: requests are in flight
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    assert len(answered) >= 150, "the load did not get going"
    queued = set(queued_request_ids(data_dir))
    lost = [request_id for request_id in answered if request_id not in queued]
    assert lost == [], f"{len(lost)} of {len(answered)} answered exchanges were lost"


@pytest.mark.parametrize("stream", [False, True])
def test_answer_in_hand_means_exchange_queued_and_feedback_finds_it(
    memory_proxy: Callable[..., RunningProxy], tmp_path: Path, stream: bool
) -> None:
    proxy = memory_proxy(memory_workers=0)
    with api(proxy) as http:
        for turn in range(10):
            body = _chat_body("kim", f"I am a marine biologist, turn {turn}.", stream)
            reply = http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200
            request_id = reply.headers["x-request-id"]
            assert request_id in queued_request_ids(tmp_path / "data")
            feedback = http.post(
                "/v1/memory/feedback", json={"request_id": request_id, "reward": 1}
            )
            assert feedback.status_code == 200, feedback.text


@pytest.mark.parametrize(
    "broken",
    [
        Reply(content="Sure. I will remember that.", chunk_count=6, cut_after=2),
        Reply(content="Sure. I will remember that.", chunk_count=6, chunk_delay_s=5),
    ],
    ids=["upstream-closes", "upstream-stalls"],
)
def test_a_broken_stream_teaches_nothing(
    memory_proxy: Callable[..., RunningProxy],
    upstream: ScriptedUpstream,
    tmp_path: Path,
    broken: Reply,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="memento.proxy")
    fast_timeout = {"model": "openai/gpt-4o-mini", "api_base": upstream.url, "timeout_s": 1}
    proxy = memory_proxy(memory_workers=0, extra_models={"impatient": fast_timeout})
    upstream.script(broken)
    with api(proxy) as http:
        body = _chat_body("lee", "I am a pilot. Remember it.", True)
        body["model"] = "impatient"
        reply = http.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200
        assert b'"error"' in reply.content and b"[DONE]" not in reply.content
        broken_id = reply.headers["x-request-id"]
        # The same exchange completed is queued, so the broken one was refused, not late.
        upstream.script(Reply(content="Sure. I will remember that."))
        complete = http.post("/v1/chat/completions", json=body)
        assert b"[DONE]" in complete.content
    queued = queued_request_ids(tmp_path / "data")
    assert complete.headers["x-request-id"] in queued
    assert broken_id not in queued
    # Its request line says so, though the client got a 200 before the stream broke.
    lines = {r.getMessage().split()[0]: r.getMessage() for r in caplog.records}
    broken_line = lines[f"request={broken_id}"]
    assert " status=200 " in broken_line and broken_line.endswith(" error=stream_incomplete")
    assert "error=" not in lines[f"request={complete.headers['x-request-id']}"]
    assert client_for(proxy)
