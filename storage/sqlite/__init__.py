"""The source of truth: memories, their edit history, audit, requests, feedback, the write
queue and the index outbox; in SQLite (through aiosqlite in WAL mode) unless the process is
given a PostgreSQL database (`storage.postgres`).

One small class per table family, written once for both engines (`storage.relational`):
`memories` (+ audit and imports), `requests` (+ feedback), `responses` (the Responses API's
stored answers), `queue` (jobs) and `outbox` (the index outbox, the index generation and the
records' vectors as the index reads them). Over SQLite they share one file and one connection
pair (`connection.Connection`: a writer whose writes are serialised and group-committed, and a
reader); the SQLite schema is the list of named steps in `migrations`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from storage.api import HealthReporter
from storage.relational import SQLConnection
from storage.sqlite.connection import Connection
from storage.sqlite.memories import MemoryRows
from storage.sqlite.migrations import MIGRATIONS, Migration
from storage.sqlite.outbox import IndexOutbox
from storage.sqlite.queue import SQLiteJobQueue
from storage.sqlite.requests import SQLiteRequestStore
from storage.sqlite.responses import SQLiteResponseStore

__all__ = ["Database"]


class Database:
    """The relational half of the store: its table families over one connection (SQLite's or
    PostgreSQL's).

    `memories` here are the rows alone; the store's `memories` (`storage.memories.Memories`)
    are the same rows kept in the index. A write through either adds its outbox entries in its
    own transaction, so the index catches up with it either way.
    """

    def __init__(self, connection: SQLConnection, *, lease_s: float) -> None:
        self.connection = connection
        self.memories = MemoryRows(connection)
        self.requests = SQLiteRequestStore(connection)
        self.responses = SQLiteResponseStore(connection)
        self.queue = SQLiteJobQueue(connection, lease_s=lease_s)
        self.outbox = IndexOutbox(connection)

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        lease_s: float = 120.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> Database:
        """Open (creating and migrating) the SQLite database file at `path`.

        `migrations` exists for tests that build an older schema; callers use the default.
        """
        return cls(await Connection.open(path, migrations), lease_s=lease_s)

    def attach_health(self, health: HealthReporter) -> None:
        """Report a full disk (and its end) to `health` from now on."""
        self.connection.attach_health(health)

    async def close(self) -> None:
        await self.connection.close()
