"""Queued write-path work survives a killed process and a crashed worker."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from proxy.memory.worker import WritePool
from storage import open_store
from storage.embedders import LocalEmbedder
from storage.records import QueuedJob
from storage.store import DB_FILE, open_embedded_store
from tests.harness import RunningProxy, ServerProcess, write_tenant
from tests.memory.conftest import KEY, client_for, models, wait_for_memories
from tests.scripted_upstream import ScriptedUpstream


def _queued_jobs(data_dir: Path) -> int:
    path = data_dir / DB_FILE
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        try:
            (count,) = db.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(count)


def test_killed_proxy_resumes_its_queue_after_restart(
    upstream: ScriptedUpstream,
    policies_dir: Path,
    tmp_path: Path,
    start_proxy: Callable[..., RunningProxy],
) -> None:
    write_tenant(policies_dir, "acme", KEY, models(upstream))
    data_dir = tmp_path / "data"  # the directory start_proxy uses too
    with ServerProcess(policies_dir, data_dir, MEMENTO_MEMORY_WORKERS="0") as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0)
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "I am a marine biologist."}],
            user="kim",
        )
        assert _queued_jobs(data_dir) == 1  # queued before the client had the answer
        server.kill()

    proxy = start_proxy(policies_dir)  # same data dir, workers on
    memories = wait_for_memories(proxy, "kim", 1)
    assert [m["text"] for m in memories if m["kind"] == "fact"] == [
        "The user is a marine biologist."
    ]
    assert _queued_jobs(data_dir) == 0
    assert client_for(proxy)  # the restarted proxy serves as usual


@pytest.mark.asyncio(loop_scope="function")
async def test_job_of_a_crashed_worker_is_claimed_again_when_its_lease_ends(
    tmp_path: Path,
) -> None:
    embedder = LocalEmbedder()
    store = await open_embedded_store(tmp_path, embedder, lease_s=0.3)
    try:
        job_id = await store.queue.enqueue("acme", "exchange", {"n": 1})
        (claimed,) = await store.queue.claim("worker-that-dies", 1)
        assert claimed.id == job_id  # ...and the worker dies without completing it

        handled: list[QueuedJob] = []

        async def handle(job: QueuedJob) -> None:
            handled.append(job)

        pool = WritePool(store.queue, handle, workers=1, idle_poll_s=0.05)
        pool.start()
        for _ in range(200):
            if handled:
                break
            await asyncio.sleep(0.05)
        await pool.stop(drain_timeout_s=5)
        assert [job.id for job in handled] == [job_id]
        assert handled[0].attempts == 2
        assert await store.queue.pending() == 0
    finally:
        await store.close()


@pytest.mark.asyncio(loop_scope="function")
async def test_failing_job_is_retried_then_kept_as_failed(tmp_path: Path) -> None:
    store = await open_store(tmp_path, LocalEmbedder())
    try:
        await store.queue.enqueue("acme", "exchange", {"n": 1})
        attempts: list[int] = []

        async def handle(job: QueuedJob) -> None:
            attempts.append(job.attempts)
            raise RuntimeError("extraction model unreachable")

        pool = WritePool(
            store.queue, handle, workers=1, idle_poll_s=0.02, max_attempts=3, backoff_s=0.01
        )
        pool.start()
        for _ in range(200):
            if await store.queue.pending() == 0:
                break
            await asyncio.sleep(0.05)
        await pool.stop(drain_timeout_s=1)
        assert attempts == [1, 2, 3]
        assert await store.queue.pending() == 0
    finally:
        await store.close()
