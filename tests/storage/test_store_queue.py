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
