"""Named locks held across every process sharing a store.

Some work must have one doer at a time among all the processes serving one store, not just
within one: applying the outbox to the shared index (`index`), rebuilding it (`reindex`), and
applying feedback, whose Q updates read a memory and write it back (`feedback`). The embedded
store's locks are `flock` locks on files in its data folder (`<name>.lock`): a lock goes with
the process that holds it, however that process ends, so a crash never leaves one held.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Protocol


class LockHeld(RuntimeError):
    """Another process holds the lock (`try_hold`)."""


class StoreLocks(Protocol):
    """Named locks across the processes of one store. Not reentrant; within one process, the
    caller serialises its own users of a name (an asyncio lock in front, say)."""

    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Wait for the lock (off the event loop) and hold it for the block."""
        ...

    def try_hold(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the lock for the block, or raise `LockHeld` at once if another holds it."""
        ...


class FileLocks:
    """`StoreLocks` as `flock` locks on `<folder>/<name>.lock`.

    `hold` keeps one open file per name and an asyncio lock in front of it, so this process's
    own holders take turns too (`flock` does not exclude a second holder of the same open
    file). `try_hold` opens the file afresh, so it also finds the lock held by this process.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: dict[str, tuple[asyncio.Lock, IO[str]]] = {}

    def path(self, name: str) -> Path:
        """The file whose lock is the lock `name`."""
        return self.folder / f"{name}.lock"

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        if name not in self._files:
            opened: IO[str] = await asyncio.to_thread(open, self.path(name), "a+")
            if name in self._files:  # another holder opened it meanwhile
                opened.close()
            else:
                self._files[name] = (asyncio.Lock(), opened)
        turn, handle = self._files[name]
        await turn.acquire()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process holds it: wait off the loop
            await _wait_for_flock(handle, turn)  # on cancellation it releases `turn` itself
        except BaseException:
            turn.release()
            raise
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            turn.release()

    @contextlib.asynccontextmanager
    async def try_hold(self, name: str) -> AsyncIterator[None]:
        handle = await asyncio.to_thread(open, self.path(name), "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockHeld(name) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()

    def close(self) -> None:
        for _, handle in self._files.values():
            handle.close()
        self._files.clear()


async def _wait_for_flock(handle: IO[str], turn: asyncio.Lock) -> None:
    """Take the lock on `handle` in a thread, `turn` (this process's holders' queue) held. A
    thread blocked in `flock` cannot be stopped: if the waiter is cancelled (a search's
    deadline, a shutdown), the thread still gets the lock later, and nobody would give it back
    while other processes wait for it. So the cancelled waiter leaves at once, and the lock is
    given back as soon as it is granted, `turn` released only then: this process's next holder
    cannot take a lock that is about to be given back under it."""
    granted = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX))
    try:
        await asyncio.shield(granted)
    except asyncio.CancelledError:

        def give_back(_: asyncio.Future[None]) -> None:
            with contextlib.suppress(OSError, ValueError):
                fcntl.flock(handle, fcntl.LOCK_UN)
            turn.release()

        granted.add_done_callback(give_back)
        raise
    except BaseException:
        turn.release()
        raise


@contextlib.asynccontextmanager
async def held_once(folder: Path, name: str) -> AsyncIterator[None]:
    """The lock `name` of `folder` held for the block, by a `FileLocks` of its own that is
    closed after: for work a process does once, such as setting a database file up."""
    locks = FileLocks(folder)
    try:
        async with locks.hold(name):
            yield
    finally:
        locks.close()
