"""The queued exchange keeps its stored JSON shape: jobs queued by an earlier version still teach.

A job waits in the SQLite queue across restarts and upgrades, so its payload is a stored format:
`ExchangeJob` writes exactly the keys jobs have always carried and reads old ones as they were.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.memory.exchange_job import EXCHANGE_JOB, ExchangeJob
from proxy.memory.seam import InjectedMemory
from proxy.memory.warmup import shared_embedder
from storage.store import open_embedded_store
from tests.harness import RunningProxy
from tests.memory.conftest import wait_for_memories

# A payload exactly as `after_call` wrote it before the job became a dataclass.
OLD_PAYLOAD: dict[str, Any] = {
    "request_id": "req_queued_before_upgrade",
    "user_id": "olga",
    "session_id": "s-1",
    "model": "echo",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "I live in Oslo. What is a good winter coat?"},
    ],
    "response": {"choices": [{"message": {"role": "assistant", "content": "A down parka."}}]},
    "injected": [{"id": "mem_recalled", "text": "The user likes hiking."}],
    "trace_id": "0af7651916cd43dd8448eb211c80319c",
    "span_id": "b7ad6b7169203331",
    "created_at": 1_700_000_000.0,
}


def test_a_job_reads_and_writes_the_stored_shape_unchanged() -> None:
    job = ExchangeJob.from_json(OLD_PAYLOAD)

    assert job.injected == [InjectedMemory("mem_recalled", "The user likes hiking.")]
    assert job.to_json() == OLD_PAYLOAD


def test_a_job_missing_keys_an_older_version_did_not_write_still_reads() -> None:
    job = ExchangeJob.from_json(
        {
            "request_id": "req_old",
            "user_id": "olga",
            "messages": [{"role": "user", "content": "I live in Oslo."}],
            "response": {"choices": [{"message": {"role": "assistant", "content": "ok"}}]},
            "injected": [{"text": "no id here"}, "not an object"],
        }
    )

    assert (job.session_id, job.model, job.trace_id, job.span_id) == (None, "", None, None)
    assert job.injected == [InjectedMemory(None, "no id here")]


def test_an_exchange_queued_in_the_old_shape_is_learned_after_an_upgrade(
    tmp_path: Path, memory_proxy: Callable[..., RunningProxy]
) -> None:
    async def queue_old_job() -> None:
        store = await open_embedded_store(tmp_path / "data", await shared_embedder("local"))
        try:
            await store.queue.enqueue("acme", EXCHANGE_JOB, OLD_PAYLOAD)
        finally:
            await store.close()

    asyncio.run(queue_old_job())
    proxy = memory_proxy()

    [memory] = [m for m in wait_for_memories(proxy, "olga", 1) if m["kind"] == "fact"]
    assert memory["text"] == "The user lives in Oslo."
    assert memory["source_request_id"] == "req_queued_before_upgrade"
    assert memory["trace_id"] == OLD_PAYLOAD["trace_id"]
    assert memory["derived_from_ids"] == ["mem_recalled"]
    assert memory["model"] == "echo"
