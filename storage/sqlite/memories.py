"""Memory records in SQLite, the source of truth: rows, their edit history and their audit.

Every query filters by tenant in SQL; the scope is part of each WHERE clause, not a later check.
Each write is one transaction that also adds the index outbox entries and audit entries it
implies, so the derived index and the audit can never miss a change that was committed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from storage.records import (
    MemoryKind,
    MemoryRecord,
    MemoryStatus,
    Scope,
    TextEdit,
    text_hash,
)
from storage.relational import Transaction
from storage.sqlite.audit import audit_import, audit_records
from storage.sqlite.content import ContentRows
from storage.sqlite.outbox import record_search_text
from storage.sqlite.rows import (
    INDEXED_FIELDS,
    OUTBOX_INSERT,
    RECORD_COLUMNS,
    SEARCH_TEXT_FIELDS,
    SELECT_RECORD,
    column_value,
    dumps,
    live_record_query,
    placeholders,
    record_from_row,
    record_values,
    user_clause,
)

# A record's row: its fields, its vector, and what is derived from its text.
_INSERTED_COLUMNS = (*RECORD_COLUMNS, "embedding", "text_hash", "search_text")
_INSERTED = ", ".join(_INSERTED_COLUMNS)
_INSERTED_COUNT = len(_INSERTED_COLUMNS)


def _inserted_values(record: MemoryRecord, embedding: bytes | None) -> list[Any]:
    return [*record_values(record), embedding, text_hash(record.text), record_search_text(record)]


class MemoryRows(ContentRows):
    """The `memories` and `memory_versions` tables (and `audit`, which each write adds to)."""

    async def count_memories(self) -> int:
        rows = await self._connection.fetchall(
            "SELECT count(*) FROM memories WHERE status != 'deleted'"
        )
        return int(rows[0][0])

    # -- memories ----------------------------------------------------------------------------

    async def insert_memories(
        self, records: Sequence[MemoryRecord], embeddings: Sequence[bytes | None], *, actor: str
    ) -> None:
        """Insert records, their audit entries and index outbox entries in one transaction."""
        now = time.time()
        async with self._connection.transaction() as db:
            await self._insert(db, records, embeddings, now)
            await audit_records(db, records, "add", actor, now)

    async def import_memories(
        self,
        tenant_id: str,
        records: Sequence[MemoryRecord],
        embeddings: Sequence[bytes | None],
        outcome: dict[str, Any],
    ) -> None:
        """Insert imported records (ids, versions and counters as given) together with the
        import's outcome, in one transaction: either all of it is written or none."""
        now = time.time()
        extra = {"import_id": outcome.get("id")}
        async with self._connection.transaction() as db:
            await self._insert(db, records, embeddings, now)
            await audit_records(db, records, "import", "import", now, extra)
            await audit_import(db, tenant_id, outcome, now)

    @staticmethod
    async def _insert(
        db: Transaction,
        records: Sequence[MemoryRecord],
        embeddings: Sequence[bytes | None],
        now: float,
    ) -> None:
        sql = f"INSERT INTO memories ({_INSERTED}) VALUES ({placeholders(_INSERTED_COUNT)})"
        await db.executemany(
            sql,
            [
                _inserted_values(record, embedding)
                for record, embedding in zip(records, embeddings, strict=True)
            ],
        )
        await db.executemany(
            OUTBOX_INSERT,
            [(record.id, record.tenant_id, now) for record in records],
        )

    async def existing_ids(self, memory_ids: Sequence[str]) -> dict[str, str]:
        """Which of these ids are taken, in any tenant and any status: id → tenant."""
        found: dict[str, str] = {}
        ids = list(dict.fromkeys(memory_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._connection.fetchall(
                f"SELECT id, tenant_id FROM memories WHERE id IN ({placeholders(len(chunk))})",
                chunk,
            )
            found.update({row[0]: row[1] for row in rows})
        return found

    async def get(self, scope: Scope, memory_id: str) -> MemoryRecord | None:
        rows = await self._connection.fetchall(*live_record_query(SELECT_RECORD, scope, memory_id))
        return record_from_row(rows[0]) if rows else None

    async def get_many(self, tenant_id: str, memory_ids: Sequence[str]) -> list[MemoryRecord]:
        return [record for record, _ in await self._get_many(tenant_id, memory_ids, "NULL")]

    async def edits(self, tenant_id: str, memory_id: str) -> list[TextEdit]:
        rows = await self._connection.fetchall(
            "SELECT text, changed_at FROM memory_versions WHERE tenant_id = ? AND memory_id = ? "
            "ORDER BY changed_at, rowid",
            (tenant_id, memory_id),
        )
        return [TextEdit(text=str(text), replaced_at=float(at)) for text, at in rows]

    async def get_many_with_vectors(
        self, tenant_id: str, memory_ids: Sequence[str], *, embedding_model: str
    ) -> list[tuple[MemoryRecord, bytes | None]]:
        """Records and their vectors (None when made by another embedding model), in order."""
        return await self._get_many(
            tenant_id,
            memory_ids,
            "CASE WHEN embedding_model = ? THEN embedding END",
            (embedding_model,),
        )

    async def _get_many(
        self,
        tenant_id: str,
        memory_ids: Sequence[str],
        extra_column: str,
        extra_params: Sequence[Any] = (),
    ) -> list[tuple[MemoryRecord, Any]]:
        found: dict[str, tuple[MemoryRecord, Any]] = {}
        unindexed = self._connection.dialect.unindexed
        ids = list(dict.fromkeys(memory_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._connection.fetchall(
                # `unindexed`: look the ids up by primary key, not the tenant's index (`Dialect`).
                f"SELECT {SELECT_RECORD}, {extra_column} FROM memories "
                f"WHERE {unindexed}tenant_id = ? "
                f"AND id IN ({placeholders(len(chunk))}) AND status != 'deleted'",
                (*extra_params, tenant_id, *chunk),
            )
            for row in rows:
                record = record_from_row(row[:-1])
                found[record.id] = (record, row[-1])
        return [found[memory_id] for memory_id in ids if memory_id in found]

    @staticmethod
    def _scope_clause(tenant_id: str, users: Sequence[str | None]) -> tuple[str, list[Any]]:
        """`tenant_id` repeated inside each branch of the OR, so SQLite answers every branch
        from the (tenant_id, user_id, ...) index instead of walking the whole tenant."""
        named = [user for user in users if user is not None]
        parts: list[str] = []
        params: list[Any] = []
        if named:
            parts.append(f"(tenant_id = ? AND user_id IN ({placeholders(len(named))}))")
            params.extend([tenant_id, *named])
        if None in users:
            parts.append("(tenant_id = ? AND user_id IS NULL)")
            params.append(tenant_id)
        return "(" + " OR ".join(parts or ["1 = 0"]) + ")", params

    async def count_scope(self, tenant_id: str, user_id: str | None) -> int:
        """Records (any status) of one user of a tenant; None is the tenant-shared scope."""
        clause, params = self._scope_clause(tenant_id, [user_id])
        rows = await self._connection.fetchall(
            f"SELECT count(*) FROM memories WHERE {clause}", params
        )
        return int(rows[0][0])

    async def count_written(self, scope: Scope, *, since: float, limit: int) -> int:
        """How many records of the scope (any status but deleted) were created at or after
        `since`, counted up to `limit`: a range of the scope's time index, not a listing."""
        clause, params = user_clause(scope.user_id)
        rows = await self._connection.fetchall(
            f"SELECT count(*) FROM (SELECT 1 FROM memories WHERE tenant_id = ? AND {clause} "
            "AND created_at >= ? AND status != 'deleted' AND kind != 'lesson' LIMIT ?) AS written",
            (scope.tenant_id, *params, since, max(0, limit)),
        )
        return int(rows[0][0])

    async def update_memory(
        self,
        scope: Scope,
        memory_id: str,
        changes: dict[str, Any],
        *,
        embedding: bytes | None,
        embedding_model: str | None,
        actor: str,
    ) -> MemoryRecord | None:
        """Apply `changes` (already validated) to one record of `scope`, in one transaction.

        A text change is a new version: the previous text goes to `memory_versions`, `version`
        counts up, and the new vector and an outbox entry (the index row) are stored with it.
        """
        now = time.time()
        async with self._connection.transaction() as db:
            async with db.execute(*live_record_query(SELECT_RECORD, scope, memory_id)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return None
            before = record_from_row(row)
            assignments = dict(changes)
            assignments["updated_at"] = changes.get("updated_at", now)
            text_changed = "text" in changes or "key_text" in changes
            if text_changed:
                await db.execute(
                    "INSERT INTO memory_versions (memory_id, tenant_id, changed_at, text, "
                    "key_text, embedding_model) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        memory_id,
                        scope.tenant_id,
                        now,
                        before.text,
                        before.key_text,
                        before.embedding_model,
                    ),
                )
                if embedding is not None:
                    assignments["embedding"] = embedding
                    assignments["embedding_model"] = embedding_model
                assignments["version"] = before.version + 1
                assignments["text_hash"] = text_hash(changes.get("text", before.text))
            if searched := {f: changes[f] for f in SEARCH_TEXT_FIELDS & changes.keys()}:
                assignments["search_text"] = record_search_text(replace(before, **searched))
            sets = ", ".join(f"{column} = ?" for column in assignments)
            values = [column_value(column, value) for column, value in assignments.items()]
            await db.execute(
                f"UPDATE memories SET {sets} WHERE id = ? AND tenant_id = ?",
                (*values, memory_id, scope.tenant_id),
            )
            if INDEXED_FIELDS & changes.keys():
                await db.execute(OUTBOX_INSERT, (memory_id, scope.tenant_id, now))
            # Utility and usage counters change on every request; they are not audited.
            audited = sorted(
                changes.keys()
                - {"q", "q_visits", "reward_ma", "last_reward", "n_pos", "n_neg", "last_used_at"}
            )
            if audited:
                await audit_records(
                    db, [before], "update", actor, now, {"changed": audited, **_status_of(changes)}
                )
            async with db.execute(
                f"SELECT {SELECT_RECORD} FROM memories WHERE id = ?", (memory_id,)
            ) as cursor:
                after = await cursor.fetchone()
        return record_from_row(after) if after is not None else None

    async def write_successor(
        self,
        scope: Scope,
        old_id: str,
        new: MemoryRecord,
        embedding: bytes | None,
        *,
        at: float,
        actor: str,
    ) -> MemoryRecord:
        """Write `new` as the next version of `old_id` in one transaction."""
        async with self._connection.transaction() as db:
            async with db.execute(*live_record_query("version, status", scope, old_id)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                raise KeyError(f"memory {old_id!r} not found in this scope")
            if row[1] == "superseded":
                raise ValueError(f"memory {old_id!r} is already superseded; supersede its latest")
            new.version = int(row[0]) + 1
            new.supersedes = old_id
            new.valid_from = at
            await db.execute(
                f"INSERT INTO memories ({_INSERTED}) VALUES ({placeholders(_INSERTED_COUNT)})",
                _inserted_values(new, embedding),
            )
            await db.execute(
                "UPDATE memories SET status = 'superseded', valid_to = ?, superseded_by = ?, "
                "updated_at = ? WHERE id = ? AND tenant_id = ?",
                (at, new.id, at, old_id, scope.tenant_id),
            )
            await db.executemany(
                OUTBOX_INSERT,
                [(old_id, scope.tenant_id, at), (new.id, scope.tenant_id, at)],
            )
            await audit_records(db, [new], "supersede", actor, at, {"supersedes": old_id})
        return new

    async def delete_memory(self, scope: Scope, memory_id: str, *, actor: str) -> bool:
        """Erase one record's content, keeping a content-free tombstone for the version chain."""
        now = time.time()
        async with self._connection.transaction() as db:
            async with db.execute(*live_record_query("kind, version", scope, memory_id)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return False
            await db.execute(
                "UPDATE memories SET status = 'deleted', text = '', key_text = '', "
                "fields = '{}', metadata = '{}', keywords = '[]', tags = '[]', "
                "trust_reasons = '[]', evidence = '[]', embedding = NULL, text_hash = NULL, "
                "search_text = NULL, "
                "updated_at = ? "
                "WHERE id = ? AND tenant_id = ?",
                (now, memory_id, scope.tenant_id),
            )
            await db.execute(
                "DELETE FROM memory_versions WHERE tenant_id = ? AND memory_id = ?",
                (scope.tenant_id, memory_id),
            )
            await db.execute(OUTBOX_INSERT, (memory_id, scope.tenant_id, now))
            await db.execute(
                "INSERT INTO audit (tenant_id, at, actor, action, memory_id, user_id, detail) "
                "VALUES (?, ?, ?, 'delete', ?, ?, ?)",
                (
                    scope.tenant_id,
                    now,
                    actor,
                    memory_id,
                    scope.user_id,
                    dumps({"kind": row[0], "version": row[1]}),
                ),
            )
        await self._connection.forget_wal()
        return True

    async def delete_user_memories(self, tenant_id: str, user_id: str, *, actor: str) -> int:
        """Erase every record of one user (rows and edit history), every exchange of theirs
        in the write queue (which holds the conversation's text) and the comments of feedback
        on their requests; returns how many records.

        The exchanges go first, in a transaction of their own, then the records. An exchange
        being learned meanwhile checks for its job once its writes are committed
        (`proxy.memory.write_path`): if the job is gone it takes back what it wrote; if not,
        its writes were committed before the jobs' deletion, so before the records' deletion
        starts, which then sees them, under PostgreSQL's read-committed reads as under SQLite's
        one writer. Erasing again is safe, if the second step failed."""
        now = time.time()
        async with self._connection.transaction() as db:
            await db.execute(
                "DELETE FROM jobs WHERE tenant_id = ? AND user_id = ?", (tenant_id, user_id)
            )
            await db.execute(
                "UPDATE feedback SET comment = NULL WHERE tenant_id = ? AND request_id IN "
                "(SELECT request_id FROM requests WHERE tenant_id = ? AND user_id = ?)",
                (tenant_id, tenant_id, user_id),
            )
        async with self._connection.transaction() as db:
            await db.execute(
                "DELETE FROM memory_versions WHERE tenant_id = ? AND memory_id IN "
                "(SELECT id FROM memories WHERE tenant_id = ? AND user_id = ?)",
                (tenant_id, tenant_id, user_id),
            )
            # The rows deleted, as deleted: a record committed a moment before this statement
            # is erased and leaves its outbox entry like the others.
            async with db.execute(
                "DELETE FROM memories WHERE tenant_id = ? AND user_id = ? RETURNING id, status",
                (tenant_id, user_id),
            ) as cursor:
                rows = list(await cursor.fetchall())
            ids = [row[0] for row in rows]
            live = sum(1 for row in rows if row[1] != "deleted")
            await db.executemany(
                OUTBOX_INSERT,
                [(memory_id, tenant_id, now) for memory_id in ids],
            )
            await db.execute(
                "INSERT INTO audit (tenant_id, at, actor, action, memory_id, user_id, detail) "
                "VALUES (?, ?, ?, 'delete_user', NULL, ?, ?)",
                (tenant_id, now, actor, user_id, dumps({"count": live})),
            )
        await self._connection.forget_wal()
        return live

    async def vector_blobs(self, tenant_id: str, memory_ids: Sequence[str]) -> dict[str, bytes]:
        if not memory_ids:
            return {}
        unindexed = self._connection.dialect.unindexed
        rows = await self._connection.fetchall(
            f"SELECT id, embedding FROM memories WHERE {unindexed}tenant_id = ? "
            f"AND id IN ({placeholders(len(memory_ids))}) AND embedding IS NOT NULL",
            (tenant_id, *memory_ids),
        )
        return {row[0]: row[1] for row in rows}

    # `list` comes last: inside the class body its name would shadow the builtin type.
    async def list(
        self,
        scope: Scope,
        *,
        kinds: Sequence[MemoryKind] | None = None,
        statuses: Sequence[MemoryStatus] | None = None,
        limit: int = 100,
        offset: int = 0,
        all_users: bool = False,
        after: str | None = None,
    ) -> list[MemoryRecord]:
        """Newest first (by `created_at`, then id); `after` starts past that memory (a page
        cursor, stable while memories are added)."""
        where = ["tenant_id = ?"]
        params: list[Any] = [scope.tenant_id]
        if after is not None:
            # Keyset: strictly past the cursor in (created_at, id) order, whatever was added.
            where.append(
                "(created_at, id) < (SELECT created_at, id FROM memories "
                "WHERE tenant_id = ? AND id = ?)"
            )
            params.extend([scope.tenant_id, after])
        if not all_users:
            clause, user_params = user_clause(scope.user_id)
            where.append(clause)
            params.extend(user_params)
        if kinds:
            where.append(f"kind IN ({placeholders(len(kinds))})")
            params.extend(kinds)
        if statuses:
            where.append(f"status IN ({placeholders(len(statuses))})")
            params.extend(statuses)
        else:
            where.append("status != 'deleted'")
        rows = await self._connection.fetchall(
            f"SELECT {SELECT_RECORD} FROM memories WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            (*params, max(0, limit), max(0, offset)),
        )
        return [record_from_row(row) for row in rows]


def _status_of(changes: dict[str, Any]) -> dict[str, Any]:
    return {"status": changes["status"]} if "status" in changes else {}
