"""Feedback through several processes serving one store: rewards sent to two replicas at once
are applied one after the other, so no utility update is lost or counted twice, and a reward
that lands while another replica's worker ties its case to the request becomes the case's outcome.

Two stores stand for two processes, each with its own Learner (the feedback route's), as two
replicas have: on one data folder (SQLite), and on one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from proxy.memory.learn import Learner
from proxy.memory.warmup import shared_embedder
from proxy.policy import FeedbackSettings
from storage import EmbeddedStore
from storage.records import NewMemory, RequestLog, Scope
from storage.store import open_embedded_store
from tests.postgres_server import BOTH_DATABASES

pytestmark = BOTH_DATABASES  # SQLite: locks on files; PostgreSQL: advisory locks

SCOPE = Scope("acme", "ann")
SETTINGS = FeedbackSettings()


@pytest_asyncio.fixture(loop_scope="function")  # the test's loop: a pool's workers run in it
async def pair(
    tmp_path: Path, database_url: str | None
) -> AsyncIterator[tuple[EmbeddedStore, EmbeddedStore]]:
    embedder = await shared_embedder("local")
    options: dict[str, Any] = {"maintenance_interval_s": 0, "database_url": database_url}
    first = await open_embedded_store(tmp_path, embedder, **options)
    second = await open_embedded_store(tmp_path, embedder, **options)
    try:
        yield first, second
    finally:
        await second.close()
        await first.close()


def _learner(store: EmbeddedStore) -> Learner:
    return Learner(store.memories, store.requests, store.locks)


async def _request(store: EmbeddedStore, request_id: str, memory_id: str) -> None:
    await store.requests.log_request(
        RequestLog(
            request_id=request_id,
            tenant_id=SCOPE.tenant_id,
            user_id=SCOPE.user_id,
            session_id=None,
            trace_id=None,
            model="m",
            created_at=time.time(),
            injected=[{"memory_id": memory_id, "score": 1.0}],
        )
    )


async def test_rewards_for_many_requests_at_once_all_move_the_shared_memory(
    pair: tuple[EmbeddedStore, EmbeddedStore],
) -> None:
    first, second = pair
    (memory,) = await first.memories.add(SCOPE, [NewMemory(kind="fact", text="Ann rows.")])
    requests = [f"r{number}" for number in range(12)]
    for request_id in requests:
        await _request(first, request_id, memory.id)
    learners = [_learner(first), _learner(second)]
    await asyncio.gather(
        *(
            learners[number % 2].apply("acme", request_id, 1.0, SETTINGS)
            for number, request_id in enumerate(requests)
        )
    )
    after = await first.memories.get(SCOPE, memory.id)
    assert after is not None
    # Each update read the one before it: none overwrote another.
    assert after.q_visits == len(requests) and after.n_pos == len(requests)
    assert after.q == pytest.approx(1 - (1 - SETTINGS.alpha_fact) ** len(requests))


async def test_two_rewards_for_one_request_at_once_leave_the_one_recorded(
    pair: tuple[EmbeddedStore, EmbeddedStore],
) -> None:
    first, second = pair
    (memory,) = await first.memories.add(SCOPE, [NewMemory(kind="fact", text="Ann rows.")])
    await _request(first, "r1", memory.id)
    await asyncio.gather(
        _learner(first).apply("acme", "r1", 1.0, SETTINGS),
        _learner(second).apply("acme", "r1", -1.0, SETTINGS),
    )
    after = await first.memories.get(SCOPE, memory.id)
    logged = await first.requests.get_request("acme", "r1")
    assert after is not None and logged is not None and logged.reward is not None
    # As if only the reward that stayed had been sent: the other was replaced, not added.
    assert after.q_visits == 1 and after.n_pos + after.n_neg == 1
    assert after.q == pytest.approx(SETTINGS.alpha_fact * logged.reward)


class _PausedFeedback:
    """A store's requests whose recording of a reward waits to be let go: the moment, inside
    feedback, at which the other replica's worker may tie the case it wrote to the request."""

    def __init__(self, requests: Any) -> None:
        self._requests = requests
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._requests, name)

    async def record_feedback(self, *args: Any) -> float | None:
        self.reached.set()
        await self.go.wait()
        return await self._requests.record_feedback(*args)  # type: ignore[no-any-return]


async def test_a_reward_sent_while_the_case_is_tied_to_its_request_becomes_its_outcome(
    pair: tuple[EmbeddedStore, EmbeddedStore],
) -> None:
    first, second = pair
    (case,) = await second.memories.add(
        SCOPE, [NewMemory(kind="case", text="Plan a rowing week: start with two easy days.")]
    )
    await first.requests.log_request(
        RequestLog("r1", "acme", "ann", None, None, "m", time.time(), injected=[])
    )
    paused = _PausedFeedback(first.requests)
    feedback = asyncio.ensure_future(
        Learner(first.memories, paused, first.locks).apply("acme", "r1", 1.0, SETTINGS)
    )
    await paused.reached.wait()  # feedback has read the request: no case tied to it yet
    tying = asyncio.ensure_future(_learner(second).attach_case("acme", "r1", case))
    await asyncio.wait([tying], timeout=0.5)  # its chance to slip in before the reward lands
    paused.go.set()
    await asyncio.gather(feedback, tying)
    after = await first.memories.get(SCOPE, case.id)
    assert after is not None
    # Before, neither side saw the other: the case kept no outcome and Q = 0.
    assert after.fields.get("outcome") == "worked" and after.fields.get("reward") == 1.0
    assert after.q == pytest.approx(0.3)
