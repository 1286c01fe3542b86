"""Whether a tenant's write queue is over its policy's bound, known without waiting on the store.

Each tenant's depth and oldest job come from one grouped query, run in the background at most
once a second; exchanges this process queued since are added to the count it read. Several
processes sharing one queue each see the others' jobs only through that read, so the bound is
soft by up to a second of their traffic. An answered
call only looks at those numbers: the bound never adds a store read to a call.
"""

from __future__ import annotations

import asyncio
import logging
import time

from proxy.policy import WriteQueueSettings
from storage.api import WriteQueue
from storage.records import QueueDepth

log = logging.getLogger("memento.memory")

REFRESH_S = 1.0


class QueueWatch:
    """The write queue's depth per tenant, as last read, for the write path's bound."""

    def __init__(self, queue: WriteQueue, refresh_s: float = REFRESH_S) -> None:
        self.queue = queue
        self.refresh_s = refresh_s
        self._depths: dict[str, QueueDepth] = {}
        self._queued_since: dict[str, int] = {}  # queued here since the last read
        self._read_at = 0.0
        self._reading: asyncio.Task[None] | None = None

    def over_bound(self, tenant_id: str, bound: WriteQueueSettings) -> str | None:
        """Why the tenant's next exchange is to be shed (`depth` or `age`), or None."""
        if bound.max_depth is None and bound.max_age_s is None:
            return None
        self._refresh_soon()
        depth = self._depths.get(tenant_id)
        waiting = (depth.jobs if depth else 0) + self._queued_since.get(tenant_id, 0)
        if bound.max_depth is not None and waiting >= bound.max_depth:
            return "depth"
        if bound.max_age_s is not None and depth and depth.age_s(time.time()) > bound.max_age_s:
            return "age"
        return None

    def queued(self, tenant_id: str) -> None:
        """An exchange of the tenant's was queued by this process."""
        self._queued_since[tenant_id] = self._queued_since.get(tenant_id, 0) + 1

    def _refresh_soon(self) -> None:
        stale = time.monotonic() - self._read_at >= self.refresh_s
        if stale and (self._reading is None or self._reading.done()):
            self._reading = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        started = time.monotonic()
        # Exchanges queued so far are committed, so the read counts them: they leave the local
        # count. Ones queued while it runs stay in it, counted twice at worst (sheds early,
        # never late).
        before = dict(self._queued_since)
        try:
            depths = await self.queue.depths()
        except Exception:  # the bound keeps its last numbers; the next call tries again
            log.exception("could not read the write queue's depth")
            return
        for tenant, count in before.items():
            self._queued_since[tenant] -= count
        self._depths, self._read_at = depths, started
