"""Whether a tenant's write queue is over its policy's bound, never judged on a stale reading.

Each tenant's depth and oldest job come from one grouped query, run in the background at most
once a second; exchanges this process queued since are added to the count it read, and the
first of them to the ages. Jobs only leave the queue between reads, so those numbers are an
upper bound on what waits now (as far as this process knows): a call they put below the bound
is queued without a store read. A call they put at or over it, which may be a bound the queue
has drained below since, waits for a read started after it arrived (calls arriving together
share one) and is shed only if that read says so. Several processes sharing one queue see each
other's jobs only through a read, so the bound is soft by up to a second of their traffic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from proxy.policy import WriteQueueSettings
from storage.api import WriteQueue
from storage.records import QueueDepth

log = logging.getLogger("memento.memory")

REFRESH_S = 1.0


@dataclass
class _QueuedHere:
    """A tenant's exchanges this process queued since the last read: how many, and when the
    first of them was (at the latest)."""

    count: int
    first_at: float


class QueueWatch:
    """The write queue's depth per tenant, as last read, for the write path's bound."""

    def __init__(self, queue: WriteQueue, refresh_s: float = REFRESH_S) -> None:
        self.queue = queue
        self.refresh_s = refresh_s
        self._depths: dict[str, QueueDepth] = {}
        self._queued_since: dict[str, _QueuedHere] = {}
        self._read_at = 0.0  # monotonic start of the last read that succeeded
        self._reading: asyncio.Task[bool] | None = None

    async def over_bound(self, tenant_id: str, bound: WriteQueueSettings) -> str | None:
        """Why the tenant's next exchange is to be shed (`depth` or `age`), or None."""
        if bound.max_depth is None and bound.max_age_s is None:
            return None
        asked_at = time.monotonic()
        self._refresh_soon()
        if self._judge(tenant_id, bound) is None:
            return None
        await self._read_since(asked_at)
        return self._judge(tenant_id, bound)

    def queued(self, tenant_id: str) -> None:
        """An exchange of the tenant's was queued by this process."""
        here = self._queued_since.get(tenant_id)
        if here is None:
            self._queued_since[tenant_id] = _QueuedHere(1, time.time())
        else:
            here.count += 1

    def _judge(self, tenant_id: str, bound: WriteQueueSettings) -> str | None:
        depth = self._depths.get(tenant_id)
        here = self._queued_since.get(tenant_id)
        waiting = (depth.jobs if depth else 0) + (here.count if here else 0)
        if bound.max_depth is not None and waiting >= bound.max_depth:
            return "depth"
        if bound.max_age_s is None:
            return None
        starts = [depth.oldest_created_at] if depth else []
        starts += [here.first_at] if here else []
        if starts and time.time() - min(starts) > bound.max_age_s:
            return "age"
        return None

    def _refresh_soon(self) -> None:
        stale = time.monotonic() - self._read_at >= self.refresh_s
        if stale and (self._reading is None or self._reading.done()):
            self._reading = asyncio.create_task(self._refresh())

    async def _read_since(self, asked_at: float) -> None:
        """Wait for a read started at or after `asked_at`: the one under way if it did, else
        the next (one at a time, so calls waiting together share it)."""
        while self._read_at < asked_at:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.create_task(self._refresh())
            if not await asyncio.shield(self._reading):
                return  # the store could not be read: the last numbers are all there is

    async def _refresh(self) -> bool:
        started, started_wall = time.monotonic(), time.time()
        # Exchanges queued so far are committed, so the read counts them: they leave the local
        # count. Ones queued while it runs stay in it, counted twice at worst (which only costs
        # a call another read, or sheds early if the queue is at its bound anyway).
        before = {tenant: here.count for tenant, here in self._queued_since.items()}
        try:
            depths = await self.queue.depths()
        except Exception:  # the bound keeps its last numbers; the next call tries again
            log.exception("could not read the write queue's depth")
            return False
        for tenant, count in before.items():
            here = self._queued_since[tenant]
            here.count -= count
            if here.count <= 0:
                del self._queued_since[tenant]
            else:  # queued during the read: no earlier than its start
                here.first_at = started_wall
        self._depths, self._read_at = depths, started
        return True
