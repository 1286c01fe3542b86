"""The embedded store's `flock` locks: a waiter cancelled while another process holds the lock
(a search's deadline, a shutdown) does not leave the lock taken behind it. Each `FileLocks`
below opens its own file, so to `flock` they are as three processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage.locks import FileLocks


async def test_a_cancelled_wait_gives_the_lock_back_once_granted(tmp_path: Path) -> None:
    first, cancelled, third = FileLocks(tmp_path), FileLocks(tmp_path), FileLocks(tmp_path)
    entered = asyncio.Event()

    async def wait_for_it() -> None:
        async with cancelled.hold("index"):
            entered.set()

    try:
        async with first.hold("index"):
            waiter = asyncio.ensure_future(wait_for_it())
            await asyncio.sleep(0.2)  # blocked in its thread, behind `first`
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        # `first` let go: the cancelled waiter's thread is granted the lock, and gives it back.
        async with asyncio.timeout(10), third.hold("index"):
            pass
        async with asyncio.timeout(10), cancelled.hold("index"):  # its own next turn too
            pass
        assert not entered.is_set()
    finally:  # closing the files drops any lock left behind, so a failure cannot hang
        for locks in (first, cancelled, third):
            locks.close()
