"""One queue in front of a CPU encoder: concurrent small requests run as one batch, and large
ones give way to them.

The encoder runs on one thread, one batch at a time. Requests that arrive while it is busy wait
here, not in the executor: when the thread is free, every waiting small request (a query's
text, a memory or two) goes in one batch, with no timer added to a lone request's latency. A
large request (many candidates of the write path, an import) is encoded in chunks of
`chunk` texts, and small requests that arrive in the meantime run before its next chunk: a chat
call's query never waits behind a whole import. A queue belongs to one event loop; an encoder
shared by several loops keeps one queue per loop, all feeding its one thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

Vectors = list[list[float]]
SMALL = 4  # texts in a request that jumps ahead of large ones


@dataclass
class _Request:
    texts: list[str]
    done: asyncio.Future[Vectors]
    rows: Vectors = field(default_factory=list)


class EncodeQueue:
    """Encodes through `encode` on `executor`, batching small requests and chunking large ones."""

    def __init__(
        self, encode: Callable[[list[str]], Vectors], executor: Executor, chunk: int = 64
    ) -> None:
        self._encode = encode
        self._executor = executor
        self._chunk = chunk
        self._small: deque[_Request] = deque()
        self._large: deque[_Request] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def encode(self, texts: list[str]) -> Vectors:
        """The vectors of `texts`, in order."""
        request = _Request(texts, asyncio.get_running_loop().create_future())
        (self._small if len(texts) <= SMALL else self._large).append(request)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())
        return await request.done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._small or self._large:
            if self._small:
                batch = self._take_small()
                texts = [text for request in batch for text in request.texts]
            else:
                if self._large[0].done.done():  # its caller was cancelled: stop encoding it
                    self._large.popleft()
                    continue
                batch = [self._large[0]]
                start = len(batch[0].rows)
                texts = batch[0].texts[start : start + self._chunk]
            try:
                rows = await loop.run_in_executor(self._executor, self._encode, texts)
            except BaseException as exc:  # the requests in this batch fail, the others go on
                for request in batch:
                    if request in self._large:
                        self._large.remove(request)
                    if not request.done.done():
                        request.done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            self._settle(batch, rows)

    def _take_small(self) -> list[_Request]:
        """Waiting small requests, up to a chunk of texts (at least one request)."""
        batch = [self._small.popleft()]
        size = len(batch[0].texts)
        while self._small and size + len(self._small[0].texts) <= self._chunk:
            size += len(self._small[0].texts)
            batch.append(self._small.popleft())
        return batch  # a cancelled caller's texts are encoded anyway: cheaper than a check

    def _settle(self, batch: list[_Request], rows: Vectors) -> None:
        if len(batch) == 1 and batch[0] in self._large:
            request = batch[0]
            request.rows.extend(rows)
            if len(request.rows) == len(request.texts):
                self._large.popleft()
                if not request.done.done():
                    request.done.set_result(request.rows)
            return
        offset = 0
        for request in batch:
            part = rows[offset : offset + len(request.texts)]
            offset += len(request.texts)
            if not request.done.done():  # a caller that was cancelled no longer waits
                request.done.set_result(part)
