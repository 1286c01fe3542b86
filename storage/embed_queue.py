"""One queue in front of a CPU encoder: concurrent small requests run as one batch, large ones
give way to them and may use more than one thread.

The encoder runs on `workers` threads of its executor, one batch each. Requests that arrive while
they are busy wait here, not in the executor. Small requests (a query's text, a memory or two)
run one batch at a time: when a thread is free, every waiting small request goes in one batch,
with no timer added to a lone request's latency. A large request (many candidates of the write
path, an import) is encoded in chunks of `chunk` texts, as many at once as there are free
threads, and small requests that arrive in the meantime take the next thread that comes free:
a chat call's query never waits behind a whole import, and an import uses every thread the
queries leave it. A queue belongs to one event loop; an encoder shared by several loops keeps
one queue per loop, all feeding its threads.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import cast

Vectors = list[list[float]]
SMALL = 4  # texts in a request that jumps ahead of large ones


@dataclass
class _Request:
    texts: list[str]
    done: asyncio.Future[Vectors]
    rows: list[list[float] | None] = field(init=False)  # by position in `texts`
    sent: int = 0  # texts handed to the encoder so far
    filled: int = 0  # texts encoded so far

    def __post_init__(self) -> None:
        self.rows = [None] * len(self.texts)


@dataclass
class _Run:
    """One batch on its way through the encoder: whole small requests, or a chunk of one large
    request starting at `start`."""

    requests: list[_Request]
    texts: list[str]
    start: int = 0
    small: bool = True


class EncodeQueue:
    """Encodes through `encode` on `executor` (`workers` threads of it at most), batching small
    requests and chunking large ones."""

    def __init__(
        self,
        encode: Callable[[list[str]], Vectors],
        executor: Executor,
        chunk: int = 64,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"an encode queue needs at least one worker, got {workers}")
        self._encode = encode
        self._executor = executor
        self._chunk = chunk
        self._workers = workers
        self._small: deque[_Request] = deque()
        self._large: deque[_Request] = deque()
        self._tasks: set[asyncio.Task[None]] = set()  # referenced until they finish
        self._lanes = 0  # tasks feeding the encoder now, at most `workers`
        self._small_running = False

    async def encode(self, texts: list[str]) -> Vectors:
        """The vectors of `texts`, in order."""
        request = _Request(texts, asyncio.get_running_loop().create_future())
        (self._small if len(texts) <= SMALL else self._large).append(request)
        self._dispatch()
        return await request.done

    def _dispatch(self) -> None:
        """Bring up lanes (tasks feeding one thread each) for the work waiting. A lane picks its
        batch when it starts, one turn of the loop later: requests that arrive together by then
        go in one batch."""
        chunks = sum(-(-(len(r.texts) - r.sent) // self._chunk) for r in self._large)
        waiting = chunks + (1 if self._small else 0)
        while self._lanes < min(self._workers, self._lanes + waiting):
            self._lanes += 1
            waiting -= 1
            task = asyncio.get_running_loop().create_task(self._lane())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _lane(self) -> None:
        try:
            while (run := self._next()) is not None:
                await self._run(run)
        finally:
            self._lanes -= 1

    def _next(self) -> _Run | None:
        """The next batch: waiting small requests first (one batch of them at a time), else the
        next chunk of the oldest large request."""
        if self._small and not self._small_running:
            self._small_running = True
            batch = self._take_small()
            return _Run(batch, [text for request in batch for text in request.texts])
        while self._large:
            request = self._large[0]
            if request.done.done():  # its caller was cancelled, or a chunk failed: stop
                self._large.popleft()
                continue
            start = request.sent
            request.sent = min(len(request.texts), start + self._chunk)
            if request.sent == len(request.texts):
                self._large.popleft()  # every chunk is on its way
            return _Run([request], request.texts[start : request.sent], start, small=False)
        return None

    def _take_small(self) -> list[_Request]:
        """Waiting small requests, up to a chunk of texts (at least one request)."""
        batch = [self._small.popleft()]
        size = len(batch[0].texts)
        while self._small and size + len(self._small[0].texts) <= self._chunk:
            size += len(self._small[0].texts)
            batch.append(self._small.popleft())
        return batch  # a cancelled caller's texts are encoded anyway: cheaper than a check

    async def _run(self, run: _Run) -> None:
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(self._executor, self._encode, run.texts)
        except Exception as exc:  # the requests in this batch fail, the others go on
            _fail(run, exc)
        except BaseException:  # cancelled (the loop is closing): so are the batch's requests
            _fail(run, None)
            raise
        else:
            self._settle(run, rows)
        finally:
            if run.small:
                self._small_running = False

    def _settle(self, run: _Run, rows: Vectors) -> None:
        if not run.small:
            _fill(run.requests[0], run.start, rows)
            return
        offset = 0
        for request in run.requests:
            _fill(request, 0, rows[offset : offset + len(request.texts)])
            offset += len(request.texts)


def _fail(run: _Run, exc: Exception | None) -> None:
    for request in run.requests:
        if request.done.done():
            continue
        if exc is None:
            request.done.cancel()
        else:
            request.done.set_exception(exc)


def _fill(request: _Request, start: int, rows: Vectors) -> None:
    """Put a batch's vectors in their places; the request is done when it has them all."""
    if request.done.done():  # a caller that was cancelled no longer waits
        return
    request.rows[start : start + len(rows)] = rows
    request.filled += len(rows)
    if request.filled == len(request.texts):
        request.done.set_result(cast(Vectors, request.rows))
