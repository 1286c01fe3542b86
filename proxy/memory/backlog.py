"""Answered exchanges the durable queue refused, held in memory until it takes them again.

An exchange is queued before the client has its answer. When the store cannot write (a full disk,
a broken database file) the answer still goes out, and the exchange waits here instead of being
dropped: a background task offers the oldest one to the queue every `retry_s` and drains the
backlog as soon as a write succeeds, with no restart. While anything waits, the process reports a
problem (so `/readyz` says not ready and why). The backlog is bounded by `limit`: beyond it the
oldest exchange is dropped, counted and logged, because memory is finite too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from storage.api import HealthReporter, WriteQueue

log = logging.getLogger("memento.memory")

COMPONENT = "memory-queue"


@dataclass(frozen=True)
class HeldJob:
    tenant_id: str
    kind: str
    payload: dict[str, Any]


class QueueBacklog:
    """Jobs waiting in memory for the durable queue, retried in order."""

    def __init__(self, queue: WriteQueue, *, limit: int = 10_000, retry_s: float = 1.0) -> None:
        self.queue = queue
        self.limit = limit
        self.retry_s = retry_s
        self.dropped = 0
        self.reporter: HealthReporter | None = None
        self._held: deque[HeldJob] = deque()
        self._last_error = ""
        self._task: asyncio.Task[None] | None = None

    def attach_health(self, reporter: HealthReporter) -> None:
        """Report waiting exchanges to `reporter` from now on."""
        self.reporter = reporter
        if self._held:
            self._report()

    def hold(self, job: HeldJob, error: BaseException) -> None:
        """Keep `job`, which the queue just refused with `error`, and keep offering it."""
        if len(self._held) >= self.limit:
            self._held.popleft()
            self.dropped += 1
            log.error(
                "memory queue backlog full (%d): dropped the oldest answered exchange (%d so far)",
                self.limit,
                self.dropped,
            )
        self._held.append(job)
        self._last_error = f"{type(error).__name__}: {error}"
        self._report()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain_forever(), name="memento-queue-backlog")

    async def drain(self) -> bool:
        """Offer every held job to the queue, oldest first; False when the queue still refuses."""
        while self._held:
            job = self._held[0]
            try:
                await self.queue.enqueue(job.tenant_id, job.kind, job.payload)
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._report()
                return False
            self._held.popleft()
        if self.reporter is not None:
            self.reporter.clear(COMPONENT)
        return True

    async def aclose(self) -> None:
        """Stop retrying after one last attempt; say loudly what could not be kept."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not await self.drain():
            log.error(
                "%d answered exchanges could not be queued before shutdown (%s); they are lost",
                len(self._held),
                self._last_error,
            )

    async def _drain_forever(self) -> None:
        while True:
            if await self.drain():
                return
            await asyncio.sleep(self.retry_s)

    def _report(self) -> None:
        if self.reporter is None:
            return
        message = (
            f"{len(self._held)} answered exchanges held in memory because the write queue "
            f"refuses writes ({self._last_error}); they are queued as soon as it accepts them"
        )
        if self.dropped:
            message += f"; {self.dropped} dropped since start (backlog limit {self.limit})"
        self.reporter.report(COMPONENT, message)
