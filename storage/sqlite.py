"""SQLite, the source of truth: memories, their edit history, audit, requests, feedback, the
write queue and the index outbox, through aiosqlite in WAL mode.

One writer connection (writes are serialised by an asyncio lock, each write one transaction) and
one reader connection, so reads on the request path never wait behind a write. The small writes
every chat call makes (its request log and its queued exchange) are group-committed: those that
arrive while a transaction is running share the next one, so under load a thousand calls cost a
few fsyncs, not a thousand, and each caller still returns only once its own write is durable.
Every memory query filters by tenant in SQL; the scope is part of each WHERE clause, not a later
check.

The schema is versioned with `PRAGMA user_version`; `MIGRATIONS` upgrades an older file in place
at open, and a file from a newer release is refused with a message that says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite

from storage.api import HealthReporter, StorageFull
from storage.records import (
    MEMORY_KINDS,
    MEMORY_STATUSES,
    JobState,
    MemoryKind,
    MemoryRecord,
    MemoryStatus,
    QueuedJob,
    RequestLog,
    Scope,
    TextEdit,
)

log = logging.getLogger("memento.storage")

STORAGE_COMPONENT = "storage"  # the name a full disk is reported under


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer release than this one."""


class DuplicateRequestError(ValueError):
    """A request id already logged for the tenant: one call's log is never merged into
    another's, so a second entry under the same id is refused."""


_KINDS_SQL = ", ".join(f"'{kind}'" for kind in MEMORY_KINDS)
_STATUSES_SQL = ", ".join(f"'{status}'" for status in MEMORY_STATUSES)

# Each entry upgrades the schema from version i to i+1. Never edit a released entry: append.
MIGRATIONS: tuple[str, ...] = (
    # 1: memories, audit, requests, feedback, write queue, index outbox.
    f"""
    CREATE TABLE memories (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        user_id TEXT,
        session_id TEXT,
        agent_id TEXT,
        kind TEXT NOT NULL CHECK (kind IN ({_KINDS_SQL})),
        text TEXT NOT NULL,
        key_text TEXT NOT NULL DEFAULT '',
        fields TEXT NOT NULL DEFAULT '{{}}',
        metadata TEXT NOT NULL DEFAULT '{{}}',
        keywords TEXT NOT NULL DEFAULT '[]',
        tags TEXT NOT NULL DEFAULT '[]',
        source_role TEXT NOT NULL,
        source_request_id TEXT,
        trace_id TEXT,
        trust REAL NOT NULL,
        trust_reasons TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL CHECK (status IN ({_STATUSES_SQL})),
        version INTEGER NOT NULL DEFAULT 1,
        supersedes TEXT,
        superseded_by TEXT,
        q REAL NOT NULL DEFAULT 0,
        q_visits INTEGER NOT NULL DEFAULT 0,
        reward_ma REAL NOT NULL DEFAULT 0,
        last_reward REAL,
        n_pos INTEGER NOT NULL DEFAULT 0,
        n_neg INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_used_at REAL,
        valid_from REAL NOT NULL,
        valid_to REAL,
        expires_at REAL,
        embedding_model TEXT,
        embedding BLOB,
        derived_from_ids TEXT NOT NULL DEFAULT '[]',
        evidence TEXT NOT NULL DEFAULT '[]',
        model TEXT
    );
    CREATE INDEX memories_scope ON memories (tenant_id, user_id, created_at);
    CREATE INDEX memories_tenant_status ON memories (tenant_id, status);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        memory_id TEXT,
        user_id TEXT,
        detail TEXT NOT NULL DEFAULT '{{}}'
    );
    CREATE INDEX audit_tenant ON audit (tenant_id, id);
    CREATE TABLE requests (
        tenant_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        user_id TEXT,
        session_id TEXT,
        trace_id TEXT,
        model TEXT NOT NULL,
        created_at REAL NOT NULL,
        injected TEXT NOT NULL DEFAULT '[]',
        written_case_id TEXT,
        reward REAL,
        status TEXT NOT NULL DEFAULT 'ok',
        PRIMARY KEY (tenant_id, request_id)
    );
    CREATE TABLE feedback (
        tenant_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        source TEXT NOT NULL,
        reward REAL NOT NULL,
        comment TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, request_id, source)
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        available_at REAL NOT NULL,
        claimed_by TEXT,
        lease_until REAL,
        last_error TEXT
    );
    CREATE INDEX jobs_ready ON jobs (state, available_at);
    CREATE TABLE index_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        memory_id TEXT NOT NULL,
        enqueued_at REAL NOT NULL
    );
    """,
    # 2: edit history of in-place text changes, store metadata (which embedder built the
    # index), requests by user.
    """
    CREATE TABLE memory_versions (
        memory_id TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        changed_at REAL NOT NULL,
        text TEXT NOT NULL,
        key_text TEXT NOT NULL,
        embedding_model TEXT
    );
    CREATE INDEX memory_versions_memory ON memory_versions (tenant_id, memory_id);
    CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE INDEX requests_user ON requests (tenant_id, user_id, created_at);
    """,
    # 3: the outbox names each change's tenant, so the index can drop an erased record from
    # its tenant's table without looking through every tenant's (NULL in older entries).
    """
    ALTER TABLE index_outbox ADD COLUMN tenant_id TEXT;
    """,
    # 4: the id a client sent with a call, kept apart from the proxy's own request id (any
    # number of calls may share it), and found by it.
    """
    ALTER TABLE requests ADD COLUMN client_request_id TEXT;
    CREATE INDEX requests_client ON requests (tenant_id, client_request_id)
        WHERE client_request_id IS NOT NULL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
# store_meta keys of the index: the generation served, and (while a rebuild runs) the outbox
# sequence number the rebuild started after.
INDEX_GENERATION_META = "index_generation"
INDEX_BUILD_META = "index_build_from"
_META_UPSERT = (
    "INSERT INTO store_meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_META_INT = "SELECT CAST(value AS INTEGER) FROM store_meta WHERE key = ?"
_OUTBOX_INSERT = "INSERT INTO index_outbox (memory_id, tenant_id, enqueued_at) VALUES (?, ?, ?)"
# The audit action of one import's outcome (what was written, skipped, refused or cancelled).
IMPORT_ACTION = "import_run"

_JSON_COLUMNS = frozenset(
    {
        "fields",
        "metadata",
        "keywords",
        "tags",
        "trust_reasons",
        "derived_from_ids",
        "evidence",
    }
)
_RECORD_COLUMNS = (
    "id",
    "tenant_id",
    "user_id",
    "session_id",
    "agent_id",
    "kind",
    "text",
    "key_text",
    "fields",
    "metadata",
    "keywords",
    "tags",
    "source_role",
    "source_request_id",
    "trace_id",
    "trust",
    "trust_reasons",
    "status",
    "version",
    "supersedes",
    "superseded_by",
    "q",
    "q_visits",
    "reward_ma",
    "last_reward",
    "n_pos",
    "n_neg",
    "created_at",
    "updated_at",
    "last_used_at",
    "valid_from",
    "valid_to",
    "expires_at",
    "embedding_model",
    "derived_from_ids",
    "evidence",
    "model",
)
_SELECT_RECORD = ", ".join(_RECORD_COLUMNS)
_REQUEST_COLUMN_NAMES = (
    "request_id",
    "tenant_id",
    "user_id",
    "session_id",
    "trace_id",
    "model",
    "created_at",
    "injected",
    "written_case_id",
    "reward",
    "status",
    "client_request_id",
)
_REQUEST_COLUMNS = ", ".join(_REQUEST_COLUMN_NAMES)

# What `update` may change. Identity, scope and creation time never change.
UPDATABLE_FIELDS = frozenset(
    {
        "kind",
        "text",
        "key_text",
        "fields",
        "metadata",
        "keywords",
        "tags",
        "session_id",
        "agent_id",
        "source_role",
        "trust",
        "trust_reasons",
        "status",
        "supersedes",
        "superseded_by",
        "q",
        "q_visits",
        "reward_ma",
        "last_reward",
        "n_pos",
        "n_neg",
        "last_used_at",
        "valid_from",
        "valid_to",
        "expires_at",
        "derived_from_ids",
        "evidence",
        "model",
        "trace_id",
    }
)
# Changes to these touch the index row (scope filter, status filter, BM25 text, vector).
INDEXED_FIELDS = frozenset({"kind", "text", "key_text", "keywords", "tags", "status", "expires_at"})


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_EMPTY_JSON: dict[str, type[list[Any]] | type[dict[str, Any]]] = {"[]": list, "{}": dict}


def _record_from_row(row: Sequence[Any]) -> MemoryRecord:
    values = dict(zip(_RECORD_COLUMNS, row, strict=True))
    for column in _JSON_COLUMNS:
        raw = values[column]
        empty = _EMPTY_JSON.get(raw)  # most of these columns are empty: skip the parser
        values[column] = empty() if empty is not None else json.loads(raw)
    return MemoryRecord(**values)


def _record_values(record: MemoryRecord) -> list[Any]:
    values: list[Any] = []
    for column in _RECORD_COLUMNS:
        value = getattr(record, column)
        values.append(_dumps(value) if column in _JSON_COLUMNS else value)
    return values


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def _user_clause(user_id: str | None) -> tuple[str, list[Any]]:
    if user_id is None:
        return "user_id IS NULL", []
    return "user_id = ?", [user_id]


def _live_record_query(columns: str, scope: Scope, memory_id: str) -> tuple[str, tuple[Any, ...]]:
    """The scoped look-up every read and read-modify-write of one record starts from: `columns`
    of the record `memory_id` in `scope`, unless it was deleted."""
    clause, params = _user_clause(scope.user_id)
    return (
        f"SELECT {columns} FROM memories "
        f"WHERE id = ? AND tenant_id = ? AND {clause} AND status != 'deleted'",
        (memory_id, scope.tenant_id, *params),
    )


@dataclass(frozen=True)
class IndexSource:
    """What the index keeps of one record: scope, filters, BM25 text and vector."""

    id: str
    tenant_id: str
    user_id: str | None
    kind: MemoryKind
    status: MemoryStatus
    expires_at: float | None
    search_text: str
    embed_text: str
    embedding: bytes | None
    embedding_model: str | None


def search_text_of(key_text: str, text: str, keywords: Iterable[str], tags: Iterable[str]) -> str:
    """The BM25 document: what is matched (key text, else the text) plus keywords and tags."""
    return " ".join([key_text or text, *keywords, *tags])


def embedding_input(key_text: str, text: str) -> str:
    """What the vector represents: the key text (a case's request, a fact itself)."""
    return key_text or text


class SQLiteDatabase:
    """The relational half of the embedded store. Implements RequestStore and WriteQueue."""

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        *,
        lease_s: float,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._lease_s = lease_s
        self._group: list[tuple[_GroupedWrite, asyncio.Future[Any]]] = []
        self._group_task: asyncio.Task[None] | None = None
        self._health: HealthReporter | None = None
        self._full: str | None = None  # why the last write failed for want of space
        self._probe: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        lease_s: float = 120.0,
        migrations: Sequence[str] = MIGRATIONS,
    ) -> SQLiteDatabase:
        """Open (creating and migrating) the database file at `path`.

        `migrations` exists for tests that build an older schema; callers use the default.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(path, isolation_level=None)
        try:
            await writer.execute("PRAGMA journal_mode = WAL")
            # FULL: an acknowledged write survives a power cut, not only a process crash.
            await writer.execute("PRAGMA synchronous = FULL")
            # Deleted content is overwritten on disk, not left in free pages.
            await writer.execute("PRAGMA secure_delete = ON")
            await writer.execute("PRAGMA busy_timeout = 5000")
            await _migrate(writer, path, migrations)
        except BaseException:
            await writer.close()
            raise
        reader = await aiosqlite.connect(path, isolation_level=None)
        await reader.execute("PRAGMA busy_timeout = 5000")
        await reader.execute("PRAGMA query_only = ON")
        return cls(path, writer, reader, lease_s=lease_s)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._group_task is not None:
            await asyncio.shield(self._group_task)
        async with self._write_lock:
            await self._reader.close()
            await self._writer.close()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction. Anything that fails, the COMMIT included (a full disk fails
        there), rolls it back, so the connection is ready for the next write."""
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield self._writer
                    await self._writer.execute("COMMIT")
                except BaseException:
                    if self._writer.in_transaction:
                        await self._writer.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL:
                    self._report_full(f"{self.path}: {exc}")
                    raise StorageFull(f"{self.path}: {exc}") from exc
                raise
            if self._full is not None:
                self._clear_full()

    # -- a full disk ---------------------------------------------------------------------------

    def attach_health(self, health: HealthReporter) -> None:
        """Report a full disk (and its end) to `health` from now on."""
        self._health = health
        if self._full is not None:
            health.report(STORAGE_COMPONENT, self._full)

    def _report_full(self, reason: str) -> None:
        if self._full is None:
            log.error("the database refuses writes: %s", reason)
        self._full = f"writes fail, the disk is full ({reason})"
        if self._health is not None:
            self._health.report(STORAGE_COMPONENT, self._full)
        if self._probe is None or self._probe.done():
            # Nothing may write for a while: probe, so recovery does not wait for a client.
            self._probe = asyncio.create_task(self._probe_until_writable(), name="sqlite-probe")

    def _clear_full(self) -> None:
        self._full = None
        log.warning("the database accepts writes again")
        if self._health is not None:
            self._health.clear(STORAGE_COMPONENT)

    async def _probe_until_writable(self, interval_s: float = 1.0) -> None:
        while self._full is not None:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(StorageFull):
                await self.set_meta("write_probe", str(time.time()))

    async def _grouped(self, write: _GroupedWrite) -> Any:
        """Run `write` in the next group commit; return its result once that commit is durable.

        A write that fails raises for its caller alone (the group is rolled back and the others
        committed one by one); a commit that fails (a full disk) raises for every write in it.
        Cancelling the caller does not cancel the write: it was accepted, so it is committed.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._group.append((write, future))
        if self._group_task is None:
            self._group_task = asyncio.create_task(self._commit_groups(), name="sqlite-group")
        return await asyncio.shield(future)

    async def _commit_groups(self) -> None:
        try:
            while self._group:
                group, self._group = self._group, []
                try:
                    async with self._transaction() as db:
                        results = [await write(db) for write, _ in group]
                except StorageFull as exc:
                    for _, future in group:
                        future.set_exception(exc)
                    continue
                except Exception:
                    # One write failed (a duplicate, say): give each its own transaction, so
                    # the others are kept and only that caller hears of it.
                    for write, future in group:
                        await self._commit_alone(write, future)
                    continue
                for value, (_, future) in zip(results, group, strict=True):
                    future.set_result(value)
        finally:
            self._group_task = None

    async def _commit_alone(self, write: _GroupedWrite, future: asyncio.Future[Any]) -> None:
        try:
            async with self._transaction() as db:
                value = await write(db)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(value)

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    # -- metadata ----------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        rows = await self._fetchall("SELECT value FROM store_meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self._transaction() as db:
            await db.execute(_META_UPSERT, (key, value))

    async def count_memories(self) -> int:
        rows = await self._fetchall("SELECT count(*) FROM memories WHERE status != 'deleted'")
        return int(rows[0][0])

    # -- memories ----------------------------------------------------------------------------

    async def insert_memories(
        self, records: Sequence[MemoryRecord], embeddings: Sequence[bytes | None], *, actor: str
    ) -> None:
        """Insert records, their audit entries and index outbox entries in one transaction."""
        now = time.time()
        async with self._transaction() as db:
            await self._insert(db, records, embeddings, now)
            await self._audit_many(db, records, "add", actor, now)

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
        async with self._transaction() as db:
            await self._insert(db, records, embeddings, now)
            await self._audit_many(db, records, "import", "import", now, extra)
            await self._audit_import(db, tenant_id, outcome, now)

    async def record_import(self, tenant_id: str, outcome: dict[str, Any]) -> None:
        """The outcome of an import that wrote nothing (refused or cancelled)."""
        async with self._transaction() as db:
            await self._audit_import(db, tenant_id, outcome, time.time())

    @staticmethod
    async def _insert(
        db: aiosqlite.Connection,
        records: Sequence[MemoryRecord],
        embeddings: Sequence[bytes | None],
        now: float,
    ) -> None:
        columns = ", ".join((*_RECORD_COLUMNS, "embedding"))
        sql = f"INSERT INTO memories ({columns}) VALUES ({_placeholders(len(_RECORD_COLUMNS) + 1)})"
        await db.executemany(
            sql,
            [
                [*_record_values(record), embedding]
                for record, embedding in zip(records, embeddings, strict=True)
            ],
        )
        await db.executemany(
            _OUTBOX_INSERT,
            [(record.id, record.tenant_id, now) for record in records],
        )

    @staticmethod
    async def _audit_import(
        db: aiosqlite.Connection, tenant_id: str, outcome: dict[str, Any], now: float
    ) -> None:
        await db.execute(
            "INSERT INTO audit (tenant_id, at, actor, action, memory_id, user_id, detail) "
            "VALUES (?, ?, 'import', ?, NULL, NULL, ?)",
            (tenant_id, now, IMPORT_ACTION, _dumps(outcome)),
        )

    async def imports(
        self, tenant_id: str, limit: int, *, after: str | None = None
    ) -> list[dict[str, Any]]:
        """The kept outcomes of the tenant's imports, newest first; `after` starts past the
        import of that id."""
        where, params = "", []
        if after is not None:
            where = (
                "AND id < (SELECT max(id) FROM audit WHERE tenant_id = ? AND action = ? "
                "AND json_extract(detail, '$.id') = ?)"
            )
            params = [tenant_id, IMPORT_ACTION, after]
        rows = await self._fetchall(
            f"SELECT detail FROM audit WHERE tenant_id = ? AND action = ? {where} "
            "ORDER BY id DESC LIMIT ?",
            (tenant_id, IMPORT_ACTION, *params, max(0, limit)),
        )
        return [dict(json.loads(row[0])) for row in rows]

    async def import_outcome(self, tenant_id: str, import_id: str) -> dict[str, Any] | None:
        """The kept outcome of one import of this tenant, if there is one."""
        rows = await self._fetchall(
            "SELECT detail FROM audit WHERE tenant_id = ? AND action = ? "
            "AND json_extract(detail, '$.id') = ? ORDER BY id DESC LIMIT 1",
            (tenant_id, IMPORT_ACTION, import_id),
        )
        return dict(json.loads(rows[0][0])) if rows else None

    async def existing_ids(self, memory_ids: Sequence[str]) -> dict[str, str]:
        """Which of these ids are taken, in any tenant and any status: id → tenant."""
        found: dict[str, str] = {}
        ids = list(dict.fromkeys(memory_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._fetchall(
                f"SELECT id, tenant_id FROM memories WHERE id IN ({_placeholders(len(chunk))})",
                chunk,
            )
            found.update({row[0]: row[1] for row in rows})
        return found

    async def same_content(
        self, scope: Scope, kind: MemoryKind, text: str, key_text: str
    ) -> str | None:
        """The id of a stored record (not erased) of this scope with exactly this content."""
        clause, params = _user_clause(scope.user_id)
        rows = await self._fetchall(
            f"SELECT id FROM memories WHERE tenant_id = ? AND {clause} AND kind = ? AND text = ? "
            "AND key_text = ? AND status != 'deleted' LIMIT 1",
            (scope.tenant_id, *params, kind, text, key_text),
        )
        return str(rows[0][0]) if rows else None

    async def _audit_many(
        self,
        db: aiosqlite.Connection,
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
                    _dumps(
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

    async def get_memory(self, scope: Scope, memory_id: str) -> MemoryRecord | None:
        rows = await self._fetchall(*_live_record_query(_SELECT_RECORD, scope, memory_id))
        return _record_from_row(rows[0]) if rows else None

    async def get_many(self, tenant_id: str, memory_ids: Sequence[str]) -> list[MemoryRecord]:
        return [record for record, _ in await self._get_many(tenant_id, memory_ids, "NULL")]

    async def edits(self, tenant_id: str, memory_id: str) -> list[TextEdit]:
        rows = await self._fetchall(
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
        ids = list(dict.fromkeys(memory_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._fetchall(
                # `+tenant_id`: look the ids up by primary key. Without the `+` SQLite picks
                # the (tenant_id, status) index and walks the whole tenant (12 ms at 10k rows).
                f"SELECT {_SELECT_RECORD}, {extra_column} FROM memories WHERE +tenant_id = ? "
                f"AND id IN ({_placeholders(len(chunk))}) AND status != 'deleted'",
                (*extra_params, tenant_id, *chunk),
            )
            for row in rows:
                record = _record_from_row(row[:-1])
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
            parts.append(f"(tenant_id = ? AND user_id IN ({_placeholders(len(named))}))")
            params.extend([tenant_id, *named])
        if None in users:
            parts.append("(tenant_id = ? AND user_id IS NULL)")
            params.append(tenant_id)
        return "(" + " OR ".join(parts or ["0"]) + ")", params

    async def count_scope(self, tenant_id: str, user_id: str | None) -> int:
        """Records (any status) of one user of a tenant; None is the tenant-shared scope."""
        clause, params = self._scope_clause(tenant_id, [user_id])
        rows = await self._fetchall(f"SELECT count(*) FROM memories WHERE {clause}", params)
        return int(rows[0][0])

    async def scope_index_rows(
        self, tenant_id: str, user_id: str | None, *, embedding_model: str
    ) -> list[tuple[str, MemoryKind, MemoryStatus, float | None, bytes]]:
        """Id, kind, status, expiry and vector of every record of one scope that the index holds
        (any status but deleted, embedded by `embedding_model`): a scope's in-memory copy."""
        clause, params = self._scope_clause(tenant_id, [user_id])
        rows = await self._fetchall(
            f"SELECT id, kind, status, expires_at, embedding FROM memories WHERE {clause} "
            "AND embedding_model = ? AND embedding IS NOT NULL AND +status != 'deleted'",
            [*params, embedding_model],
        )
        return [(row[0], row[1], row[2], row[3], row[4]) for row in rows]

    async def list_memories(
        self,
        scope: Scope,
        *,
        kinds: Sequence[MemoryKind] | None,
        statuses: Sequence[MemoryStatus] | None,
        limit: int,
        offset: int,
        all_users: bool,
        after: str | None = None,
    ) -> list[MemoryRecord]:
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
            clause, user_params = _user_clause(scope.user_id)
            where.append(clause)
            params.extend(user_params)
        if kinds:
            where.append(f"kind IN ({_placeholders(len(kinds))})")
            params.extend(kinds)
        if statuses:
            where.append(f"status IN ({_placeholders(len(statuses))})")
            params.extend(statuses)
        else:
            where.append("status != 'deleted'")
        rows = await self._fetchall(
            f"SELECT {_SELECT_RECORD} FROM memories WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            (*params, max(0, limit), max(0, offset)),
        )
        return [_record_from_row(row) for row in rows]

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
        async with self._transaction() as db:
            async with db.execute(*_live_record_query(_SELECT_RECORD, scope, memory_id)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return None
            before = _record_from_row(row)
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
            sets = ", ".join(f"{column} = ?" for column in assignments)
            values = [
                _dumps(value) if column in _JSON_COLUMNS else value
                for column, value in assignments.items()
            ]
            await db.execute(
                f"UPDATE memories SET {sets} WHERE id = ? AND tenant_id = ?",
                (*values, memory_id, scope.tenant_id),
            )
            if INDEXED_FIELDS & changes.keys():
                await db.execute(_OUTBOX_INSERT, (memory_id, scope.tenant_id, now))
            # Utility and usage counters change on every request; they are not audited.
            audited = sorted(
                changes.keys()
                - {"q", "q_visits", "reward_ma", "last_reward", "n_pos", "n_neg", "last_used_at"}
            )
            if audited:
                await self._audit_many(
                    db, [before], "update", actor, now, {"changed": audited, **_status_of(changes)}
                )
            async with db.execute(
                f"SELECT {_SELECT_RECORD} FROM memories WHERE id = ?", (memory_id,)
            ) as cursor:
                after = await cursor.fetchone()
        return _record_from_row(after) if after is not None else None

    async def supersede(
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
        async with self._transaction() as db:
            async with db.execute(*_live_record_query("version, status", scope, old_id)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                raise KeyError(f"memory {old_id!r} not found in this scope")
            if row[1] == "superseded":
                raise ValueError(f"memory {old_id!r} is already superseded; supersede its latest")
            new.version = int(row[0]) + 1
            new.supersedes = old_id
            new.valid_from = at
            columns = ", ".join((*_RECORD_COLUMNS, "embedding"))
            await db.execute(
                f"INSERT INTO memories ({columns}) "
                f"VALUES ({_placeholders(len(_RECORD_COLUMNS) + 1)})",
                [*_record_values(new), embedding],
            )
            await db.execute(
                "UPDATE memories SET status = 'superseded', valid_to = ?, superseded_by = ?, "
                "updated_at = ? WHERE id = ? AND tenant_id = ?",
                (at, new.id, at, old_id, scope.tenant_id),
            )
            await db.executemany(
                _OUTBOX_INSERT,
                [(old_id, scope.tenant_id, at), (new.id, scope.tenant_id, at)],
            )
            await self._audit_many(db, [new], "supersede", actor, at, {"supersedes": old_id})
        return new

    async def delete_memory(self, scope: Scope, memory_id: str, *, actor: str) -> bool:
        """Erase one record's content, keeping a content-free tombstone for the version chain."""
        now = time.time()
        async with self._transaction() as db:
            async with db.execute(*_live_record_query("kind, version", scope, memory_id)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return False
            await db.execute(
                "UPDATE memories SET status = 'deleted', text = '', key_text = '', "
                "fields = '{}', metadata = '{}', keywords = '[]', tags = '[]', "
                "trust_reasons = '[]', evidence = '[]', embedding = NULL, updated_at = ? "
                "WHERE id = ? AND tenant_id = ?",
                (now, memory_id, scope.tenant_id),
            )
            await db.execute(
                "DELETE FROM memory_versions WHERE tenant_id = ? AND memory_id = ?",
                (scope.tenant_id, memory_id),
            )
            await db.execute(_OUTBOX_INSERT, (memory_id, scope.tenant_id, now))
            await db.execute(
                "INSERT INTO audit (tenant_id, at, actor, action, memory_id, user_id, detail) "
                "VALUES (?, ?, ?, 'delete', ?, ?, ?)",
                (
                    scope.tenant_id,
                    now,
                    actor,
                    memory_id,
                    scope.user_id,
                    _dumps({"kind": row[0], "version": row[1]}),
                ),
            )
        await self._forget_wal()
        return True

    async def delete_user(self, tenant_id: str, user_id: str, *, actor: str) -> int:
        """Erase every record of one user (rows and edit history); returns how many."""
        now = time.time()
        async with self._transaction() as db:
            async with db.execute(
                "SELECT id, status FROM memories WHERE tenant_id = ? AND user_id = ?",
                (tenant_id, user_id),
            ) as cursor:
                rows = list(await cursor.fetchall())
            ids = [row[0] for row in rows]
            live = sum(1 for row in rows if row[1] != "deleted")
            await db.execute(
                "DELETE FROM memory_versions WHERE tenant_id = ? AND memory_id IN "
                "(SELECT id FROM memories WHERE tenant_id = ? AND user_id = ?)",
                (tenant_id, tenant_id, user_id),
            )
            await db.execute(
                "DELETE FROM memories WHERE tenant_id = ? AND user_id = ?", (tenant_id, user_id)
            )
            await db.executemany(
                _OUTBOX_INSERT,
                [(memory_id, tenant_id, now) for memory_id in ids],
            )
            await db.execute(
                "INSERT INTO audit (tenant_id, at, actor, action, memory_id, user_id, detail) "
                "VALUES (?, ?, ?, 'delete_user', NULL, ?, ?)",
                (tenant_id, now, actor, user_id, _dumps({"count": live})),
            )
        await self._forget_wal()
        return live

    async def _forget_wal(self) -> None:
        """Checkpoint and truncate the WAL so erased content leaves the disk now.

        secure_delete zeroes freed space in the database file, but the WAL still holds the old
        page images until a checkpoint. A busy reader can delay the truncation; the next
        erasure or the automatic checkpoint completes it.
        """
        async with self._write_lock:
            await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def vectors(self, tenant_id: str, memory_ids: Sequence[str]) -> dict[str, bytes]:
        if not memory_ids:
            return {}
        rows = await self._fetchall(
            f"SELECT id, embedding FROM memories WHERE +tenant_id = ? "  # by primary key
            f"AND id IN ({_placeholders(len(memory_ids))}) AND embedding IS NOT NULL",
            (tenant_id, *memory_ids),
        )
        return {row[0]: row[1] for row in rows}

    async def audit(
        self, tenant_id: str, limit: int = 100, *, action: str | None = None
    ) -> list[dict[str, Any]]:
        """The tenant's audit entries, newest first; only those of `action` when given."""
        where, params = ("AND action = ?", [action]) if action is not None else ("", [])
        rows = await self._fetchall(
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

    # -- index outbox ------------------------------------------------------------------------

    async def outbox_batch(
        self, after_seq: int = 0, limit: int = 2000
    ) -> tuple[int, dict[str, str | None]]:
        """The oldest pending index changes after `after_seq`: the highest sequence number, and
        each distinct memory id with its tenant (None in entries written before schema 3)."""
        rows = await self._fetchall(
            "SELECT seq, memory_id, tenant_id FROM index_outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        if not rows:
            return 0, {}
        return int(rows[-1][0]), {row[1]: row[2] for row in rows}

    async def outbox_ack(self, up_to_seq: int, generation: int) -> None:
        """Forget the entries up to `up_to_seq`, applied to index generation `generation`.

        Only if that generation is still the one served (else the entries are for its
        successor to apply too), and, while a rebuild runs, only those it started after (it
        applies the later ones to its new generation before switching to it).
        """
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM index_outbox WHERE seq <= ? "
                f"AND ? = COALESCE(({_META_INT}), 0) "
                f"AND seq <= COALESCE(({_META_INT}), seq)",
                (up_to_seq, generation, INDEX_GENERATION_META, INDEX_BUILD_META),
            )

    async def begin_index_build(self) -> int:
        """Mark a rebuild as started; returns the outbox sequence number it starts after."""
        async with self._transaction() as db:
            async with db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'index_outbox'"
            ) as cursor:
                row = await cursor.fetchone()
            started_after = int(row[0]) if row is not None else 0
            await db.execute(_META_UPSERT, (INDEX_BUILD_META, str(started_after)))
        return started_after

    async def end_index_build(self) -> None:
        """Forget the rebuild marker of a rebuild that failed or died."""
        async with self._transaction() as db:
            await db.execute("DELETE FROM store_meta WHERE key = ?", (INDEX_BUILD_META,))

    async def switch_index_generation(
        self, generation: int, applied_up_to: int, meta: dict[str, str]
    ) -> None:
        """Serve index generation `generation` from now on, in one transaction: the pointer,
        `meta` (which embedder built it), the rebuild marker gone, and the outbox entries the
        new generation already holds (up to `applied_up_to`) forgotten."""
        async with self._transaction() as db:
            for key, value in {INDEX_GENERATION_META: str(generation), **meta}.items():
                await db.execute(_META_UPSERT, (key, value))
            await db.execute("DELETE FROM store_meta WHERE key = ?", (INDEX_BUILD_META,))
            await db.execute("DELETE FROM index_outbox WHERE seq <= ?", (applied_up_to,))

    async def index_generation(self) -> int:
        """The index generation searches and writes go to."""
        value = await self.get_meta(INDEX_GENERATION_META)
        return int(value) if value is not None else 0

    async def outbox_pending(self) -> int:
        rows = await self._fetchall("SELECT count(*) FROM index_outbox")
        return int(rows[0][0])

    _INDEX_SOURCE_COLUMNS = (
        "id, tenant_id, user_id, kind, status, expires_at, text, key_text, keywords, tags, "
        "embedding, embedding_model"
    )

    @staticmethod
    def _index_source(row: Sequence[Any]) -> IndexSource:
        return IndexSource(
            id=row[0],
            tenant_id=row[1],
            user_id=row[2],
            kind=row[3],
            status=row[4],
            expires_at=row[5],
            search_text=search_text_of(row[7], row[6], json.loads(row[8]), json.loads(row[9])),
            embed_text=embedding_input(row[7], row[6]),
            embedding=row[10],
            embedding_model=row[11],
        )

    async def index_sources(self, memory_ids: Sequence[str]) -> dict[str, IndexSource]:
        """Current state of these records for the index; absent ids were erased."""
        found: dict[str, IndexSource] = {}
        for start in range(0, len(memory_ids), 500):
            chunk = memory_ids[start : start + 500]
            rows = await self._fetchall(
                f"SELECT {self._INDEX_SOURCE_COLUMNS} FROM memories "
                f"WHERE id IN ({_placeholders(len(chunk))})",
                chunk,
            )
            for row in rows:
                found[row[0]] = self._index_source(row)
        return found

    async def iter_index_sources(self, batch: int = 1000) -> AsyncIterator[list[IndexSource]]:
        """Every live record, in batches, for rebuilding the index."""
        last = ""
        while True:
            rows = await self._fetchall(
                f"SELECT {self._INDEX_SOURCE_COLUMNS} FROM memories "
                "WHERE id > ? AND status != 'deleted' ORDER BY id LIMIT ?",
                (last, batch),
            )
            if not rows:
                return
            last = rows[-1][0]
            yield [self._index_source(row) for row in rows]

    async def set_embeddings(self, items: Sequence[tuple[str, bytes]], model_id: str) -> None:
        async with self._transaction() as db:
            await db.executemany(
                "UPDATE memories SET embedding = ?, embedding_model = ? WHERE id = ?",
                [(blob, model_id, memory_id) for memory_id, blob in items],
            )

    # -- requests and feedback (RequestStore) --------------------------------------------------

    async def log_request(self, entry: RequestLog) -> None:
        """Log one call. Raises DuplicateRequestError when the tenant already has a request
        with this id: the entry belongs to another call, and merging them would let one
        call's feedback move the memories of the other."""
        try:
            await self._grouped(partial(_insert_request, entry))
        except sqlite3.IntegrityError as exc:
            raise DuplicateRequestError(
                f"request {entry.request_id!r} of tenant {entry.tenant_id!r} is already logged; "
                "request ids must be unique per tenant"
            ) from exc

    async def get_request(self, tenant_id: str, request_id: str) -> RequestLog | None:
        rows = await self._fetchall(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE tenant_id = ? AND request_id = ?",
            (tenant_id, request_id),
        )
        return _request_from_row(rows[0]) if rows else None

    async def requests_by_client_id(self, tenant_id: str, client_request_id: str) -> list[str]:
        """Ids of the tenant's logged requests a client sent `client_request_id` with, oldest
        first (a client's id may name any number of calls)."""
        rows = await self._fetchall(
            "SELECT request_id FROM requests WHERE tenant_id = ? AND client_request_id = ? "
            "ORDER BY created_at",
            (tenant_id, client_request_id),
        )
        return [str(row[0]) for row in rows]

    _REQUEST_FIELDS = frozenset(
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

    async def set_request(self, tenant_id: str, request_id: str, **changes: Any) -> None:
        unknown = changes.keys() - self._REQUEST_FIELDS
        if unknown:
            raise ValueError(
                f"cannot set {sorted(unknown)} on a request; settable: "
                f"{sorted(self._REQUEST_FIELDS)}"
            )
        if not changes:
            return
        sets = ", ".join(f"{column} = ?" for column in changes)
        values = [
            _dumps(value) if column == "injected" else value for column, value in changes.items()
        ]
        async with self._transaction() as db:
            await db.execute(
                f"UPDATE requests SET {sets} WHERE tenant_id = ? AND request_id = ?",
                (*values, tenant_id, request_id),
            )

    async def record_feedback(
        self, tenant_id: str, request_id: str, source: str, reward: float, comment: str | None
    ) -> float | None:
        async with self._transaction() as db:
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

    # -- write queue (WriteQueue) --------------------------------------------------------------

    async def enqueue(self, tenant_id: str, kind: str, payload: dict[str, Any]) -> int:
        return int(await self._grouped(partial(_insert_job, tenant_id, kind, _dumps(payload))))

    async def claim(
        self,
        worker: str,
        limit: int = 1,
        *,
        first: Sequence[int] = (),
        skip_tenants: Sequence[str] = (),
    ) -> list[QueuedJob]:
        lease = (time.time(), self._lease_s)
        skip = list(skip_tenants)
        async with self._transaction() as db:
            # Jobs someone waits for go ahead of older ones, when they are claimable at all.
            rows = (
                await _claim_rows(db, worker, lease, limit, only=first, skip=skip) if first else []
            )
            if len(rows) < limit:
                rows += await _claim_rows(db, worker, lease, limit - len(rows), skip=skip)
        return sorted(map(_job_from_row, rows), key=lambda job: job.id)

    async def complete(self, job_id: int) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE jobs SET state = 'done', lease_until = NULL WHERE id = ?", (job_id,)
            )

    async def fail(self, job_id: int, error: str, *, retry_in_s: float | None) -> None:
        async with self._transaction() as db:
            if retry_in_s is None:
                await db.execute(
                    "UPDATE jobs SET state = 'failed', last_error = ?, lease_until = NULL "
                    "WHERE id = ?",
                    (error, job_id),
                )
            else:
                await db.execute(
                    "UPDATE jobs SET state = 'queued', last_error = ?, lease_until = NULL, "
                    "available_at = ? WHERE id = ?",
                    (error, time.time() + retry_in_s, job_id),
                )

    async def pending(self) -> int:
        rows = await self._fetchall(
            "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')"
        )
        return int(rows[0][0])

    async def unfinished(self, job_ids: Sequence[int]) -> set[int]:
        wanted = list(job_ids)[:_MAX_FIRST]
        if not wanted:
            return set()
        rows = await self._fetchall(
            f"SELECT id FROM jobs WHERE id IN ({_placeholders(len(wanted))}) "
            "AND state IN ('queued', 'running')",
            wanted,
        )
        return {int(row[0]) for row in rows}

    async def list_jobs(
        self,
        tenant_id: str,
        *,
        state: JobState | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[QueuedJob]:
        """One tenant's jobs, newest first (`state` narrows them, e.g. to the failed ones;
        `after` starts past that job id)."""
        where = ["tenant_id = ?"]
        params: list[Any] = [tenant_id]
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if after is not None:
            where.append("id < ?")
            params.append(after)
        rows = await self._fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [_job_from_row(row) for row in rows]

    async def retry_job(self, tenant_id: str, job_id: int) -> QueuedJob | None:
        """Queue a failed job of this tenant again, with a fresh count of attempts; its last
        error stays until it runs. None when the tenant has no failed job of that id."""
        async with (
            self._transaction() as db,
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, available_at = ?, "
                "claimed_by = NULL, lease_until = NULL "
                "WHERE id = ? AND tenant_id = ? AND state = 'failed' "
                f"RETURNING {_JOB_COLUMNS}",
                (time.time(), job_id, tenant_id),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return _job_from_row(row) if row is not None else None

    async def count_jobs(self, state: JobState) -> int:
        """Jobs in `state` across every tenant (for the readiness probe)."""
        rows = await self._fetchall("SELECT count(*) FROM jobs WHERE state = ?", (state,))
        return int(rows[0][0])

    async def prune_jobs(self, older_than: float) -> int:
        """Forget finished jobs (done) created before `older_than`; failed ones stay."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM jobs WHERE state = 'done' AND created_at < ?", (older_than,)
            )
            return int(cursor.rowcount)


def _request_from_row(row: Sequence[Any]) -> RequestLog:
    values = dict(zip(_REQUEST_COLUMN_NAMES, row, strict=True))
    values["injected"] = json.loads(values["injected"])
    return RequestLog(**values)


async def _insert_request(entry: RequestLog, db: aiosqlite.Connection) -> None:
    await db.execute(
        f"INSERT INTO requests ({_REQUEST_COLUMNS}) "
        f"VALUES ({_placeholders(len(_REQUEST_COLUMN_NAMES))})",
        (
            entry.request_id,
            entry.tenant_id,
            entry.user_id,
            entry.session_id,
            entry.trace_id,
            entry.model,
            entry.created_at,
            _dumps(entry.injected),
            entry.written_case_id,
            entry.reward,
            entry.status,
            entry.client_request_id,
        ),
    )


async def _insert_job(tenant_id: str, kind: str, payload: str, db: aiosqlite.Connection) -> int:
    now = time.time()
    cursor = await db.execute(
        "INSERT INTO jobs (tenant_id, kind, payload, state, created_at, available_at) "
        "VALUES (?, ?, ?, 'queued', ?, ?)",
        (tenant_id, kind, payload, now, now),
    )
    assert cursor.lastrowid is not None
    return int(cursor.lastrowid)


_MAX_FIRST = 100  # ids a claim may be asked to prefer (bounded: they are SQL parameters)


async def _claim_rows(
    db: aiosqlite.Connection,
    worker: str,
    lease: tuple[float, float],
    limit: int,
    *,
    only: Sequence[int] = (),
    skip: Sequence[str] = (),
) -> list[Any]:
    """Lease up to `limit` claimable jobs (of `only`, when given; none of the tenants in
    `skip`), oldest first: queued and due, or running with an expired lease (their worker died).
    `lease` is (now, lease seconds)."""
    now, lease_s = lease
    wanted = list(only)[:_MAX_FIRST]
    narrowed = f"id IN ({_placeholders(len(wanted))}) AND " if wanted else ""
    if skip:
        narrowed += f"tenant_id NOT IN ({_placeholders(len(skip))}) AND "
    async with db.execute(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, claimed_by = ?, "
        f"lease_until = ? WHERE id IN (SELECT id FROM jobs WHERE {narrowed}"
        "((state = 'queued' AND available_at <= ?) OR (state = 'running' AND lease_until < ?)) "
        f"ORDER BY id LIMIT ?) RETURNING {_JOB_COLUMNS}",
        (worker, now + lease_s, *wanted, *skip, now, now, max(0, limit)),
    ) as cursor:
        return list(await cursor.fetchall())


_GroupedWrite = Callable[[aiosqlite.Connection], Awaitable[Any]]


_JOB_COLUMNS = "id, tenant_id, kind, payload, state, attempts, created_at, available_at, last_error"


def _job_from_row(row: Sequence[Any]) -> QueuedJob:
    return QueuedJob(
        id=row[0],
        tenant_id=row[1],
        kind=row[2],
        payload=json.loads(row[3]),
        state=row[4],
        attempts=row[5],
        created_at=row[6],
        available_at=row[7],
        last_error=row[8],
    )


def _status_of(changes: dict[str, Any]) -> dict[str, Any]:
    return {"status": changes["status"]} if "status" in changes else {}


async def _migrate(db: aiosqlite.Connection, path: Path, migrations: Sequence[str]) -> None:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    latest = len(migrations)
    if current > latest:
        raise SchemaTooNewError(
            f"{path} has schema version {current}, but this memento-proxy only knows up to "
            f"version {latest}. Upgrade memento-proxy, or point MEMENTO_DATA_DIR at another "
            "folder; the file was left untouched."
        )
    for version in range(current, latest):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(migrations[version]):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        await db.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (our scripts hold no ';' inside literals)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]
