"""The schema of the SQLite database, as named steps applied in order.

The schema version is `PRAGMA user_version`, the number of steps applied: `migrate` upgrades an
older file in place at open, one transaction per step, and refuses a file from a newer release
with a message that says what to do (the file is left untouched).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import aiosqlite

from storage.errors import SetupError
from storage.records import MEMORY_KINDS, MEMORY_STATUSES


class SchemaTooNewError(SetupError):
    """The database was written by a newer release than this one."""


class Migration(NamedTuple):
    """One step of the schema: what it adds (its name) and the statements that add it."""

    name: str
    sql: str


_KINDS_SQL = ", ".join(f"'{kind}'" for kind in MEMORY_KINDS)
_STATUSES_SQL = ", ".join(f"'{status}'" for status in MEMORY_STATUSES)

# Step i upgrades the schema from version i to i+1. Never edit a released step: append.
# Shared with PostgreSQL's schema: the same step in both.
JOBS_USER = """
    ALTER TABLE jobs ADD COLUMN user_id TEXT;
    CREATE INDEX jobs_open_by_user ON jobs (tenant_id, user_id)
        WHERE state IN ('queued', 'running')
"""
MEMORY_SEARCH_TEXT = "ALTER TABLE memories ADD COLUMN search_text TEXT"
# Stored responses by id alone: whether another tenant holds an id a relayed call names.
RESPONSES_BY_ID = "CREATE INDEX responses_id ON responses (response_id)"

MIGRATIONS: tuple[Migration, ...] = (
    # 1: memories, audit, requests, feedback, write queue, index outbox.
    Migration(
        "memories_audit_requests_feedback_jobs_outbox",
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
    ),
    # 2: edit history of in-place text changes, store metadata (which embedder built the
    # index), requests by user.
    Migration(
        "edit_history_store_meta_requests_by_user",
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
    ),
    # 3: the outbox names each change's tenant, so the index can drop an erased record from
    # its tenant's table without looking through every tenant's (NULL in older entries).
    Migration(
        "outbox_names_tenant",
        """
    ALTER TABLE index_outbox ADD COLUMN tenant_id TEXT;
    """,
    ),
    # 4: the id a client sent with a call, kept apart from the proxy's own request id (any
    # number of calls may share it), and found by it.
    Migration(
        "client_request_ids",
        """
    ALTER TABLE requests ADD COLUMN client_request_id TEXT;
    CREATE INDEX requests_client ON requests (tenant_id, client_request_id)
        WHERE client_request_id IS NOT NULL;
    """,
    ),
    # 5: answers of the Responses API, kept for `previous_response_id` and `GET
    # /v1/responses/{id}`; found by tenant and id, erased by tenant and user.
    Migration(
        "stored_responses",
        """
    CREATE TABLE responses (
        tenant_id TEXT NOT NULL,
        response_id TEXT NOT NULL,
        user_id TEXT,
        previous_response_id TEXT,
        created_at REAL NOT NULL,
        input_items TEXT NOT NULL,
        response TEXT NOT NULL,
        PRIMARY KEY (tenant_id, response_id)
    );
    CREATE INDEX responses_user ON responses (tenant_id, user_id);
    """,
    ),
    # 6: a digest of each record's normalised text (`records.text_hash`), so the write path
    # finds an exact duplicate with one indexed read, before embedding anything. Records written
    # before keep NULL: consolidation still recognises them, only later.
    Migration(
        "memory_text_hash",
        """
    ALTER TABLE memories ADD COLUMN text_hash TEXT;
    CREATE INDEX memories_text_hash ON memories (tenant_id, text_hash)
        WHERE text_hash IS NOT NULL;
    """,
    ),
    # 7: the user of each write job (`storage.sqlite.queue`), so that a call finds its user's
    # exchanges not yet learned, whichever process queued them, with one indexed read.
    Migration("jobs_user", JOBS_USER),
    # 8: each record's BM25 document (`storage.sqlite.outbox.search_text_of`), made when the
    # record is written, so loading a scope's copy or an index batch does not make it again.
    # Records written before get theirs when the store opens (`IndexOutbox.fill_search_texts`).
    Migration("memory_search_text", MEMORY_SEARCH_TEXT),
    # 9: a response id found whatever its tenant, so that a call relayed to a native upstream
    # does not continue another tenant's conversation (`ResponseStore.held_by_another_tenant`).
    Migration("responses_by_id", RESPONSES_BY_ID),
)
SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(db: aiosqlite.Connection, path: Path, migrations: Sequence[Migration]) -> None:
    """Apply the steps of `migrations` the file at `path` lacks (`migrations` is shorter than
    MIGRATIONS only in tests that build an older schema)."""
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
            for statement in statements(migrations[version].sql):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        await db.execute("COMMIT")


def statements(script: str) -> list[str]:
    """Split a migration script into statements (our scripts hold no ';' inside literals)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]
