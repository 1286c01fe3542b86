"""Memory records found by their content: exact duplicates, by the digest of the normalised text.

Each record keeps `text_hash` (`storage.records.text_hash`, schema 6), indexed by tenant, so the
write path and imports find a copy of a text with one indexed read instead of looking through
the user's records.
"""

from __future__ import annotations

from collections.abc import Sequence

from storage.records import MemoryKind, MemoryRecord, Scope, normalized_text, text_hash
from storage.sqlite.audit import AuditRows
from storage.sqlite.rows import SELECT_RECORD, placeholders, record_from_row, user_clause


class ContentRows(AuditRows):
    """Look-ups of the `memories` table by content."""

    async def same_content(
        self, scope: Scope, kind: MemoryKind, text: str, key_text: str
    ) -> str | None:
        """The id of a stored record (not erased) of this scope with exactly this content."""
        clause, params = user_clause(scope.user_id)
        rows = await self._connection.fetchall(
            f"SELECT id FROM memories WHERE tenant_id = ? AND text_hash = ? AND {clause} "
            "AND kind = ? AND text = ? AND key_text = ? AND status != 'deleted' LIMIT 1",
            (scope.tenant_id, text_hash(text), *params, kind, text, key_text),
        )
        return str(rows[0][0]) if rows else None

    async def same_text(
        self, scope: Scope, kinds: Sequence[MemoryKind], text: str
    ) -> MemoryRecord | None:
        """An active record of exactly this scope (the user's, or the tenant-shared) and one of
        `kinds` whose normalised text is `text`'s, found by its digest (one indexed read)."""
        clause, params = user_clause(scope.user_id)
        rows = await self._connection.fetchall(
            f"SELECT {SELECT_RECORD} FROM memories WHERE tenant_id = ? AND text_hash = ? "
            f"AND {clause} AND status = 'active' AND kind IN ({placeholders(len(kinds))})",
            (scope.tenant_id, text_hash(text), *params, *kinds),
        )
        # No ORDER BY in SQL: it would have SQLite walk the user's records in time order
        # instead of using the digest's index. The copies are few; the oldest is the one.
        wanted = normalized_text(text)
        found = sorted((record_from_row(row) for row in rows), key=lambda r: (r.created_at, r.id))
        return next((r for r in found if normalized_text(r.text) == wanted), None)

    async def fill_text_hashes(self, batch: int = 5_000) -> int:
        """Give records written before the digest existed (schema 6) their `text_hash`, a batch
        per transaction; returns how many. Run once at open, before the store serves."""
        filled = 0
        while True:
            rows = await self._connection.fetchall(
                "SELECT id, text FROM memories WHERE text_hash IS NULL AND status != 'deleted' "
                "LIMIT ?",
                (batch,),
            )
            if not rows:
                return filled
            async with self._connection.transaction() as db:
                await db.executemany(
                    "UPDATE memories SET text_hash = ? WHERE id = ?",
                    [(text_hash(text), memory_id) for memory_id, text in rows],
                )
            filled += len(rows)
