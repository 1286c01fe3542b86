"""The read-your-writes ledger on its own: who waits for which jobs, and for how long."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from proxy.memory.pending import (
    ASK_QUEUE_S,
    NO_WAIT,
    PendingWrites,
    answer_key,
    answers_in,
)
from storage.records import Scope

ALICE = Scope("acme", "alice")
BOB = Scope("acme", "bob")


async def test_a_call_waits_for_its_users_earlier_jobs_only() -> None:
    pending = PendingWrites()
    pending.add(ALICE, 1)
    pending.add(BOB, 2)
    waiting = asyncio.create_task(pending.wait(ALICE, timeout_s=30))
    await asyncio.sleep(0)
    assert pending.awaited() == [1]  # the workers take alice's job next
    pending.add(ALICE, 3)  # queued after the call arrived: not waited for
    pending.finish(1)
    waited = await waiting
    assert (waited.pending, waited.unfinished, waited.timed_out) == (1, (), False)
    assert pending.awaited() == []
    assert (await pending.wait(BOB, timeout_s=0.01)).unfinished == (2,)


async def test_a_wait_that_runs_out_names_the_unfinished_jobs() -> None:
    pending = PendingWrites()
    pending.add(ALICE, 1)
    pending.add(ALICE, 2)
    pending.finish(1)
    waited = await pending.wait(ALICE, timeout_s=0.01)
    assert (waited.pending, waited.unfinished, waited.timed_out) == (1, (2,), True)


async def test_nothing_to_wait_for() -> None:
    pending = PendingWrites()
    pending.finish(7)  # a worker finished job 7 before the pipeline could note it
    pending.add(ALICE, 7)
    pending.add(Scope("acme", None), 8)  # anonymous calls have no one to read their writes
    assert (await pending.wait(ALICE, timeout_s=30)).pending == 0
    assert (await pending.wait(Scope("acme", None), timeout_s=30)).pending == 0


async def test_past_its_limit_the_oldest_job_is_let_go() -> None:
    pending = PendingWrites(limit=2)
    for job in (1, 2, 3):
        pending.add(ALICE, job)
    waited = await pending.wait(ALICE, timeout_s=0.01)
    assert waited.unfinished == (2, 3)


async def test_an_exchange_already_in_the_calls_context_is_not_waited_for() -> None:
    pending = PendingWrites()
    pending.add(ALICE, 1, answer_key("Pixel is a lovely name for a cat."))
    pending.add(ALICE, 2, answer_key("Lisbon has good tea."))
    pending.add(ALICE, 3)  # an answer without text (tool calls): always waited for
    history = [
        {"role": "user", "content": "My cat is called Pixel."},
        {"role": "assistant", "content": "  Pixel is a lovely name for a cat.\n"},
        {"role": "user", "content": "What should I feed him?"},
    ]
    waited = await pending.wait(ALICE, timeout_s=0.01, messages=history)
    assert (waited.pending, waited.unfinished) == (2, (2, 3))
    assert answers_in([{"role": "user", "content": "Lisbon has good tea."}]) == set()


class Queue:
    """The durable queue as the ledger asks it: which of these jobs are not finished."""

    def __init__(self, unfinished: set[int]) -> None:
        self.unfinished_jobs = unfinished
        self.asked = 0

    async def unfinished(self, job_ids: Sequence[int]) -> set[int]:
        self.asked += 1
        return self.unfinished_jobs & set(job_ids)


async def test_a_job_another_process_learned_ends_the_wait_at_the_next_question() -> None:
    # Serving processes share one queue: another's worker may learn this process's exchange,
    # and nothing signals this process. Its waiting call asks the queue every ASK_QUEUE_S.
    pending = PendingWrites()
    pending.add(ALICE, 1)
    queue = Queue({1})
    waiting = asyncio.create_task(pending.wait(ALICE, timeout_s=30, ask=queue.unfinished))
    await asyncio.sleep(ASK_QUEUE_S * 2.5)
    assert not waiting.done() and queue.asked >= 2
    queue.unfinished_jobs.clear()  # learned by the other process
    waited = await asyncio.wait_for(waiting, timeout=ASK_QUEUE_S * 5)
    assert (waited.pending, waited.unfinished) == (1, ())
    assert await pending.wait(ALICE, timeout_s=30, ask=queue.unfinished) == NO_WAIT


async def test_a_wait_shorter_than_the_question_interval_asks_once_at_its_end() -> None:
    pending = PendingWrites()
    pending.add(ALICE, 1)
    pending.add(ALICE, 2)
    queue = Queue({2})  # 1 was learned elsewhere
    waited = await pending.wait(ALICE, timeout_s=0.01, ask=queue.unfinished)
    assert (waited.pending, waited.unfinished, queue.asked) == (2, (2,), 1)
    assert (await pending.wait(ALICE, timeout_s=0.01)).pending == 1  # 1 is forgotten
