"""Memory records found by their content: exact duplicates, by the digest of the normalised text.

Each record keeps `text_hash` (`storage.records.text_hash`, schema 6), indexed by tenant, so the
write path and imports find a copy of a text with one indexed read instead of looking through
the user's records.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from storage.records import (
    ContentKey,
    MemoryKind,
    MemoryRecord,
    Scope,
    normalized_text,
    text_hash,
)
from storage.sqlite.audit import AuditRows
from storage.sqlite.rows import SELECT_RECORD, placeholders, record_from_row, user_clause


class ContentRows(AuditRows):
    """Look-ups of the `memories` table by content."""

    async def same_contents(
        self, tenant_id: str, contents: Sequence[ContentKey]
    ) -> builtins.list[str | None]:
        """For each (user, kind, text, key text), the id of a stored record (not erased) of
        that user's scope with exactly this content, or None: one indexed read per 500 texts,
        by their digests, however many there are (an import checks all its lines at once)."""
        digests = list(dict.fromkeys(text_hash(text) for _, _, text, _ in contents))
        stored: dict[ContentKey, str] = {}
        for start in range(0, len(digests), 500):
            chunk = digests[start : start + 500]
            rows = await self._connection.fetchall(
                "SELECT id, user_id, kind, text, key_text FROM memories WHERE tenant_id = ? "
                f"AND text_hash IN ({placeholders(len(chunk))}) AND status != 'deleted'",
                (tenant_id, *chunk),
            )
            for memory_id, user_id, kind, text, key_text in rows:
                stored.setdefault((user_id, kind, text, key_text), str(memory_id))
        return [stored.get(content) for content in contents]

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
