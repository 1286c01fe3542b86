"""The durable write queue: claim, complete, retry, give up, and leases that expire."""

from __future__ import annotations

import asyncio
from pathlib import Path

from storage.embedders import LocalEmbedder
from storage.store import open_embedded_store


async def test_queue_lifecycle(tmp_path: Path, local_embedder: LocalEmbedder) -> None:
    store = await open_embedded_store(tmp_path, local_embedder, lease_s=0.2)
    try:
        first = await store.enqueue("acme", "exchange", {"request_id": "r1"})
        second = await store.enqueue("acme", "exchange", {"request_id": "r2"})
        assert await store.pending() == 2
        (job,) = await store.claim("w1", limit=1)
        assert (job.id, job.state, job.attempts, job.payload) == (
            first,
            "running",
            1,
            {"request_id": "r1"},
        )
        (other,) = await store.claim("w2", limit=5)
        assert other.id == second
        assert await store.claim("w3") == []  # both are leased
        await store.complete(first)
        await store.fail(second, "upstream 429", retry_in_s=0)
        (retried,) = await store.claim("w2")
        assert (retried.id, retried.attempts, retried.last_error) == (second, 2, "upstream 429")
        await store.fail(second, "bad payload", retry_in_s=None)
        assert await store.pending() == 0
        assert await store.claim("w1") == []

        third = await store.enqueue("acme", "exchange", {"request_id": "r3"})
        (crashed,) = await store.claim("dead-worker")
        assert crashed.id == third
        await asyncio.sleep(0.3)  # the dead worker's lease runs out
        (reclaimed,) = await store.claim("w1")
        assert (reclaimed.id, reclaimed.attempts) == (third, 2)
    finally:
        await store.close()


async def test_queue_survives_restart(tmp_path: Path, local_embedder: LocalEmbedder) -> None:
    store = await open_embedded_store(tmp_path, local_embedder)
    job_id = await store.enqueue("acme", "exchange", {"n": 1})
    await store.close()
    store = await open_embedded_store(tmp_path, local_embedder)
    try:
        assert await store.pending() == 1
        (job,) = await store.claim("w1")
        assert (job.id, job.payload) == (job_id, {"n": 1})
    finally:
        await store.close()


async def test_concurrent_writes_share_commits_and_are_each_durable(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    """Writes that arrive together are group-committed, and every caller gets its own row back."""
    store = await open_embedded_store(tmp_path, local_embedder)
    commits = 0
    real_execute = store.db._writer.execute

    async def counting_execute(sql: str, *args: object) -> object:
        nonlocal commits
        commits += sql == "COMMIT"
        return await real_execute(sql, *args)

    store.db._writer.execute = counting_execute  # type: ignore[method-assign]
    try:
        ids = await asyncio.gather(
            *(store.enqueue("acme", "exchange", {"n": n}) for n in range(200))
        )
        assert len(set(ids)) == 200
        assert commits < 20  # 200 writes, a handful of commits
    finally:
        store.db._writer.execute = real_execute  # type: ignore[method-assign]
        await store.close()
    store = await open_embedded_store(tmp_path, local_embedder)
    try:
        jobs = await store.claim("w1", limit=500)
        assert sorted(job.payload["n"] for job in jobs) == list(range(200))
        assert {job.id for job in jobs} == set(ids)
    finally:
        await store.close()
