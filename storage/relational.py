"""What the table families of the source of truth need of a database, whichever engine holds it.

The table families (`storage/sqlite/`: memories, audit, requests, responses, queue, outbox) are
written once, in SQL both engines accept, against the surface defined here: a connection with
write transactions (`transaction`), reads (`fetchall`), group commit (`grouped`) and the store's
metadata; a transaction that executes statements the way aiosqlite does (`execute` is awaitable
and an async context manager, its cursor has `fetchone`, `fetchall`, `rowcount`); and a small
`Dialect` for the few places where one statement cannot read the same in both. SQLite's
connection is `storage.sqlite.connection`, PostgreSQL's `storage.postgres.connection`.

A write that fails for want of disk space raises `StorageFull` and is reported to the attached
health until a write succeeds again (a probe keeps trying, so recovery needs no client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from storage.api import HealthReporter, StorageFull
from storage.locks import StoreLocks

log = logging.getLogger("memento.storage")

STORAGE_COMPONENT = "storage"  # the name a full disk is reported under

META_UPSERT = (
    "INSERT INTO store_meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
META_INSERT = "INSERT INTO store_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"


class Cursor(Protocol):
    """The rows of one executed statement."""

    @property
    def rowcount(self) -> int: ...

    async def fetchone(self) -> Any: ...

    async def fetchall(self) -> Iterable[Any]: ...


class Statement(Protocol):
    """An executed statement: awaited it is its cursor; as a context manager too."""

    def __await__(self) -> Generator[Any, None, Cursor]: ...

    async def __aenter__(self) -> Cursor: ...

    async def __aexit__(self, *exc: Any) -> Any: ...


class Transaction(Protocol):
    """One write transaction as the table families use it (aiosqlite's connection surface)."""

    def execute(self, sql: str, parameters: Iterable[Any] = ..., /) -> Statement: ...

    def executemany(self, sql: str, parameters: Iterable[Iterable[Any]], /) -> Awaitable[Any]: ...


GroupedWrite = Callable[[Transaction], Awaitable[Any]]


@dataclass(frozen=True)
class Dialect:
    """Where one statement cannot read the same in SQLite and PostgreSQL: each engine's words.

    `unindexed` prefixes a column whose index the planner must not pick: SQLite's `+`, so a
    look-up of ids by primary key does not walk the whole tenant through the (tenant_id, …)
    index instead (12 ms at 10k rows); PostgreSQL has no such hint (`+` on text is an error)
    and its planner needs none. `claim_lock` ends the row selection of a job
    claim: nothing in SQLite (one writer at a time), `FOR UPDATE SKIP LOCKED` in PostgreSQL, so
    concurrent claimers take different jobs without waiting for each other. `claim_turn` begins
    a claim's transaction, so that claims take turns across processes and each sees the ones
    before it (a user's jobs run one at a time): nothing in SQLite, whose write transactions
    (`BEGIN IMMEDIATE`) already take turns and read the file as the last one left it; in
    PostgreSQL a transaction advisory lock, released at the commit, after which the claim's
    statement takes its snapshot (READ COMMITTED).
    """

    name: str
    json_field_sql: str  # a JSON text column's top-level field as text: {column}, {key}
    unindexed: str
    claim_lock: str
    claim_turn: str
    integrity_error: type[Exception] | tuple[type[Exception], ...]

    def json_field(self, column: str, key: str) -> str:
        return self.json_field_sql.format(column=column, key=key)


class SQLConnection:
    """What both engines' connections share: group commit, the store's metadata, and the
    reporting of a full disk. Subclasses provide `transaction`, `fetchall`, `close`,
    `forget_wal` and their `dialect`."""

    dialect: Dialect
    description: str  # where the data is, as people read it (never a password)

    def __init__(self) -> None:
        self._group: list[tuple[GroupedWrite, asyncio.Future[Any]]] = []
        self._group_task: asyncio.Task[None] | None = None
        self._health: HealthReporter | None = None
        self._full: str | None = None  # why the last write failed for want of space
        self._probe: asyncio.Task[None] | None = None

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of one query, never waiting behind a write."""
        raise NotImplementedError

    async def fetch_bulk(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of a large read (thousands of rows), which the hot path's reads must not queue
        behind: `fetchall` where reads run side by side anyway."""
        return await self.fetchall(sql, params)

    async def forget_wal(self) -> None:
        """Have erased content leave the disk now, where the engine keeps old page images."""
        raise NotImplementedError

    async def watch_outbox(self, wake: Callable[[], None]) -> None:
        """Call `wake` whenever some process adds index outbox entries, for as long as this
        runs. An engine that cannot tell returns at once: its readers poll."""

    def announce_outbox(self) -> None:
        """After a commit that added outbox entries: tell the other processes' `watch_outbox`,
        where the commit itself does not (PostgreSQL's NOTIFY does)."""

    @property
    def locks(self) -> StoreLocks:
        """The store's named locks, held across every process using this database."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _finish_writes(self) -> None:
        """Stop probing and wait for the group commit in progress (the start of `close`)."""
        if self._probe is not None:
            self._probe.cancel()
        if self._group_task is not None:
            await asyncio.shield(self._group_task)

    # -- metadata ----------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        rows = await self.fetchall("SELECT value FROM store_meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self.transaction() as db:
            await db.execute(META_UPSERT, (key, value))

    async def delete_meta(self, key: str) -> None:
        async with self.transaction() as db:
            await db.execute("DELETE FROM store_meta WHERE key = ?", (key,))

    # -- a full disk ---------------------------------------------------------------------------

    def attach_health(self, health: HealthReporter) -> None:
        """Report a full disk (and its end) to `health` from now on."""
        self._health = health
        if self._full is not None:
            health.report(STORAGE_COMPONENT, self._full)

    def _report_full(self, reason: str) -> StorageFull:
        """Report a write refused for want of space; the error to raise for it."""
        if self._full is None:
            log.error("the database refuses writes: %s", reason)
        self._full = f"writes fail, the disk is full ({reason})"
        if self._health is not None:
            self._health.report(STORAGE_COMPONENT, self._full)
        if self._probe is None or self._probe.done():
            # Nothing may write for a while: probe, so recovery does not wait for a client.
            self._probe = asyncio.create_task(self._probe_until_writable(), name="storage-probe")
        return StorageFull(reason)

    def _wrote(self) -> None:
        """A write succeeded: a full disk reported earlier is over."""
        if self._full is None:
            return
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

        The small writes every chat call makes (its request log and its queued exchange) that
        arrive while a transaction is running share the next one, so under load a thousand
        calls cost a few commits, not a thousand. A write that fails raises for its caller alone
        (the group is rolled back and the others committed one by one); a commit that fails (a
        full disk) raises for every write in it. Cancelling the caller does not cancel the
        write: it was accepted, so it is committed.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._group.append((write, future))
        if self._group_task is None:
            self._group_task = asyncio.create_task(self._commit_groups(), name="storage-group")
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
