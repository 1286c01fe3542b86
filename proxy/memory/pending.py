"""Read your writes: a user's next call sees what their previous call taught.

An exchange is queued durably before its answer completes, and a worker learns from it afterwards
(`worker.py`). A client that sends its next turn at once would be retrieved for before that
learning is done. So this process remembers, per (tenant, user), the exchange jobs it queued that
its workers have not finished; before retrieval a call waits for the ones queued before it
arrived (not later ones, never another user's), up to `memory.retrieval.wait_for_writes_ms`, then
retrieves whatever is there. A job somebody waits for is claimed ahead of the rest of the queue,
so a user does not wait behind every other user's exchanges.

A job is finished when a worker's attempt at it ends: learned, or failed (a retry comes seconds
later, too late to wait for). Jobs another process queued are added from the queue by the
read path when other processes share it (`ReadPath.shared_queue`); a job that another process's
worker took is found out by asking the queue every `ASK_QUEUE_S` while a call waits for it.
At most `limit` jobs are remembered: past it the oldest is let go (its waiters go on).

A call whose messages already hold an earlier exchange's answer (a chat app or an agent loop
sends the conversation so far with every turn) has that exchange in its context: what it taught
would add nothing the model does not see, so that job is not waited for. The wait is for the
calls that start afresh, a new conversation or a client that sends only its latest turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from storage.records import Scope

log = logging.getLogger("memento.memory")

UserKey = tuple[str, str]  # (tenant, user)
# Which of these jobs are not finished: the queue's answer, whoever's workers took them.
AskQueue = Callable[[Sequence[int]], Awaitable[set[int]]]
# While a call waits, how often it asks the queue about jobs another process's workers took.
ASK_QUEUE_S = 0.1


@dataclass(frozen=True)
class WriteWait:
    """What a call waited for before retrieval."""

    pending: int  # the user's exchanges queued earlier and not yet learned when the call came
    unfinished: tuple[int, ...]  # the jobs of those still not finished when the wait ended
    waited_ms: float

    @property
    def timed_out(self) -> bool:
        return bool(self.unfinished)


NO_WAIT = WriteWait(pending=0, unfinished=(), waited_ms=0.0)


def answer_key(text: Any) -> str | None:
    """What identifies an exchange by its answer, or None for an answer without text."""
    if not isinstance(text, str) or not text.strip():
        return None
    return hashlib.blake2b(text.strip().encode("utf-8"), digest_size=16).hexdigest()


def answers_in(messages: Iterable[Any]) -> set[str]:
    """The keys of the assistant answers a request's messages carry (its context)."""
    keys = set()
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "assistant":
            key = answer_key(message.get("content"))
            if key is not None:
                keys.add(key)
    return keys


_REMEMBERED_EARLY = 1024


class PendingWrites:
    """Exchange jobs queued by this process and not finished by its workers, by user."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._done: dict[int, asyncio.Event] = {}
        self._owner: dict[int, UserKey] = {}
        self._answer: dict[int, str] = {}  # job -> its exchange's `answer_key`
        self._by_user: dict[UserKey, set[int]] = {}
        self._awaited: Counter[int] = Counter()
        # Jobs finished before `add` saw them (a worker can be that quick): never add those.
        self._finished_early: deque[int] = deque(maxlen=_REMEMBERED_EARLY)

    def add(self, scope: Scope, job_id: int, answer: str | None = None) -> None:
        """Job `job_id` holds an exchange of `scope`'s user (anonymous calls have none) whose
        answer has `answer_key` `answer`."""
        if scope.user_id is None:
            return
        if job_id in self._finished_early or job_id in self._done:
            return  # finished already, or known (read from the queue, then queued here)
        key = (scope.tenant_id, scope.user_id)
        self._done[job_id] = asyncio.Event()
        self._owner[job_id] = key
        if answer is not None:
            self._answer[job_id] = answer
        self._by_user.setdefault(key, set()).add(job_id)
        if len(self._done) > self.limit:  # e.g. jobs another process's workers took
            self.finish(next(iter(self._done)))

    def finish(self, job_id: int) -> None:
        """A worker's attempt at `job_id` ended: release whoever waits for it."""
        done = self._done.pop(job_id, None)
        if done is None:
            self._finished_early.append(job_id)
            return
        done.set()
        self._answer.pop(job_id, None)
        key = self._owner.pop(job_id)
        jobs = self._by_user[key]
        jobs.discard(job_id)
        if not jobs:
            del self._by_user[key]

    async def _until_finished(
        self, jobs: list[int], events: list[asyncio.Event], ask: AskQueue | None
    ) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if ask is None else ASK_QUEUE_S):
                    for event in events:
                        await event.wait()
                    return
            assert ask is not None
            await self._settle(_open(jobs, events), ask)

    async def _settle(self, jobs: list[int], ask: AskQueue) -> None:
        """Finish those of `jobs` the queue says are finished."""
        try:
            still = await ask(jobs)
        except Exception:  # the store is busy or down: the workers' signals still come
            log.exception("could not look up the state of jobs %s", jobs)
            return
        for job in set(jobs) - still:
            self.finish(job)

    def awaited(self) -> list[int]:
        """Jobs some call is waiting for, oldest first: the workers take these next."""
        return sorted(self._awaited)

    async def wait(
        self,
        scope: Scope,
        timeout_s: float,
        messages: Iterable[Any] = (),
        ask: AskQueue | None = None,
    ) -> WriteWait:
        """Wait until the user's jobs queued so far are finished, at most `timeout_s`; not for
        those whose answer the call's `messages` carry (`answers_in`). With `ask` (the queue's
        `unfinished`), the queue is asked every `ASK_QUEUE_S` meanwhile, for the jobs another
        process's workers finished."""
        if scope.user_id is None:
            return NO_WAIT
        queued = self._by_user.get((scope.tenant_id, scope.user_id))
        if not queued:
            return NO_WAIT  # the usual case: nothing to wait for, and no history to read
        in_context = answers_in(messages)
        jobs = sorted(job for job in queued if self._answer.get(job) not in in_context)
        if not jobs:
            return NO_WAIT
        events = [self._done[job] for job in jobs]
        started = time.perf_counter()
        self._awaited.update(jobs)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._until_finished(jobs, events, ask)
        finally:
            for job in jobs:
                self._awaited[job] -= 1
                if self._awaited[job] <= 0:
                    del self._awaited[job]
        still_open = _open(jobs, events)
        if ask is not None and still_open:
            await self._settle(still_open, ask)  # a wait shorter than ASK_QUEUE_S
        return WriteWait(
            pending=len(jobs),
            unfinished=tuple(_open(jobs, events)),
            waited_ms=round((time.perf_counter() - started) * 1000, 1),
        )


def _open(jobs: list[int], events: list[asyncio.Event]) -> list[int]:
    return [job for job, event in zip(jobs, events, strict=True) if not event.is_set()]
