"""The connection the table families use over PostgreSQL: a psycopg pool behind the surface of
SQLite's connection (`storage.relational`).

Why psycopg 3 (with psycopg_pool): it is async; its cursors are the DB-API model the table
families are written to (`execute`, `executemany`, `fetchone`, `fetchall`, `rowcount`), so they
run unchanged once `?` reads `%s`; its pool is maintained with it; and it speaks LISTEN/NOTIFY,
which replicas following one another's writes will need.

Reads take any pooled connection, so they never wait behind a write. Writes are serialised in
this process, as SQLite's are (one transaction at a time, group-committed), which keeps the
order of the index outbox the order of its commits. A write that fails for want of disk space
raises `StorageFull`; a database that cannot be reached raises `DatabaseUnavailable` and is
reported to the attached health as `database` until a query succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from storage.api import DatabaseUnavailable, HealthReporter
from storage.errors import SetupError, whole_number
from storage.postgres.locks import AdvisoryLocks, lock_key
from storage.postgres.schema import MIGRATIONS, migrate
from storage.postgres.url import redacted, without_secret
from storage.relational import Dialect, SQLConnection, Transaction
from storage.sqlite.migrations import Migration

log = logging.getLogger("memento.storage")

DATABASE_COMPONENT = "database"  # the name an unreachable database is reported under
# Job claims take turns across replicas under this lock (`Dialect.claim_turn`).
CLAIM_TURN_LOCK = lock_key("job claims")
POSTGRES = Dialect(
    name="postgresql",
    json_field_sql="({column}::jsonb ->> '{key}')",
    unindexed="",
    claim_lock=" FOR UPDATE SKIP LOCKED",
    claim_turn=f"SELECT pg_advisory_xact_lock({CLAIM_TURN_LOCK})",
    integrity_error=psycopg.IntegrityError,
)
_CONNECT_TIMEOUT_S = 10
# While the database is out of reach, statements fail at once for this long after a failed
# attempt, and the next attempt waits for a connection this long at most: a chat's memory steps
# (its request log, its queued exchange) each waited the pool's 10 s, so an outage made a call
# take 10-170 s instead of going on without memory.
_RETRY_AFTER_S = 1.0
_PROBE_TIMEOUT_S = 1.0
# The outbox: the lock that orders its entries by commit, and the channel new ones are told on.
OUTBOX_ORDER_LOCK = lock_key("outbox order")
OUTBOX_CHANNEL = "memento_outbox"
_OUTBOX_INSERT = re.compile(r"\s*INSERT\s+INTO\s+index_outbox\b", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def postgres_sql(sql: str) -> str:
    """A statement of the table families in psycopg's placeholders: `?` → `%s`, a literal `%`
    doubled (no statement holds a `?` inside a literal)."""
    return sql.replace("%", "%%").replace("?", "%s")


class DatabaseUnreachableError(SetupError):
    """The configured database cannot be reached or refuses the connection."""


class _Statement:
    """One statement in a transaction: awaited, its cursor; as a context manager, its cursor,
    closed at the end (aiosqlite's `execute`)."""

    def __init__(self, transaction: PostgresTransaction, sql: str, params: Any) -> None:
        self._transaction = transaction
        self._raw_sql = sql
        self._sql = postgres_sql(sql)
        self._params = list(params)
        self._cursor: psycopg.AsyncCursor[Any] | None = None

    async def _run(self) -> psycopg.AsyncCursor[Any]:
        await self._transaction.before(self._raw_sql)
        cursor = self._transaction.conn.cursor()
        await cursor.execute(self._sql, self._params)
        return cursor

    def __await__(self) -> Generator[Any, None, psycopg.AsyncCursor[Any]]:
        return self._run().__await__()

    async def __aenter__(self) -> psycopg.AsyncCursor[Any]:
        self._cursor = await self._run()
        return self._cursor

    async def __aexit__(self, *exc: Any) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class PostgresTransaction:
    """A write transaction on one pooled connection, as the table families use it.

    A transaction that adds index outbox entries first takes a transaction lock every replica
    takes for that (released at its commit), so the entries' sequence numbers are in the order
    their transactions commit in: a replica that has read the outbox up to a number then misses
    no entry below it that commits later. It also notifies `OUTBOX_CHANNEL` (delivered at the
    commit), which wakes the other replicas to follow the outbox at once.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self._outbox_ordered = False

    def execute(self, sql: str, parameters: Iterable[Any] = (), /) -> _Statement:
        return _Statement(self, sql, parameters)

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]], /) -> None:
        rows = [list(row) for row in parameters]
        if rows:
            await self.before(sql)
            async with self.conn.cursor() as cursor:
                await cursor.executemany(postgres_sql(sql), rows)

    async def before(self, sql: str) -> None:
        """What the transaction does before running `sql` (see the class)."""
        if self._outbox_ordered or not _OUTBOX_INSERT.match(sql):
            return
        self._outbox_ordered = True
        await self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (OUTBOX_ORDER_LOCK,))
        await self.conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")


class PostgresConnection(SQLConnection):
    """A pool of connections to one PostgreSQL database, with its write transactions."""

    dialect = POSTGRES

    def __init__(self, url: str, pool: AsyncConnectionPool[Any]) -> None:
        super().__init__()
        self._url = url
        self.description = f"postgresql: {redacted(url)}"
        self._pool = pool
        self._write_lock = asyncio.Lock()
        self._unreachable: str | None = None
        self._retry_at = 0.0  # monotonic: when an unreachable database is tried again
        self._locks = AdvisoryLocks(pool)

    @property
    def locks(self) -> AdvisoryLocks:
        return self._locks

    @classmethod
    async def open(
        cls, url: str, migrations: Sequence[Migration] = MIGRATIONS
    ) -> PostgresConnection:
        """Connect, apply the schema steps the database lacks, and open the pool
        (`MEMENTO_DATABASE_POOL_SIZE` connections at most, default 10)."""
        await migrate_database(url, migrations)
        size = max(1, whole_number("MEMENTO_DATABASE_POOL_SIZE", 10))
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=size,
            open=False,
            kwargs={"autocommit": True},
            timeout=_CONNECT_TIMEOUT_S,
            name="memento",
        )
        try:
            await pool.open(wait=True, timeout=_CONNECT_TIMEOUT_S)
        except PoolTimeout as exc:
            await pool.close()
            raise unreachable(url, exc) from None
        return cls(url, pool)

    async def close(self) -> None:
        await self._finish_writes()
        async with self._write_lock:
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One write transaction on a pooled connection: committed at the end of the block,
        rolled back if anything in it (the commit included) fails."""
        async with self._write_lock, self._reaching() as timeout:
            try:
                async with self._pool.connection(timeout) as conn, conn.transaction():
                    yield PostgresTransaction(conn)
            except pg_errors.DiskFull as exc:
                raise self._report_full(f"{self.description}: {exc}") from exc
            self._wrote()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of one query, on any pooled connection."""
        async with self._reaching() as timeout, self._pool.connection(timeout) as conn:
            cursor = await conn.execute(postgres_sql(sql), list(params))
            return list(await cursor.fetchall())

    async def forget_wal(self) -> None:
        """Nothing to do: PostgreSQL's own vacuum reclaims the old row versions."""

    async def watch_outbox(self, wake: Callable[[], None]) -> None:
        """LISTEN on `OUTBOX_CHANNEL` on a connection of its own, calling `wake` for every
        notification (and once on each (re)connection, for what came meanwhile); a lost
        connection is made again after a second."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S
                )
                async with conn:
                    await conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
                    wake()
                    async for _ in conn.notifies():
                        wake()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                detail = without_secret(f"{self.description}: {exc}", self._url)
                log.warning("listening for outbox entries failed (polling meanwhile): %s", detail)
            await asyncio.sleep(1.0)

    # -- a database out of reach ---------------------------------------------------------------

    def attach_health(self, health: HealthReporter) -> None:
        super().attach_health(health)
        if self._unreachable is not None:
            health.report(DATABASE_COMPONENT, self._unreachable)

    @contextlib.asynccontextmanager
    async def _reaching(self) -> AsyncIterator[float | None]:
        """Report the database as unreachable while its connections fail, and as back once a
        statement ran again; the error is `DatabaseUnavailable`, its message without secrets.
        Yields how long to wait for a pooled connection (None: the pool's own timeout). While
        unreachable, a statement fails at once until `_RETRY_AFTER_S` after the last attempt,
        and the next attempt waits `_PROBE_TIMEOUT_S` at most."""
        unreachable = self._unreachable
        if unreachable is not None and time.monotonic() < self._retry_at:
            raise DatabaseUnavailable(unreachable)
        try:
            yield None if unreachable is None else _PROBE_TIMEOUT_S
        except (PoolTimeout, psycopg.OperationalError) as exc:
            if not _out_of_reach(exc):
                raise
            message = without_secret(f"{self.description} cannot be reached: {exc}", self._url)
            self._unreachable = message
            self._retry_at = time.monotonic() + _RETRY_AFTER_S
            if self._health is not None:
                self._health.report(DATABASE_COMPONENT, message)
            raise DatabaseUnavailable(message) from None
        if self._unreachable is not None:
            self._unreachable = None
            if self._health is not None:
                self._health.clear(DATABASE_COMPONENT)


def _out_of_reach(exc: Exception) -> bool:
    """A connection that failed or was lost (no SQLSTATE, class 08, or the server shutting
    down), not a statement's own failure (a full disk, a cancelled query, a deadlock)."""
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith(("08", "57P"))


def unreachable(url: str, exc: BaseException) -> DatabaseUnreachableError:
    """The one-line refusal of a database that cannot be reached, without the password."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return DatabaseUnreachableError(
        without_secret(
            f"cannot reach the database at {redacted(url)} ({detail}); check "
            "MEMENTO_DATABASE_URL and that PostgreSQL is running",
            url,
        )
    )


async def migrate_database(url: str, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the schema steps the database at `url` lacks, under the migration lock; returns
    its schema version. `memento-proxy migrate`, and every store that opens, run this."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S
        )
    except (psycopg.Error, ValueError) as exc:
        raise unreachable(url, exc) from None
    async with conn:
        return await migrate(conn, redacted(url), migrations)


async def meta_and_memories(url: str, key: str) -> tuple[str | None, int]:
    """The `store_meta` value of `key` and the number of memories, in one short connection
    (the pre-flight reads which embedder made the memories before anything loads)."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=_CONNECT_TIMEOUT_S)
    except (psycopg.Error, ValueError) as exc:
        raise unreachable(url, exc) from None
    async with conn:
        query = "SELECT value FROM store_meta WHERE key = %s"
        row = await (await conn.execute(query, (key,))).fetchone()
        count = await (await conn.execute("SELECT count(*) FROM memories")).fetchone()
    return (str(row[0]) if row else None), int(count[0]) if count else 0
