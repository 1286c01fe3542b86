"""A write cancelled in the middle of a statement leaves the connection ready for the next one.

aiosqlite runs each statement in its own thread whatever happens to the coroutine awaiting it,
so a cancellation (a request's deadline, shutdown stopping a task) can land after a BEGIN or a
COMMIT has run but before the coroutine hears of it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage.sqlite.connection import Connection


async def _cancel_after(steps: int, coroutine: object) -> None:
    task = asyncio.ensure_future(coroutine)  # type: ignore[arg-type]
    for _ in range(steps):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6, 8])
async def test_a_write_cancelled_at_any_point_leaves_no_transaction_open(
    tmp_path: Path, steps: int
) -> None:
    connection = await Connection.open(tmp_path / "db.sqlite")
    try:
        async with connection.transaction() as db:
            await db.execute("CREATE TABLE notes (text TEXT)")

        async def write(text: str) -> None:
            async with connection.transaction() as db:
                await db.execute("INSERT INTO notes VALUES (?)", (text,))

        await _cancel_after(steps, write("maybe"))
        await write("next")  # before the fix: cannot start a transaction within a transaction
        rows = await connection.fetchall("SELECT text FROM notes")
        assert ("next",) in [tuple(row) for row in rows]
        assert len(rows) in (1, 2)  # the cancelled write either committed whole or not at all
    finally:
        await connection.close()
