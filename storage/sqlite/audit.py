"""The audit log: who added, changed, superseded, erased or imported which memory, and the
kept outcome of each import. Entries carry no memory content, so an erasure leaves none behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from storage.records import MemoryRecord
from storage.relational import SQLConnection, Transaction
from storage.sqlite.rows import dumps

# The audit action of one import's outcome (what was written, skipped, refused or cancelled).
IMPORT_ACTION = "import_run"


class AuditRows:
    """The `audit` table as the memory store reads it: entries and the outcomes of imports."""

    def __init__(self, connection: SQLConnection) -> None:
        self._connection = connection

    async def record_import(self, tenant_id: str, outcome: dict[str, Any]) -> None:
        """The outcome of an import that wrote nothing (refused or cancelled)."""
        async with self._connection.transaction() as db:
            await audit_import(db, tenant_id, outcome, time.time())

    async def imports(
        self, tenant_id: str, limit: int, *, after: str | None = None
    ) -> list[dict[str, Any]]:
        """The kept outcomes of the tenant's imports, newest first; `after` starts past the
        import of that id."""
        where, params = "", []
        id_field = self._connection.dialect.json_field("detail", "id")
        if after is not None:
            where = (
                "AND id < (SELECT max(id) FROM audit WHERE tenant_id = ? AND action = ? "
                f"AND {id_field} = ?)"
            )
            params = [tenant_id, IMPORT_ACTION, after]
        rows = await self._connection.fetchall(
            f"SELECT detail FROM audit WHERE tenant_id = ? AND action = ? {where} "
            "ORDER BY id DESC LIMIT ?",
            (tenant_id, IMPORT_ACTION, *params, max(0, limit)),
        )
        return [dict(json.loads(row[0])) for row in rows]

    async def import_outcome(self, tenant_id: str, import_id: str) -> dict[str, Any] | None:
        """The kept outcome of one import of this tenant, if there is one."""
        id_field = self._connection.dialect.json_field("detail", "id")
        rows = await self._connection.fetchall(
            "SELECT detail FROM audit WHERE tenant_id = ? AND action = ? "
            f"AND {id_field} = ? ORDER BY id DESC LIMIT 1",
            (tenant_id, IMPORT_ACTION, import_id),
        )
        return dict(json.loads(rows[0][0])) if rows else None

    async def audit(
        self, tenant_id: str, limit: int = 100, *, action: str | None = None
    ) -> list[dict[str, Any]]:
        """The tenant's audit entries, newest first; only those of `action` when given."""
        where, params = ("AND action = ?", [action]) if action is not None else ("", [])
        rows = await self._connection.fetchall(
            "SELECT id, at, actor, action, memory_id, user_id, detail FROM audit "
            f"WHERE tenant_id = ? {where} ORDER BY id DESC LIMIT ?",
            (tenant_id, *params, max(0, limit)),
        )
        return [
            {
                "id": row[0],
                "tenant_id": tenant_id,
                "at": row[1],
                "actor": row[2],
                "action": row[3],
                "memory_id": row[4],
                "user_id": row[5],
                "detail": json.loads(row[6]),
            }
            for row in rows
        ]


async def audit_records(
    db: Transaction,
    records: Sequence[MemoryRecord],
    action: str,
    actor: str,
    at: float,
    extra: dict[str, Any] | None = None,
) -> None:
    await db.executemany(
        "INSERT INTO audit (tenant_id, at, actor, action, memory_id, user_id, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                record.tenant_id,
                at,
                actor,
                action,
                record.id,
                record.user_id,
                dumps(
                    {
                        "kind": record.kind,
                        "status": record.status,
                        "source_role": record.source_role,
                        "version": record.version,
                        **(extra or {}),
                    }
                ),
            )
            for record in records
        ],
    )


async def audit_import(
    db: Transaction, tenant_id: str, outcome: dict[str, Any], now: float
) -> None:
    await db.execute(
        "INSERT INTO audit (tenant_id, at, actor, action, memory_id, user_id, detail) "
        "VALUES (?, ?, 'import', ?, NULL, NULL, ?)",
        (tenant_id, now, IMPORT_ACTION, dumps(outcome)),
    )
