"""The request log and feedback: which memories each call used, and the rewards it received.

Implements `RequestStore`. A call's log entry is group-committed with the other small writes of
concurrent calls (`Connection.grouped`), so logging costs no fsync of its own under load.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from storage.records import RequestLog
from storage.relational import SQLConnection, Transaction
from storage.sqlite.rows import (
    REQUEST_COLUMN_NAMES,
    REQUEST_COLUMNS,
    dumps,
    placeholders,
    request_from_row,
    request_values,
)


class DuplicateRequestError(ValueError):
    """A request id already logged for the tenant: one call's log is never merged into
    another's, so a second entry under the same id is refused."""


class SQLiteRequestStore:
    """The `requests` and `feedback` tables."""

    _SETTABLE = frozenset(
        {
            "user_id",
            "session_id",
            "trace_id",
            "model",
            "injected",
            "written_case_id",
            "reward",
            "status",
        }
    )

    def __init__(self, connection: SQLConnection) -> None:
        self._connection = connection

    async def log_request(self, entry: RequestLog) -> None:
        """Log one call. Raises DuplicateRequestError when the tenant already has a request
        with this id: the entry belongs to another call, and merging them would let one
        call's feedback move the memories of the other."""
        try:
            await self._connection.grouped(partial(_insert_request, entry))
        except self._connection.dialect.integrity_error as exc:
            raise DuplicateRequestError(
                f"request {entry.request_id!r} of tenant {entry.tenant_id!r} is already logged; "
                "request ids must be unique per tenant"
            ) from exc

    async def get_request(self, tenant_id: str, request_id: str) -> RequestLog | None:
        rows = await self._connection.fetchall(
            f"SELECT {REQUEST_COLUMNS} FROM requests WHERE tenant_id = ? AND request_id = ?",
            (tenant_id, request_id),
        )
        return request_from_row(rows[0]) if rows else None

    async def requests_by_client_id(self, tenant_id: str, client_request_id: str) -> list[str]:
        """Ids of the tenant's logged requests a client sent `client_request_id` with, oldest
        first (a client's id may name any number of calls)."""
        rows = await self._connection.fetchall(
            "SELECT request_id FROM requests WHERE tenant_id = ? AND client_request_id = ? "
            "ORDER BY created_at",
            (tenant_id, client_request_id),
        )
        return [str(row[0]) for row in rows]

    async def set_request(self, tenant_id: str, request_id: str, **changes: Any) -> None:
        unknown = changes.keys() - self._SETTABLE
        if unknown:
            raise ValueError(
                f"cannot set {sorted(unknown)} on a request; settable: {sorted(self._SETTABLE)}"
            )
        if not changes:
            return
        sets = ", ".join(f"{column} = ?" for column in changes)
        values = [
            dumps(value) if column == "injected" else value for column, value in changes.items()
        ]
        async with self._connection.transaction() as db:
            await db.execute(
                f"UPDATE requests SET {sets} WHERE tenant_id = ? AND request_id = ?",
                (*values, tenant_id, request_id),
            )

    async def record_feedback(
        self, tenant_id: str, request_id: str, source: str, reward: float, comment: str | None
    ) -> float | None:
        async with self._connection.transaction() as db:
            async with db.execute(
                "SELECT reward FROM feedback WHERE tenant_id = ? AND request_id = ? AND source = ?",
                (tenant_id, request_id, source),
            ) as cursor:
                row = await cursor.fetchone()
            await db.execute(
                "INSERT INTO feedback (tenant_id, request_id, source, reward, comment, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, request_id, source) DO UPDATE "
                "SET reward = excluded.reward, comment = excluded.comment, "
                "created_at = excluded.created_at",
                (tenant_id, request_id, source, reward, comment, time.time()),
            )
        return float(row[0]) if row is not None else None


async def _insert_request(entry: RequestLog, db: Transaction) -> None:
    await db.execute(
        f"INSERT INTO requests ({REQUEST_COLUMNS}) "
        f"VALUES ({placeholders(len(REQUEST_COLUMN_NAMES))})",
        request_values(entry),
    )
