"""Two proxies serving one store, as replicas behind a load balancer: what one accepted, queued,
erased or traced, the other serves, without a restart and without doing it twice.

Each test runs on both topologies: two `memento-proxy serve` processes on one data folder
(SQLite), and two with folders of their own on one PostgreSQL database and one bucket of the S3
server (MEMENTO_DATABASE_URL, MEMENTO_INDEX_URI).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.harness import ServerProcess, write_tenant
from tests.memory.conftest import KEY, memory_block, models
from tests.postgres_server import BOTH_DATABASES
from tests.s3_server import S3Server
from tests.scripted_upstream import ScriptedUpstream

pytestmark = BOTH_DATABASES

Replica = Callable[..., ServerProcess]


@pytest.fixture
def replica(
    tmp_path: Path,
    upstream: ScriptedUpstream,
    database_url: str | None,
    request: pytest.FixtureRequest,
) -> Iterator[Replica]:
    """`replica(number, **env)`: replica `number` started (its own folder on PostgreSQL, the
    shared one on SQLite); stopped at the end of the test."""
    policies = tmp_path / "policies"
    section = {"retrieval": {"deadline_ms": 20_000}}
    write_tenant(policies, "acme", KEY, models(upstream), memory=section)
    shared: dict[str, str] = {"MEMENTO_LOG_LEVEL": "warning"}
    if database_url is not None:
        server: S3Server = request.getfixturevalue("s3_server")
        uri = f"s3://{server.new_bucket()}/index"
        shared |= {**server.env, "MEMENTO_DATABASE_URL": database_url, "MEMENTO_INDEX_URI": uri}
    with ExitStack() as stack:

        def start(number: int, **env: str) -> ServerProcess:
            folder = tmp_path / ("data" if database_url is None else f"replica{number}")
            return stack.enter_context(ServerProcess(policies, folder, **shared, **env))

        yield start


def _client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0)


def _api(server: ServerProcess) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    )


def _ask(server: ServerProcess, upstream: ScriptedUpstream, question: str, **extra: Any) -> str:
    """One read-only call through `server`; the memory block the upstream received ('' if
    none)."""
    _client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": question}],
        user="eve",
        extra_headers={"X-Memento-Mode": "read"},
        **extra,
    )
    return memory_block(upstream.received[-1].json) or ""


def _until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Poll `check` (a bound for a busy machine; bench/ measures the delays)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_memory_accepted_by_one_replica_is_injected_and_erased_by_the_other(
    replica: Replica, upstream: ScriptedUpstream
) -> None:
    first, second = replica(0), replica(1)
    with _api(first) as http:
        created = http.post(
            "/v1/memories", json={"user": "eve", "kind": "fact", "text": "Eve sails a sloop."}
        )
        assert created.status_code == 201, created.text
    # The second replica now holds eve's memories in memory.
    assert "Eve sails a sloop." in _ask(second, upstream, "What do I sail?")
    with _api(first) as http:
        fact = {"user": "eve", "kind": "fact", "text": "Eve's sloop is called Nautilus."}
        assert http.post("/v1/memories", json=fact).status_code == 201
    _until(
        lambda: "Nautilus" in _ask(second, upstream, "What is my sloop called?"),
        "the other replica never saw the new memory",
    )
    with _api(first) as http:
        assert http.delete("/v1/users/eve/memories").status_code == 200
    _until(
        lambda: _ask(second, upstream, "What is my sloop called?") == "",
        "the other replica still injects an erased memory",
    )


def test_an_exchange_queued_by_a_killed_replica_is_learned_once_by_the_other(
    replica: Replica, upstream: ScriptedUpstream
) -> None:
    first = replica(0, MEMENTO_MEMORY_WORKERS="0")  # queues, never learns
    _client(first).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "I live in Lisbon and I prefer tea."}],
        user="eve",
    )
    first.kill()
    second, third = replica(1), replica(2)  # two learners race for the one job
    with _api(second) as http:

        def learned() -> list[dict[str, Any]]:
            page = http.get("/v1/memories", params={"user": "eve", "status": "active"}).json()
            return list(page["data"])

        _until(lambda: bool(learned()), "nobody learned the killed replica's exchange")
        time.sleep(2)  # time for a second learning of the same exchange, were there one
        texts = [memory["text"] for memory in learned()]
        assert len(texts) == len(set(texts)) and "The user prefers tea." in texts, texts
        jobs = http.get("/v1/memories/jobs").json()["data"]
        assert [job["state"] for job in jobs] == ["done"]
    assert third.process is not None and third.process.poll() is None


def test_feedback_and_traces_reach_whichever_replica_is_asked(
    replica: Replica, upstream: ScriptedUpstream
) -> None:
    first, second = replica(0), replica(1)
    with _api(first) as http:
        fact = {"user": "eve", "kind": "fact", "text": "Eve sails a sloop."}
        memory = http.post("/v1/memories", json=fact).json()
    raw = _client(first).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What do I sail?"}],
        user="eve",
        extra_headers={"X-Memento-Mode": "read"},
    )
    request_id = raw.headers["x-request-id"]
    # The same reward through both replicas at once: recorded once, Q moved once.
    with _api(first) as a, _api(second) as b, ThreadPoolExecutor(2) as pool:
        body = {"request_id": request_id, "reward": 1.0}
        sent = [pool.submit(http.post, "/v1/memory/feedback", json=body) for http in (a, b)]
        assert [answer.result().status_code for answer in sent] == [200, 200]
        after = b.get(f"/v1/memories/{memory['id']}").json()
        assert after["q_visits"] == 1 and after["n_pos"] == 1, after
        # The trace of the call the first replica answered, read through the second.
        _until(
            lambda: b.get(f"/v1/traces/{request_id}").status_code == 200,
            "the other replica never showed the trace",
        )
