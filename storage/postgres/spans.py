"""The span store in the store's PostgreSQL database (`storage.spans.SpanTable` over it), so
that `/v1/traces`, the trace pages and `memento-proxy trace` show every request, whichever
replica answered it.

Reads take a small pool's connections; the exporter's thread writes on a blocking connection of
its own. The table is a step of the database's schema (`storage.postgres.schema`), migrated
with the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from storage.postgres.connection import migrate_database, postgres_sql, unreachable
from storage.postgres.schema import SPAN_CLIENT_ID_SQL
from storage.postgres.url import redacted, without_secret
from storage.spans import SpanDialect, SpanStoreUnavailable, SpanTable

POSTGRES_SPANS = SpanDialect(SPAN_CLIENT_ID_SQL, "", "ctid")


class _Writer:
    """`SpanWriter` on a blocking psycopg connection in autocommit mode, made again when the
    database closed it (a restart, a failover): between batches, never inside one, so a batch
    whose connection broke fails whole and is written again later, not half."""

    def __init__(self, conn: psycopg.Connection[Any], url: str) -> None:
        self._conn = conn
        self._url = url
        self._in_batch = False

    def _connection(self) -> psycopg.Connection[Any]:
        if not (self._conn.closed or self._conn.broken):
            return self._conn
        if self._in_batch:
            raise SpanStoreUnavailable("the connection to the span store broke during a write")
        try:
            self._conn = psycopg.Connection.connect(self._url, autocommit=True)
        except psycopg.Error as exc:
            raise SpanStoreUnavailable(without_secret(str(exc), self._url)) from exc
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Any:
        try:
            return self._connection().execute(postgres_sql(sql), list(params))
        except psycopg.OperationalError as exc:  # out of reach, out of space: wait
            raise SpanStoreUnavailable(without_secret(str(exc), self._url)) from exc

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any:
        try:
            with self._connection().cursor() as cursor:
                cursor.executemany(postgres_sql(sql), [list(row) for row in rows])
        except psycopg.OperationalError as exc:
            raise SpanStoreUnavailable(without_secret(str(exc), self._url)) from exc

    def begin(self) -> None:
        self.execute("BEGIN")
        self._in_batch = True

    def commit(self) -> None:
        self.execute("COMMIT")
        self._in_batch = False

    def rollback(self) -> None:
        self._in_batch = False
        conn = self._conn
        if conn.closed or conn.broken:
            return  # the database ended the transaction with the connection
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()


async def open_postgres_spans(url: str) -> SpanTable:
    """The span store in the database at `url` (migrated first, as every store opening it)."""
    await migrate_database(url)
    try:
        writer = psycopg.Connection.connect(url, autocommit=True)
    except (psycopg.Error, ValueError) as exc:
        raise unreachable(url, exc) from None
    # Connections are checked when taken: trace reads are few, and after a database restart
    # the first one would otherwise meet a connection the server closed.
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=4,
        open=False,
        kwargs={"autocommit": True},
        check=AsyncConnectionPool.check_connection,
        name="spans",
    )
    await pool.open(wait=True)

    async def read(sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(postgres_sql(sql), list(params))
            return list(await cursor.fetchall())

    return SpanTable(
        read, _Writer(writer, url), POSTGRES_SPANS, close=pool.close, where=redacted(url)
    )
