"""The processes of one data folder wake each other after outbox commits
(`storage.sqlite.signals`); each `OutboxSignals` here stands for one process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from storage.sqlite.signals import LISTENERS, OutboxSignals


async def test_every_other_listener_is_woken_and_the_gone_ones_forgotten(tmp_path: Path) -> None:
    first, second, third = (OutboxSignals(tmp_path) for _ in range(3))
    woken = {"first": asyncio.Event(), "second": asyncio.Event()}
    listening = [
        asyncio.create_task(first.listen(woken["first"].set)),
        asyncio.create_task(second.listen(woken["second"].set)),
    ]
    try:
        while len(list(tmp_path.glob(f"{LISTENERS}/*"))) < 2:  # both listen
            await asyncio.sleep(0.01)
        (tmp_path / LISTENERS / "4242-gone").touch()  # a process that ended without cleaning up

        first.announce()

        await asyncio.wait_for(woken["second"].wait(), timeout=10)
        assert not woken["first"].is_set()  # not itself
        assert not (tmp_path / LISTENERS / "4242-gone").exists()
        third.announce()  # one that does not listen still wakes those who do
        await asyncio.wait_for(woken["first"].wait(), timeout=10)
    finally:
        for task in listening:
            task.cancel()
        await asyncio.gather(*listening, return_exceptions=True)
        for signals in (first, second, third):
            signals.close()
    assert list((tmp_path / LISTENERS).iterdir()) == []  # each took its marker away


async def test_announcing_before_anyone_listens_is_harmless(tmp_path: Path) -> None:
    signals = OutboxSignals(tmp_path)
    signals.announce()
    signals.close()
