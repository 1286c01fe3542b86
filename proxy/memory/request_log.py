"""The request log: each memory call's request and the memories it injected, for feedback.

The log is written while the call goes upstream. Nothing on the call's path waits for it but
the exchange's job (queued after it, as the job links its case to the log); the feedback route
waits for logs still pending (`flush`), so feedback sent the moment the answer arrives finds the
request. Feedback and traces join on the request id.
"""

from __future__ import annotations

import asyncio
import logging
import time

from proxy.memory.retrieve import ScoredMemory, score_parts
from proxy.memory.seam import CallContext
from storage.api import RequestStore
from storage.records import RequestLog, Scope

log = logging.getLogger("memento.memory")


class RequestLogger:
    """Writes request logs in the background and knows which are not stored yet."""

    def __init__(self, store: RequestStore) -> None:
        self.store = store
        self._pending: set[asyncio.Task[None]] = set()

    def log(
        self, ctx: CallContext, scope: Scope, injected: list[ScoredMemory], status: str = "ok"
    ) -> asyncio.Task[None]:
        """Start recording the request (feedback and traces join on it) while the call goes
        upstream; `injected` are the memories the prompt carries, in rank order."""
        created_at = time.time()

        async def write() -> None:
            # Built here, not before the call goes upstream: the score parts of every injected
            # memory are a good part of a millisecond the caller need not wait for.
            entry = RequestLog(
                request_id=ctx.request_id,
                client_request_id=ctx.client_request_id,
                tenant_id=scope.tenant_id,
                user_id=scope.user_id,
                session_id=scope.session_id,
                trace_id=ctx.trace_id,
                model=ctx.model_alias,
                created_at=created_at,
                injected=[
                    {"memory_id": item.record.id, "rank": rank, "kind": item.record.kind, **parts}
                    for rank, (item, parts) in enumerate(
                        zip(injected, score_parts(injected), strict=True)
                    )
                ],
                status=status,
            )
            await self._write(entry)

        task = asyncio.create_task(write())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def flush(self) -> None:
        """Wait until every request logged so far is stored (feedback can find it)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _write(self, entry: RequestLog) -> None:
        try:
            await self.store.log_request(entry)
        except Exception:
            log.exception("could not log request %s", entry.request_id)
