"""The memory pipeline wired to storage: the `MemoryHooks` the chat route calls.

It owns the store and composes the two paths a chat call takes through memory:
- `read_path.py`, before the call: scope → query → retrieve → budget → inject;
- `write_path.py`, after it: queue, then (in workers) extract → sanitize → consolidate → write.
Start-up warms what the first request would otherwise pay for (`warmup.py`); the request log
(`request_log.py`) is written by the read path and awaited by the write path.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from proxy.memory.backlog import QueueBacklog
from proxy.memory.learn import Learner
from proxy.memory.pending import PendingWrites
from proxy.memory.read_path import DEFAULT_RETRIEVAL_SLOTS, ReadPath, RetrievalSlots
from proxy.memory.request_log import RequestLogger
from proxy.memory.seam import CallContext, PreparedCall
from proxy.memory.warmup import load_tokenizers, shared_embedder, warm_up
from proxy.memory.write_path import WritePath
from proxy.policy_source import PolicySource
from proxy.upstreams.registry import Upstreams
from storage.api import Store


class MemoryPipeline:
    """Retrieve, budget and inject before the call; queue the exchange after it; learn."""

    def __init__(
        self,
        policies: PolicySource,
        upstreams: Upstreams,
        *,
        data_dir: Path | None = None,
        store: Store | None = None,
        embedder: str = "local",
        workers: int = 2,
        retrieval_slots: int = DEFAULT_RETRIEVAL_SLOTS,
        shared_queue: bool = False,
    ) -> None:
        if store is None and data_dir is None:
            raise ValueError("give the pipeline a store or a data_dir to open one in")
        self.policies = policies
        self.upstreams = upstreams
        self._data_dir = data_dir
        self._embedder_spec = embedder
        self._store = store
        self._owns_store = store is None
        self._workers = workers  # write-path workers of this process; 0 only queues
        self._slots = RetrievalSlots(retrieval_slots)
        self._shared_queue = shared_queue  # other processes queue exchanges (`ReadPath`)
        self._requests: RequestLogger | None = None
        self._reads: ReadPath | None = None
        self._writes: WritePath | None = None
        self._learner: Learner | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the memory pipeline is not started")
        return self._store

    @property
    def reads(self) -> ReadPath:
        if self._reads is None:
            raise RuntimeError("the memory pipeline is not started")
        return self._reads

    @property
    def writes(self) -> WritePath:
        if self._writes is None:
            raise RuntimeError("the memory pipeline is not started")
        return self._writes

    @property
    def backlog(self) -> QueueBacklog:
        """Answered exchanges waiting in memory for the queue to accept writes again."""
        return self.writes.backlog

    @property
    def learner(self) -> Learner:
        """Feedback's learning rule over this pipeline's store."""
        if self._learner is None:
            self._learner = Learner(self.store.memories, self.store.requests, self.store.locks)
        return self._learner

    async def start(self) -> None:
        """Open the store (loading the embedder, and the tokenizers beside it), warm up, and
        start the write workers."""
        tokenizers = asyncio.ensure_future(load_tokenizers(self.policies))
        try:
            if self._store is None:
                from storage import open_store

                assert self._data_dir is not None
                embedder = await shared_embedder(self._embedder_spec)
                # The proxy is what moves the index when MEMENTO_INDEX_URI changes.
                self._store = await open_store(self._data_dir, embedder, move_index=True)
        finally:
            await tokenizers
        await warm_up(self._store.memories, self.policies)
        pending = PendingWrites()  # exchanges queued here, not yet learned, by user
        self._requests = RequestLogger(self._store.requests)
        self._reads = ReadPath(
            self._store, pending, self._requests, self._slots, shared_queue=self._shared_queue
        )
        self._writes = WritePath(
            self._store, self.policies, self.upstreams, pending, self.learner, workers=self._workers
        )
        self._writes.start()

    async def flush_request_logs(self) -> None:
        """Wait until every request logged so far is stored (feedback can find it)."""
        if self._requests is not None:
            await self._requests.flush()

    async def aclose(self, drain_timeout_s: float = 10.0) -> None:
        """Drain the write queue (bounded), stop the workers, close the store."""
        await self.flush_request_logs()
        if self._writes is not None:
            await self._writes.aclose(drain_timeout_s)
            self._writes = None
        if self._store is not None and self._owns_store:
            await self._store.close()
            self._store = None

    async def before_call(self, ctx: CallContext) -> PreparedCall:
        return await self.reads.before_call(ctx)

    async def after_call(
        self, ctx: CallContext, prepared: PreparedCall, response: dict[str, Any]
    ) -> None:
        await self.writes.after_call(ctx, prepared, response)
