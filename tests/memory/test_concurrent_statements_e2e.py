"""Statements one user sends at once are learned one at a time, in order, through the real
proxy: each exchange consolidates against what the one before it wrote, so a one-value slot
keeps one active value and a statement repeated at once is one memory, whatever the number of
write workers."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for
from tests.postgres_server import BOTH_DATABASES

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]


def _send_at_once(proxy: RunningProxy, user: str, statements: list[str]) -> None:
    client = client_for(proxy)

    def send(statement: str) -> None:
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": statement}], user=user
        )

    with ThreadPoolExecutor(max_workers=len(statements)) as pool:
        list(pool.map(send, statements))


def _learned(proxy: RunningProxy, user: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    """The user's active memories once every queued exchange was learned; asserts that none
    of the jobs failed an attempt."""
    deadline = time.monotonic() + timeout_s
    with api(proxy) as http:
        while True:
            jobs = http.get("/v1/memories/jobs", params={"limit": 100}).json()["data"]
            if all(job["state"] in ("done", "failed") for job in jobs):
                break
            assert time.monotonic() < deadline, f"jobs not learned: {jobs}"
            time.sleep(0.1)
        assert [(job["state"], job["attempts"], job["last_error"]) for job in jobs] == [
            ("done", 1, None)
        ] * len(jobs)
        listed = http.get("/v1/memories", params={"user": user, "status": "active"}).json()
    memories: list[dict[str, Any]] = listed["data"]
    return memories


def test_statements_of_one_slot_sent_at_once_leave_one_active_value(
    memory_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = memory_proxy(memory_workers=4)
    _send_at_once(proxy, "dup2", [f"I live in City{n}." for n in range(5)])
    memories = _learned(proxy, "dup2")
    homes = [m["text"] for m in memories if m["text"].startswith("The user lives in City")]
    assert len(homes) == 1, homes
    assert len(memories) == 1, [m["text"] for m in memories]


def test_one_statement_sent_many_times_at_once_is_one_memory(
    memory_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = memory_proxy(memory_workers=4)
    _send_at_once(proxy, "porto", ["I live in Porto."] * 10)
    memories = _learned(proxy, "porto")
    assert Counter(m["text"] for m in memories) == {"The user lives in Porto.": 1}
