"""Per-tenant write workers: a tenant's `memory.workers` bounds its jobs running at once, so one
tenant's burst leaves the pool's other workers to the other tenants."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy.memory.worker import WritePool
from proxy.policy import Policy
from storage.embedders import LocalEmbedder
from storage.records import QueuedJob
from storage.store import open_embedded_store
from tests.postgres_server import BOTH_DATABASES

pytestmark = BOTH_DATABASES


class Policies:
    def __init__(self, *policies: Policy) -> None:
        self.by_tenant = {p.tenant: p for p in policies}

    def get(self, tenant: str, /) -> Policy | None:
        return self.by_tenant.get(tenant)


async def test_a_tenants_burst_cannot_take_every_worker(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    policies = Policies(
        Policy.model_validate({"tenant": "burst", "memory": {"workers": 1}}),
        Policy.model_validate({"tenant": "quiet", "memory": {"workers": 2}}),
    )
    running: dict[str, int] = {"burst": 0, "quiet": 0}
    most: dict[str, int] = {"burst": 0, "quiet": 0}
    started: list[str] = []
    two_started = asyncio.Event()
    release = asyncio.Event()

    async def learn(job: QueuedJob) -> None:
        # Every job blocks until released: what runs at once is what the pool let run at once.
        running[job.tenant_id] += 1
        most[job.tenant_id] = max(most[job.tenant_id], running[job.tenant_id])
        started.append(job.tenant_id)
        if len(started) == 2:
            two_started.set()
        try:
            await release.wait()
        finally:
            running[job.tenant_id] -= 1

    for number in range(4):
        await store.queue.enqueue("burst", "exchange", {"user_id": f"b{number}"})
    await store.queue.enqueue("quiet", "exchange", {"user_id": "q0"})
    pool = WritePool(store.queue, learn, workers=2, idle_poll_s=0.01, policies=policies)
    pool.start()
    try:
        await asyncio.wait_for(two_started.wait(), timeout=60)
        # The oldest four jobs are the burst's, yet the second worker took the quiet tenant's.
        assert sorted(started) == ["burst", "quiet"]
        release.set()
        while await store.queue.pending():
            await asyncio.sleep(0.01)
        assert started.count("burst") == 4 and started.count("quiet") == 1
        assert most == {"burst": 1, "quiet": 1}
    finally:
        release.set()
        await pool.stop()
        await store.close()


async def test_a_tenant_may_use_every_worker_its_policy_allows(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    store = await open_embedded_store(tmp_path, local_embedder, database_url=database_url)
    policies = Policies(Policy.model_validate({"tenant": "burst", "memory": {"workers": 3}}))
    started: list[int] = []
    three_started = asyncio.Event()
    release = asyncio.Event()

    async def learn(job: QueuedJob) -> None:
        started.append(job.id)
        if len(started) == 3:
            three_started.set()
        await release.wait()

    for number in range(3):
        await store.queue.enqueue("burst", "exchange", {"user_id": f"b{number}"})
    pool = WritePool(store.queue, learn, workers=3, idle_poll_s=0.01, policies=policies)
    pool.start()
    try:
        await asyncio.wait_for(three_started.wait(), timeout=60)  # all three at once
        release.set()
        while await store.queue.pending():
            await asyncio.sleep(0.01)
    finally:
        release.set()
        await pool.stop()
        await store.close()
