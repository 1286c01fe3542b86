"""Stored answers of the Responses API: the `responses` table.

Implements `ResponseStore`. Every statement names the tenant: a response of one tenant is never
read for another, which may only learn that an id is held elsewhere. A user's responses go with
the user's erasure.
"""

from __future__ import annotations

import json
from typing import Any

from storage.records import StoredResponse
from storage.relational import SQLConnection
from storage.sqlite.rows import dumps

_COLUMNS = (
    "tenant_id, response_id, user_id, previous_response_id, created_at, input_items, response"
)


class SQLiteResponseStore:
    """The `responses` table."""

    def __init__(self, connection: SQLConnection) -> None:
        self._connection = connection

    async def put_response(self, stored: StoredResponse) -> None:
        async with self._connection.transaction() as db:
            await db.execute(
                f"INSERT INTO responses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant_id, response_id) DO UPDATE SET user_id = excluded.user_id, "
                "previous_response_id = excluded.previous_response_id, "
                "created_at = excluded.created_at, input_items = excluded.input_items, "
                "response = excluded.response",
                (
                    stored.tenant_id,
                    stored.response_id,
                    stored.user_id,
                    stored.previous_response_id,
                    stored.created_at,
                    dumps(stored.input_items),
                    dumps(stored.response),
                ),
            )

    async def get_response(self, tenant_id: str, response_id: str) -> StoredResponse | None:
        rows = await self._connection.fetchall(
            f"SELECT {_COLUMNS} FROM responses WHERE tenant_id = ? AND response_id = ?",
            (tenant_id, response_id),
        )
        return _stored(rows[0]) if rows else None

    async def held_by_another_tenant(self, tenant_id: str, response_id: str) -> bool:
        rows = await self._connection.fetchall(
            "SELECT 1 FROM responses WHERE response_id = ? AND tenant_id != ? LIMIT 1",
            (response_id, tenant_id),
        )
        return bool(rows)

    async def delete_response(self, tenant_id: str, response_id: str) -> bool:
        async with self._connection.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM responses WHERE tenant_id = ? AND response_id = ?",
                (tenant_id, response_id),
            )
            return cursor.rowcount > 0

    async def delete_user_responses(self, tenant_id: str, user_id: str) -> int:
        async with self._connection.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM responses WHERE tenant_id = ? AND user_id = ?", (tenant_id, user_id)
            )
            return cursor.rowcount


def _stored(row: Any) -> StoredResponse:
    return StoredResponse(
        tenant_id=row[0],
        response_id=row[1],
        user_id=row[2],
        previous_response_id=row[3],
        created_at=float(row[4]),
        input_items=json.loads(row[5]),
        response=json.loads(row[6]),
    )
