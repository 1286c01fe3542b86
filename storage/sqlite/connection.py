"""The connection pair every table family of the SQLite database shares, and its transactions.

One writer connection (writes are serialised by an asyncio lock, each write one transaction) and
one reader connection, so reads on the request path never wait behind a write. The small writes
every chat call makes (its request log and its queued exchange) are group-committed: those that
arrive while a transaction is running share the next one, so under load a thousand calls cost a
few fsyncs, not a thousand, and each caller still returns only once its own write is durable.

A write that fails for want of disk space raises `StorageFull` and is reported to the attached
health until a write succeeds again (a probe keeps trying, so recovery needs no client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from storage.api import HealthReporter, StorageFull
from storage.sqlite.migrations import MIGRATIONS, Migration, migrate

log = logging.getLogger("memento.storage")

STORAGE_COMPONENT = "storage"  # the name a full disk is reported under

META_UPSERT = (
    "INSERT INTO store_meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)

GroupedWrite = Callable[[aiosqlite.Connection], Awaitable[Any]]


class Connection:
    """The writer and reader connections of one database file, with its write transactions."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._group: list[tuple[GroupedWrite, asyncio.Future[Any]]] = []
        self._group_task: asyncio.Task[None] | None = None
        self._health: HealthReporter | None = None
        self._full: str | None = None  # why the last write failed for want of space
        self._probe: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[Migration] = MIGRATIONS) -> Connection:
        """Open (creating and migrating) the database file at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(path, isolation_level=None)
        try:
            await writer.execute("PRAGMA journal_mode = WAL")
            # FULL: an acknowledged write survives a power cut, not only a process crash.
            await writer.execute("PRAGMA synchronous = FULL")
            # Deleted content is overwritten on disk, not left in free pages.
            await writer.execute("PRAGMA secure_delete = ON")
            await writer.execute("PRAGMA busy_timeout = 5000")
            await migrate(writer, path, migrations)
        except BaseException:
            await writer.close()
            raise
        reader = await aiosqlite.connect(path, isolation_level=None)
        await reader.execute("PRAGMA busy_timeout = 5000")
        await reader.execute("PRAGMA query_only = ON")
        return cls(path, writer, reader)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._group_task is not None:
            await asyncio.shield(self._group_task)
        async with self._write_lock:
            await self._reader.close()
            await self._writer.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction. Anything that fails, the COMMIT included (a full disk fails
        there), rolls it back, so the connection is ready for the next write."""
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield self._writer
                    await self._writer.execute("COMMIT")
                except BaseException:
                    if self._writer.in_transaction:
                        await self._writer.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL:
                    self._report_full(f"{self.path}: {exc}")
                    raise StorageFull(f"{self.path}: {exc}") from exc
                raise
            if self._full is not None:
                self._clear_full()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of one query on the reader connection (never behind a write)."""
        async with self._reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def forget_wal(self) -> None:
        """Checkpoint and truncate the WAL so erased content leaves the disk now.

        secure_delete zeroes freed space in the database file, but the WAL still holds the old
        page images until a checkpoint. A busy reader can delay the truncation; the next
        erasure or the automatic checkpoint completes it.
        """
        async with self._write_lock:
            await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- metadata ----------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        rows = await self.fetchall("SELECT value FROM store_meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self.transaction() as db:
            await db.execute(META_UPSERT, (key, value))

    # -- a full disk ---------------------------------------------------------------------------

    def attach_health(self, health: HealthReporter) -> None:
        """Report a full disk (and its end) to `health` from now on."""
        self._health = health
        if self._full is not None:
            health.report(STORAGE_COMPONENT, self._full)

    def _report_full(self, reason: str) -> None:
        if self._full is None:
            log.error("the database refuses writes: %s", reason)
        self._full = f"writes fail, the disk is full ({reason})"
        if self._health is not None:
            self._health.report(STORAGE_COMPONENT, self._full)
        if self._probe is None or self._probe.done():
            # Nothing may write for a while: probe, so recovery does not wait for a client.
            self._probe = asyncio.create_task(self._probe_until_writable(), name="sqlite-probe")

    def _clear_full(self) -> None:
        self._full = None
        log.warning("the database accepts writes again")
        if self._health is not None:
            self._health.clear(STORAGE_COMPONENT)

    async def _probe_until_writable(self, interval_s: float = 1.0) -> None:
        while self._full is not None:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(StorageFull):
                await self.set_meta("write_probe", str(time.time()))

    # -- group commit --------------------------------------------------------------------------

    async def grouped(self, write: GroupedWrite) -> Any:
        """Run `write` in the next group commit; return its result once that commit is durable.

        A write that fails raises for its caller alone (the group is rolled back and the others
        committed one by one); a commit that fails (a full disk) raises for every write in it.
        Cancelling the caller does not cancel the write: it was accepted, so it is committed.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._group.append((write, future))
        if self._group_task is None:
            self._group_task = asyncio.create_task(self._commit_groups(), name="sqlite-group")
        return await asyncio.shield(future)

    async def _commit_groups(self) -> None:
        try:
            while self._group:
                group, self._group = self._group, []
                try:
                    async with self.transaction() as db:
                        results = [await write(db) for write, _ in group]
                except StorageFull as exc:
                    for _, future in group:
                        future.set_exception(exc)
                    continue
                except Exception:
                    # One write failed (a duplicate, say): give each its own transaction, so
                    # the others are kept and only that caller hears of it.
                    for write, future in group:
                        await self._commit_alone(write, future)
                    continue
                for value, (_, future) in zip(results, group, strict=True):
                    future.set_result(value)
        finally:
            self._group_task = None

    async def _commit_alone(self, write: GroupedWrite, future: asyncio.Future[Any]) -> None:
        try:
            async with self.transaction() as db:
                value = await write(db)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(value)
