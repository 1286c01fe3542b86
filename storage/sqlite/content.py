"""Memory records found by their content: exact duplicates, by the digest of the normalised text.

Each record keeps `text_hash` (`storage.records.text_hash`, schema 6), indexed by tenant, so the
write path and imports find a copy of a text with one indexed read instead of looking through
the user's records.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

from storage.records import (
    ContentKey,
    MemoryKind,
    MemoryRecord,
    Scope,
    normalized_text,
    text_hash,
)
from storage.sqlite.audit import AuditRows
from storage.sqlite.rows import (
    SELECT_RECORD,
    fill_missing,
    placeholders,
    record_from_row,
    user_clause,
)


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

    async def fill_text_hashes(self) -> int:
        """Give records written before the digest existed (schema 6) their `text_hash`, a batch
        per transaction; returns how many. Run once at open, before the store serves."""

        async def digests(rows: list[Any]) -> list[str]:
            return [text_hash(text) for _, text in rows]

        return await fill_missing(self._connection, "text_hash", "id, text", digests)
