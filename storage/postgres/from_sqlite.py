"""Moving an embedded deployment's source of truth into PostgreSQL (`memento-proxy
migrate-from-sqlite`).

Every row of the data folder's SQLite database is copied into an empty PostgreSQL database of
this release's schema, table by table with COPY, ids, times, vectors and counters as they are;
identity sequences continue after the highest id copied. What is derived is not copied: the
index outbox and the index's bookkeeping in `store_meta` (the index is rebuilt afterwards from
PostgreSQL, where MEMENTO_INDEX_URI says, by the caller). Then each table is counted on both
sides; a difference is an error. The SQLite file is only read.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from storage.errors import SetupError
from storage.postgres.connection import migrate_database, unreachable
from storage.postgres.url import without_secret

# In the order they are copied (none refers to another by a foreign key, but memories first
# reads best). `memory_versions` has no key of its own: SQLite's rowid keeps the edits' order.
TABLES: dict[str, str] = {
    "memories": "",
    "memory_versions": "rowid",
    "audit": "",
    "requests": "",
    "feedback": "",
    "responses": "",
    "jobs": "",
    "store_meta": "",
}
# Identity columns whose sequence continues after the copied rows.
_IDENTITIES = {"memory_versions": "rowid", "audit": "id", "jobs": "id"}
# store_meta keys about the index this folder had, not the truth: the new index starts afresh.
_INDEX_KEYS = (
    "index_generation",
    "index_build_from",
    "index_applied_seq",
    "outbox_pruned_seq",
    "index_location",
    "write_probe",
)
_BATCH = 2_000


class MigrationRefused(SetupError):
    """The copy cannot be made (the target holds data already, or the counts differ)."""


async def copy_from_sqlite(database: Path, url: str) -> dict[str, tuple[int, int]]:
    """Copy the SQLite database at `database` into the PostgreSQL database at `url` (migrated
    to this release's schema first, and refused unless empty); returns, per table, its rows in
    SQLite and in PostgreSQL afterwards."""
    await migrate_database(url)
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=False)
    except (psycopg.Error, ValueError) as exc:
        raise unreachable(url, exc) from None
    async with conn:
        try:
            await _refuse_unless_empty(conn)
            with _read_only(database) as source:
                for table, extra in TABLES.items():
                    await _copy_table(source, conn, table, extra)
                for table, column in _IDENTITIES.items():
                    await conn.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                        f"COALESCE((SELECT max({column}) FROM {table}), 0) + 1, false)"
                    )
                await conn.commit()
                counts = {table: (_count(source, table), 0) for table in TABLES}
        except psycopg.Error as exc:
            message = without_secret(f"copying into the database failed: {exc}", url)
            raise MigrationRefused(message) from None
        for table in TABLES:
            cursor = await conn.execute(f"SELECT count(*) FROM {table}")
            row = await cursor.fetchone()
            counts[table] = (counts[table][0], int(row[0]) if row else 0)
        await conn.rollback()
    return counts


async def _refuse_unless_empty(conn: psycopg.AsyncConnection[Any]) -> None:
    for table in ("memories", "requests", "jobs", "audit"):
        cursor = await conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})")
        row = await cursor.fetchone()
        if row and row[0]:
            raise MigrationRefused(
                f"the target database already holds data (its {table} table is not empty); "
                "migrate into a new, empty database"
            )


@contextlib.contextmanager
def _read_only(database: Path) -> Iterator[sqlite3.Connection]:
    source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        yield source
    finally:
        source.close()


def _columns(source: sqlite3.Connection, table: str, extra: str) -> list[str]:
    names = [row[1] for row in source.execute(f"PRAGMA table_info({table})")]
    return ([extra] if extra else []) + names


async def _copy_table(
    source: sqlite3.Connection, conn: psycopg.AsyncConnection[Any], table: str, extra: str
) -> None:
    columns = _columns(source, table, extra)
    cursor = await conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
    )
    target = {str(row[0]) for row in await cursor.fetchall()}
    unknown = [column for column in columns if column not in target]
    if unknown:
        raise MigrationRefused(
            f"{table} has columns PostgreSQL's schema lacks ({', '.join(unknown)}): the data "
            "folder was written by a newer memento-proxy; migrate with that release"
        )
    where, params = _copied(table)
    rows = source.execute(f"SELECT {', '.join(columns)} FROM {table}{where}", params)
    listed = ", ".join(columns)
    async with conn.cursor() as cursor, cursor.copy(f"COPY {table} ({listed}) FROM STDIN") as copy:
        while batch := rows.fetchmany(_BATCH):
            for row in batch:
                await copy.write_row(row)


def _copied(table: str) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause (and its parameters) of a table's rows that are copied: all of them,
    but the index's bookkeeping in `store_meta`."""
    if table != "store_meta":
        return "", ()
    return f" WHERE key NOT IN ({', '.join('?' for _ in _INDEX_KEYS)})", _INDEX_KEYS


def _count(source: sqlite3.Connection, table: str) -> int:
    where, params = _copied(table)
    return int(source.execute(f"SELECT count(*) FROM {table}{where}", params).fetchone()[0])
