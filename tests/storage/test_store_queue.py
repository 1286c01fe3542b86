"""The durable write queue: claim, complete, retry, give up, and leases that expire."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.memory.worker import WritePool
from storage.api import StorageFull
from storage.embedders import LocalEmbedder
from storage.records import QueuedJob
from storage.sqlite import Database
from storage.store import open_database, open_embedded_store
from tests.postgres_server import BOTH_DATABASES

pytestmark = BOTH_DATABASES


async def test_queue_lifecycle(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    store = await open_embedded_store(
        tmp_path, local_embedder, lease_s=0.2, database_url=database_url
    )
    try:
        first = await store.queue.enqueue("acme", "exchange", {"user_id": "ann", "n": 1})
        second = await store.queue.enqueue("acme", "exchange", {"user_id": "bob", "n": 2})
        assert await store.queue.pending() == 2
        (job,) = await store.queue.claim("w1", limit=1)
        assert (job.id, job.state, job.attempts, job.payload) == (
            first,
            "running",
            1,
            {"user_id": "ann", "n": 1},
        )
        (other,) = await store.queue.claim("w2", limit=5)
        assert other.id == second
        assert await store.queue.claim("w3") == []  # both are leased
        await store.queue.complete(first)
        await store.queue.fail(second, "upstream 429", retry_in_s=0)
        (retried,) = await store.queue.claim("w2")
        assert (retried.id, retried.attempts, retried.last_error) == (second, 2, "upstream 429")
        await store.queue.fail(second, "bad payload", retry_in_s=None)
        assert await store.queue.pending() == 0
        assert await store.queue.claim("w1") == []

        third = await store.queue.enqueue("acme", "exchange", {"user_id": "ann", "n": 3})
        (crashed,) = await store.queue.claim("dead-worker")
        assert crashed.id == third
        await asyncio.sleep(0.3)  # the dead worker's lease runs out
        (reclaimed,) = await store.queue.claim("w1")
        assert (reclaimed.id, reclaimed.attempts) == (third, 2)
    finally:
        await store.close()


async def test_queue_survives_restart(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    job_id = await store.queue.enqueue("acme", "exchange", {"n": 1})
    await store.close()
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    try:
        assert await store.queue.pending() == 1
        (job,) = await store.queue.claim("w1")
        assert (job.id, job.payload) == (job_id, {"n": 1})
    finally:
        await store.close()


async def test_jobs_someone_waits_for_are_claimed_first_when_claimable(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    try:
        oldest, middle, newest = [
            await store.queue.enqueue("acme", "exchange", {"user_id": user})
            for user in ("ann", "bob", "cyd")
        ]
        await store.queue.fail(middle, "upstream 429", retry_in_s=60)  # waiting out its backoff
        (job,) = await store.queue.claim("w1", first=[middle, newest])
        assert job.id == newest  # ahead of the older one; the backed-off one is not due
        (job,) = await store.queue.claim("w1", first=[middle, newest])
        assert job.id == oldest  # nothing of `first` is claimable: oldest first, as always
        assert await store.queue.claim("w1", first=[middle]) == []
        assert await store.queue.unfinished([oldest, middle, newest]) == {oldest, middle, newest}
        await store.queue.complete(newest)
        await store.queue.fail(oldest, "bad payload", retry_in_s=None)
        assert await store.queue.unfinished([oldest, middle, newest]) == {middle}
    finally:
        await store.close()


async def test_concurrent_writes_share_commits_and_are_each_durable(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    """Writes that arrive together are group-committed, and every caller gets its own row back."""
    if database_url is not None:
        pytest.skip("counts the commits of SQLite's writer connection")
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    commits = 0
    real_execute = store.db.connection._writer.execute

    async def counting_execute(sql: str, *args: object) -> object:
        nonlocal commits
        commits += sql == "COMMIT"
        return await real_execute(sql, *args)

    store.db.connection._writer.execute = counting_execute  # type: ignore[method-assign]
    try:
        ids = await asyncio.gather(
            *(
                store.queue.enqueue("acme", "exchange", {"user_id": f"u{n}", "n": n})
                for n in range(200)
            )
        )
        assert len(set(ids)) == 200
        assert commits < 20  # 200 writes, a handful of commits
    finally:
        store.db.connection._writer.execute = real_execute  # type: ignore[method-assign]
        await store.close()
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    try:
        jobs = await store.queue.claim("w1", limit=500)
        assert sorted(job.payload["n"] for job in jobs) == list(range(200))
        assert {job.id for job in jobs} == set(ids)
    finally:
        await store.close()


async def test_a_given_up_job_stays_failed_listed_and_can_be_retried(
    tmp_path: Path,
    local_embedder: LocalEmbedder,
    caplog: pytest.LogCaptureFixture,
    database_url: str | None,
) -> None:
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    runs: list[int] = []
    upstream_down = True

    async def learn(job: QueuedJob) -> None:
        runs.append(job.id)
        if upstream_down:
            raise ConnectionError("upstream refused the connection")

    pool = WritePool(store.queue, learn, workers=1, idle_poll_s=0.01, max_attempts=2, backoff_s=0)
    pool.start()
    try:
        job_id = await store.queue.enqueue("acme", "exchange", {"request_id": "r1"})
        await store.queue.enqueue("globex", "exchange", {"request_id": "r2"})
        while await store.queue.pending():
            await asyncio.sleep(0.01)
        (failed,) = await store.queue.list_jobs("acme", state="failed")
        assert (failed.id, failed.attempts) == (job_id, 2)
        assert failed.last_error == "ConnectionError: upstream refused the connection"
        assert await store.queue.count_jobs("failed") == 2
        given_up = [r for r in caplog.records if r.levelname == "ERROR" and "given up" in r.message]
        assert len(given_up) == 2
        # Another tenant cannot retry it; a job that did not fail cannot be retried.
        assert await store.queue.retry_job("globex", job_id) is None
        upstream_down = False
        retried = await store.queue.retry_job("acme", job_id)
        assert retried is not None and (retried.state, retried.attempts) == ("queued", 0)
        while await store.queue.pending():
            await asyncio.sleep(0.01)
        assert [job.state for job in await store.queue.list_jobs("acme")] == ["done"]
        assert await store.queue.retry_job("acme", job_id) is None
        assert runs.count(job_id) == 3
    finally:
        await pool.stop()
        await store.close()


async def test_a_job_failing_on_a_full_disk_is_never_given_up(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    attempts: list[int] = []

    async def learn(job: QueuedJob) -> None:
        attempts.append(job.attempts)
        if len(attempts) <= 3:
            raise StorageFull("database or disk is full")

    pool = WritePool(store.queue, learn, workers=1, idle_poll_s=0.01, max_attempts=2, backoff_s=0)
    pool.start()
    try:
        job_id = await store.queue.enqueue("acme", "exchange", {"request_id": "r1"})
        while await store.queue.pending():
            await asyncio.sleep(0.01)
        assert attempts == [1, 2, 3, 4]
        assert [(job.id, job.state) for job in await store.queue.list_jobs("acme")] == [
            (job_id, "done")
        ]
    finally:
        await pool.stop()
        await store.close()


async def test_a_users_open_jobs_are_found_whoever_queued_them(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    """What a call waits for when other processes share the queue: the user's jobs whose first
    attempt has not ended (queued and never tried, or running), not another user's or tenant's,
    not one finished or waiting for its retry."""
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    try:
        queue = store.queue
        done = await queue.enqueue("acme", "exchange", {"user_id": "alice", "n": 3})
        (claimed,) = await queue.claim("w1")
        await queue.complete(claimed.id)
        running = await queue.enqueue("acme", "exchange", {"user_id": "alice", "n": 1})
        retried = await queue.enqueue("acme", "exchange", {"user_id": "alice", "n": 2})
        (claimed,) = await queue.claim("w1")
        await queue.fail(claimed.id, "bad payload", retry_in_s=None)  # given up...
        (claimed,) = await queue.claim("w1")
        assert claimed.id == retried
        await queue.fail(retried, "upstream down", retry_in_s=30)
        await queue.retry_job("acme", running)  # ...and queued again by an operator
        (claimed,) = await queue.claim("w1")
        assert claimed.id == running  # the user's oldest open job, though the other waits
        queued = await queue.enqueue("acme", "exchange", {"user_id": "alice", "n": 4})
        await queue.enqueue("acme", "exchange", {"user_id": "bob", "n": 5})
        await queue.enqueue("globex", "exchange", {"user_id": "alice", "n": 6})
        await queue.enqueue("acme", "exchange", {"n": 7})  # an anonymous call's

        found = await queue.open_jobs_of("acme", "alice")

        assert [(job.id, job.state) for job in found] == [(running, "running"), (queued, "queued")]
        assert found[1].payload == {"user_id": "alice", "n": 4}
        assert done not in {job.id for job in found}
    finally:
        await store.close()


async def test_one_users_jobs_run_one_at_a_time_in_order_across_claimers(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    """Two processes sharing the queue (two connections to one database): a user's jobs are
    claimed one at a time, oldest first; another user's, and the tenant-shared ones (no user),
    meanwhile; a job whose worker died (its lease expired) releases its user."""
    dying = await open_database(tmp_path, database_url, lease_s=0.3)
    alive = await open_database(tmp_path, database_url, lease_s=120)
    try:
        ann = [await dying.queue.enqueue("acme", "exchange", {"user_id": "ann"}) for _ in "123"]
        bob = await alive.queue.enqueue("acme", "exchange", {"user_id": "bob"})
        shared = [await alive.queue.enqueue("acme", "exchange", {}) for _ in "12"]
        other_tenant = await alive.queue.enqueue("globex", "exchange", {"user_id": "ann"})

        # One claim never takes two jobs of a user, even asked for many.
        claimed = await dying.queue.claim("w1", limit=10)
        assert [job.id for job in claimed] == [ann[0], bob, shared[0], other_tenant]
        more = [alive.queue.claim("w2", limit=10), dying.queue.claim("w3", limit=10)]
        assert await asyncio.gather(*more) == [[], []]  # every user's job runs: none claimable

        await dying.queue.complete(bob)
        await dying.queue.complete(other_tenant)
        await alive.queue.complete(shared[0])
        (job,) = await alive.queue.claim("w2", limit=10)
        assert job.id == shared[1]  # ann's next waits for ann's first, which runs on
        await dying.queue.complete(ann[0])
        (job,) = await dying.queue.claim("dies", limit=10, first=[ann[2]])
        assert job.id == ann[1]  # ann's next in order, though the newest is awaited
        assert await alive.queue.claim("w2", limit=10) == []  # leased: ann stays busy
        await asyncio.sleep(0.4)  # ...until the dead worker's lease runs out
        (job,) = await alive.queue.claim("w2", limit=10)
        assert (job.id, job.attempts) == (ann[1], 2)  # the same job again, not ann's next
        await alive.queue.complete(ann[1])
        (job,) = await alive.queue.claim("w2", limit=10)
        assert job.id == ann[2]
    finally:
        await dying.close()
        await alive.close()


async def test_concurrent_claimers_never_hold_two_jobs_of_one_user(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    """Workers of two processes drain three users' jobs at once: no user ever has two jobs
    held, each user's jobs run in the order they were queued, and every job runs once."""
    first = await open_database(tmp_path, database_url, lease_s=120)
    second = await open_database(tmp_path, database_url, lease_s=120)
    users = ["ann", "bob", None]
    queued: dict[str | None, list[int]] = {user: [] for user in users}
    for _ in range(8):
        for user in users:
            payload = {"user_id": user} if user else {}
            queued[user].append(await first.queue.enqueue("acme", "exchange", payload))
    owner = {job_id: user for user, ids in queued.items() for job_id in ids}
    held: set[str | None] = set()
    ran: dict[str | None, list[int]] = {user: [] for user in users}

    async def work(name: str, db: Database) -> None:
        while len(owner) > sum(map(len, ran.values())):
            jobs = await db.queue.claim(name, limit=2)
            for job in jobs:
                user = owner[job.id]
                assert user not in held, f"{name} took job {job.id} while {user} had one held"
                held.add(user)
                ran[user].append(job.id)
            await asyncio.sleep(0.005)  # the others claim while these are held
            for job in jobs:
                held.discard(owner[job.id])  # before the commit that lets the next be claimed
                await db.queue.complete(job.id)

    try:
        workers = [
            work(f"{db_name}-{n}", db)
            for n in range(2)
            for db_name, db in (("a", first), ("b", second))
        ]
        await asyncio.gather(*workers)
        assert ran == queued
    finally:
        await first.close()
        await second.close()
