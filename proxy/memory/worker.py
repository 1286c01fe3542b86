"""The write-path worker pool: durable jobs from the SQLite queue, processed off the request path.

Jobs survive crashes and restarts in the queue (a claimed job whose lease runs out is claimed
again); a failing job is retried with backoff and given up after `max_attempts`: it stays in the
queue as `failed` with its error, logged at ERROR, counted on `/readyz`, listed by
`GET /v1/memories/jobs?state=failed` and queued again by `POST /v1/memories/jobs/{id}/retry`.
Shutdown drains: workers keep going until the queue is empty or the drain timeout passes.
Jobs a request is waiting for (`pending.py`) are claimed before older ones, and the request is
released as soon as the attempt at its job ends.

The pool's workers are shared by every tenant, but a tenant's policy bounds how many of its jobs
run at once (`memory.workers`): a tenant at its bound has its jobs left in the queue at the next
claim, so one tenant's burst cannot take every worker while another's exchanges wait. The
queue's claim hands out one user's jobs one at a time, in order, across every process
(`storage/sqlite/queue.py`): each exchange is consolidated against what its user's previous one
wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

from proxy.memory.pending import PendingWrites
from proxy.policy_source import PolicySource
from storage.api import StorageFull, WriteQueue
from storage.records import QueuedJob

log = logging.getLogger("memento.worker")

JobHandler = Callable[[QueuedJob], Awaitable[None]]


class WritePool:
    """`workers` asyncio tasks claiming jobs one at a time and running `handler` on each; with
    `policies`, at most `memory.workers` of one tenant's jobs at once."""

    def __init__(
        self,
        queue: WriteQueue,
        handler: JobHandler,
        *,
        workers: int = 2,
        idle_poll_s: float = 0.5,
        max_attempts: int = 5,
        backoff_s: float = 2.0,
        pending: PendingWrites | None = None,
        policies: PolicySource | None = None,
    ) -> None:
        self.queue = queue
        self.handler = handler
        self.workers = workers
        self.idle_poll_s = idle_poll_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.pending = pending or PendingWrites()
        self.policies = policies
        self._running: dict[str, int] = {}  # tenant → its jobs being processed now
        self._claiming = asyncio.Lock()  # a tenant's count is checked and raised in one step
        self._wake = asyncio.Event()
        self._stopping = False
        self._draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._name = f"worker-{os.getpid()}"

    def start(self) -> None:
        for number in range(self.workers):
            task = asyncio.create_task(self._run(f"{self._name}-{number}"), name="memento-writer")
            self._tasks.append(task)

    def notify(self) -> None:
        """A job was queued: wake an idle worker now instead of at its next poll."""
        self._wake.set()

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Finish queued work (up to the timeout), then stop every worker. A pool without
        workers (this process only queues) leaves the queue to the processes that drain it."""
        self._draining = True
        self._wake.set()
        try:
            if self._tasks:
                await asyncio.wait_for(self._drained(), timeout=drain_timeout_s)
        except TimeoutError:
            log.warning(
                "write queue not drained within %.1fs; it resumes at next start", drain_timeout_s
            )
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _drained(self) -> None:
        while await self.queue.pending() > 0:
            self._wake.set()
            await asyncio.sleep(0.05)

    async def _run(self, name: str) -> None:
        while not self._stopping:
            try:
                jobs = await self._claim(name)
            except StorageFull:  # reported on /readyz by the store; claiming resumes with space
                jobs = []
            except Exception:
                log.exception("claiming a job failed")
                jobs = []
            if not jobs:
                await self._idle()
                continue
            for job in jobs:
                try:
                    await self._process(job)
                finally:
                    self.pending.finish(job.id)
                    self._finished(job.tenant_id)

    async def _claim(self, name: str) -> list[QueuedJob]:
        """One job, of a tenant below its bound; counted as running before anyone claims again."""
        async with self._claiming:
            busy = [t for t, n in self._running.items() if n > 0 and n >= self._bound(t)]
            jobs = await self.queue.claim(name, 1, first=self.pending.awaited(), skip_tenants=busy)
            for job in jobs:
                self._running[job.tenant_id] = self._running.get(job.tenant_id, 0) + 1
            return jobs

    def _finished(self, tenant_id: str) -> None:
        if self._running[tenant_id] >= self._bound(tenant_id):
            self._wake.set()  # the tenant was at its bound: its queued jobs are claimable again
        self._running[tenant_id] -= 1

    def _bound(self, tenant_id: str) -> int:
        policy = self.policies.get(tenant_id) if self.policies is not None else None
        return policy.memory.workers if policy is not None else self.workers

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._wake.wait(), timeout=0.05 if self._draining else self.idle_poll_s
            )

    async def _process(self, job: QueuedJob) -> None:
        try:
            await self.handler(job)
        except asyncio.CancelledError:
            raise  # the lease expires and the job is claimed again after a restart
        except Exception as exc:
            # A full disk is the store's problem, not the job's: never a reason to give up.
            give_up = job.attempts >= self.max_attempts and not isinstance(exc, StorageFull)
            retry = None if give_up else self.backoff_s * 2 ** (job.attempts - 1)
            log.log(
                logging.ERROR if give_up else logging.WARNING,
                "job %s of tenant %s failed (attempt %s/%s)%s: %s",
                job.id,
                job.tenant_id,
                job.attempts,
                self.max_attempts,
                "; given up, kept as failed (retry: POST /v1/memories/jobs/ID/retry)"
                if give_up
                else "",
                f"{type(exc).__name__}: {exc}"[:300],
            )
            with contextlib.suppress(Exception):
                await self.queue.fail(
                    job.id, f"{type(exc).__name__}: {exc}"[:500], retry_in_s=retry
                )
            return
        await self.queue.complete(job.id)
