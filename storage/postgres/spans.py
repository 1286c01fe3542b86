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
    """`SpanWriter` on a blocking psycopg connection in autocommit mode."""

    def __init__(self, conn: psycopg.Connection[Any], url: str) -> None:
        self._conn = conn
        self._url = url

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Any:
        try:
            return self._conn.execute(postgres_sql(sql), list(params))
        except psycopg.OperationalError as exc:  # out of reach, out of space: wait
            raise SpanStoreUnavailable(without_secret(str(exc), self._url)) from exc

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any:
        try:
            with self._conn.cursor() as cursor:
                cursor.executemany(postgres_sql(sql), [list(row) for row in rows])
        except psycopg.OperationalError as exc:
            raise SpanStoreUnavailable(without_secret(str(exc), self._url)) from exc

    def begin(self) -> None:
        self.execute("BEGIN")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()


async def open_postgres_spans(url: str) -> SpanTable:
    """The span store in the database at `url` (migrated first, as every store opening it)."""
    await migrate_database(url)
    try:
        writer = psycopg.Connection.connect(url, autocommit=True)
    except (psycopg.Error, ValueError) as exc:
        raise unreachable(url, exc) from None
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}, name="spans"
    )
    await pool.open(wait=True)

    async def read(sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(postgres_sql(sql), list(params))
            return list(await cursor.fetchall())

    return SpanTable(
        read, _Writer(writer, url), POSTGRES_SPANS, close=pool.close, where=redacted(url)
    )
