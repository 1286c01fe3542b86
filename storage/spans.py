"""Finished spans, kept for inspection: in their own SQLite file beside the data folder's
database (so trace writes never contend with memory writes), or in the PostgreSQL database of
the store when there is one (`storage.postgres.spans`), so that every replica shows every trace.

Each span is stored with the tenant, request and user it belongs to. Only some spans carry those
as attributes (the request's root span, and write-path spans started later with a link to it);
the others inherit them when they are written: from a span of the same trace that has them, or
else from the trace their root links to. Reads always filter by tenant.

Text is stored as valid UTF-8 whatever a span carries (`storage.span_rows`), so one span with a
lone surrogate never fails the batch it was written in.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import aiosqlite

from storage.errors import SetupError, unreadable_database
from storage.locks import held_once
from storage.records import SpanRow
from storage.span_rows import (
    CLIENT_REQUEST_ID_ATTR,
    REQUEST_SPAN,
    SPAN_COLUMNS,
    SpanWriter,
    insert_resolved,
    span_from_row,
)

TRACES_FILE = "traces.db"
# The same expression in the index and in every query, so SQLite uses the index.
_CLIENT_ID_SQL = f"json_extract(attributes, '$.\"{CLIENT_REQUEST_ID_ATTR}\"')"

_SCHEMA_VERSION = 1
SCHEMA_LOCK = "traces-schema"  # held while a process sets the file up
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    tenant_id TEXT NOT NULL DEFAULT '',
    request_id TEXT,
    user_id TEXT,
    name TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    attributes TEXT NOT NULL,
    events TEXT NOT NULL,
    links TEXT NOT NULL,
    linked_trace_id TEXT,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_by_request ON spans (tenant_id, request_id, start_ns);
CREATE INDEX IF NOT EXISTS spans_request_roots ON spans (tenant_id, start_ns)
    WHERE name = '{REQUEST_SPAN}';
CREATE INDEX IF NOT EXISTS spans_by_client_request ON spans ({_CLIENT_ID_SQL})
    WHERE name = '{REQUEST_SPAN}';
CREATE INDEX IF NOT EXISTS spans_by_link ON spans (linked_trace_id)
    WHERE linked_trace_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS spans_unresolved ON spans (start_ns) WHERE tenant_id = '';
"""

# Spans whose attributes the request list summarises (memory ids injected, memories written).
_SUMMARY_SPANS = ("memento.inject", "memento.write")


class SpanDialect(NamedTuple):
    """Where the span table's SQL differs by engine."""

    client_id_sql: str  # the client's request id of a request span, as text
    unindexed: str  # the prefix that keeps the planner from an index (SQLite's `+`)
    row_ref: str  # a row's physical id, for deleting in chunks (`rowid`, `ctid`)


SQLITE_SPANS = SpanDialect(_CLIENT_ID_SQL, "+", "rowid")


RowsReader = Callable[[str, Sequence[Any]], Awaitable[list[Mapping[str, Any]]]]


class SpanStoreUnavailable(RuntimeError):
    """The span store cannot take writes for now (a full disk, a locked file, a database out of
    reach): the exporter holds the spans and tries again."""


class SpanTable:
    """The `SpanStore` over one `spans` table, whichever engine holds it.

    Writes come from the exporter's thread on their own blocking connection (so they never
    wait for, or hold up, the event loop); reads and retention use the engine's async side.
    """

    def __init__(
        self,
        read: RowsReader,
        writer: SpanWriter,
        dialect: SpanDialect,
        *,
        close: Callable[[], Awaitable[None]],
        where: str,
    ) -> None:
        self._read = read
        self._writer = writer
        self._dialect = dialect
        self._close = close
        self._write_lock = threading.Lock()
        self.where = where  # what holds the spans, as people read it

    async def close(self) -> None:
        with self._write_lock:
            self._writer.close()
        await self._close()

    async def write_spans(self, spans: Sequence[SpanRow]) -> None:
        """Insert a batch (one transaction) and resolve who owns spans that lack a tenant."""
        await asyncio.to_thread(self.write_spans_blocking, spans)

    def write_spans_blocking(self, spans: Sequence[SpanRow]) -> None:
        """`write_spans` for the exporter's own thread (never call it on the event loop)."""
        if not spans:
            return
        with self._write_lock:
            db = self._writer
            db.begin()
            try:
                insert_resolved(db, spans)
                db.commit()  # a full disk fails here: roll back, ready for the next
            except BaseException:
                db.rollback()
                raise

    async def list_traces(
        self,
        tenant_id: str,
        *,
        limit: int = 50,
        user_id: str | None = None,
        client_request_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first: request_id, client_request_id, trace_id, user, model, start, duration,
        status, counts. `client_request_id` keeps the requests a client sent that id with."""
        where = ["tenant_id = ?", "name = ?"]
        params: list[Any] = [tenant_id, REQUEST_SPAN]
        if client_request_id is not None:
            # A client's id names few requests: find them by it, not by the tenant's newest.
            where[0] = f"{self._dialect.unindexed}tenant_id = ?"
            where.append(f"{self._dialect.client_id_sql} = ?")
            params.append(client_request_id)
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        sql = f"SELECT {SPAN_COLUMNS} FROM spans WHERE {' AND '.join(where)}"
        sql += " ORDER BY start_ns DESC LIMIT ?"
        params.append(max(0, limit))
        roots = [span_from_row(row) for row in await self._read(sql, params)]
        counts = await self._counts(tenant_id, [r.request_id for r in roots if r.request_id])
        return [_summary(root, counts.get(root.request_id or "", {})) for root in roots]

    async def _counts(self, tenant_id: str, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not request_ids:
            return {}
        marks = ", ".join("?" for _ in request_ids)
        counts: dict[str, dict[str, Any]] = {
            rid: {"spans": 0, "errors": 0, "injected": 0, "written": 0} for rid in request_ids
        }
        rows = await self._read(
            "SELECT request_id, name, status, attributes FROM spans"
            f" WHERE tenant_id = ? AND request_id IN ({marks})",
            [tenant_id, *request_ids],
        )
        for row in rows:
            entry = counts[row["request_id"]]
            entry["spans"] += 1
            entry["errors"] += row["status"].startswith("error")
            if row["name"] in _SUMMARY_SPANS:
                ids = json.loads(row["attributes"]).get("memento.memory.ids", [])
                key = "injected" if row["name"] == "memento.inject" else "written"
                entry[key] += len(_as_list(ids))
        return counts

    async def get_trace(self, tenant_id: str, request_id: str) -> list[SpanRow]:
        """Every span of one request, the later write path included, in start order."""
        rows = await self._read(
            f"SELECT {SPAN_COLUMNS} FROM spans WHERE tenant_id = ? AND request_id = ?"
            " ORDER BY start_ns, end_ns DESC",
            (tenant_id, request_id),
        )
        return [span_from_row(row) for row in rows]

    async def prune_spans(self, tenant_id: str, *, older_than: float, keep_max: int) -> int:
        """Delete this tenant's spans started before `older_than` (epoch seconds), and every
        request beyond the newest `keep_max`. Returns how many spans were deleted."""
        return await asyncio.to_thread(self._prune_blocking, tenant_id, older_than, keep_max)

    def _prune_blocking(self, tenant_id: str, older_than: float, keep_max: int) -> int:
        deleted = self._delete_in_chunks(
            "tenant_id = ? AND start_ns < ?", (tenant_id, int(older_than * 1e9))
        )
        with self._write_lock:
            row = self._writer.execute(
                "SELECT start_ns FROM spans WHERE tenant_id = ? AND name = ?"
                " ORDER BY start_ns DESC LIMIT 1 OFFSET ?",
                (tenant_id, REQUEST_SPAN, max(0, keep_max)),
            ).fetchone()
        if row is not None:
            deleted += self._delete_in_chunks(
                "tenant_id = ? AND request_id IN (SELECT request_id FROM spans"
                " WHERE tenant_id = ? AND name = ? AND start_ns <= ?)",
                (tenant_id, tenant_id, REQUEST_SPAN, row[0]),
            )
        return deleted

    async def prune_unresolved(self, *, older_than: float) -> int:
        """Delete spans never tied to a tenant (e.g. spans outside any request) by age."""
        return await asyncio.to_thread(
            self._delete_in_chunks, "tenant_id = '' AND start_ns < ?", (int(older_than * 1e9),)
        )

    async def delete_user_spans(self, tenant_id: str, user_id: str) -> int:
        """Forget every trace of one user's requests (an erased user's text must not outlive
        them in a trace recorded with content), the write path's that learned from them
        included: they carry the request's id."""
        return await asyncio.to_thread(self._delete_user_blocking, tenant_id, user_id)

    def _delete_user_blocking(self, tenant_id: str, user_id: str) -> int:
        # The requests first: the root spans that name the user go in the first chunk.
        with self._write_lock:
            rows = self._writer.execute(
                "SELECT DISTINCT request_id FROM spans WHERE tenant_id = ? AND user_id = ?"
                " AND request_id IS NOT NULL",
                (tenant_id, user_id),
            ).fetchall()
        request_ids = [row[0] for row in rows]
        deleted = 0
        for start in range(0, len(request_ids), 500):
            batch = request_ids[start : start + 500]
            marks = ", ".join("?" * len(batch))
            deleted += self._delete_in_chunks(
                f"tenant_id = ? AND request_id IN ({marks})", (tenant_id, *batch)
            )
        return deleted

    def _delete_in_chunks(self, where: str, params: tuple[Any, ...], chunk: int = 5000) -> int:
        """Delete in short transactions so span writes never wait long behind retention."""
        deleted = 0
        while True:
            with self._write_lock:
                ref = self._dialect.row_ref
                self._writer.begin()
                try:
                    cursor = self._writer.execute(
                        f"DELETE FROM spans WHERE {ref} IN (SELECT {ref} FROM spans"
                        f" WHERE {where} LIMIT {int(chunk)})",
                        params,
                    )
                    count = max(0, int(cursor.rowcount))
                    self._writer.commit()
                except BaseException:
                    self._writer.rollback()
                    raise
            deleted += count
            if count < chunk:
                return deleted

    async def request_tenants(self, request_id: str) -> list[str]:
        """Tenants with spans for this request id (operator look-up across tenants; the
        proxy's ids are unique, but a file may hold traces from releases that took the
        client's x-request-id as the request's id)."""
        rows = await self._read(
            "SELECT DISTINCT tenant_id FROM spans WHERE request_id = ? AND tenant_id != ''"
            " ORDER BY tenant_id",
            (request_id,),
        )
        return [row["tenant_id"] for row in rows]

    async def client_requests(self, client_request_id: str) -> list[tuple[str, str]]:
        """(tenant, request id) of every request a client sent this id with, in every tenant,
        oldest first (operator look-up: `memento-proxy trace` given a client's id)."""
        rows = await self._read(
            f"SELECT tenant_id, request_id, start_ns FROM spans WHERE name = ?"
            f" AND {self._dialect.client_id_sql} = ? AND tenant_id != ''"
            " AND request_id IS NOT NULL ORDER BY start_ns",
            (REQUEST_SPAN, client_request_id),
        )
        return [(row["tenant_id"], row["request_id"]) for row in rows]

    async def tenants(self) -> list[str]:
        """Tenants that have spans stored (what retention has to visit)."""
        rows = await self._read("SELECT DISTINCT tenant_id FROM spans WHERE tenant_id != ''", ())
        return [row["tenant_id"] for row in rows]


class _SQLiteWriter:
    """`SpanWriter` on a sqlite3 connection in autocommit mode."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Any:
        return self._guarded(self._conn.execute, sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any:
        return self._guarded(self._conn.executemany, sql, rows)

    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()

    @staticmethod
    def _guarded(run: Callable[..., Any], sql: str, params: Any) -> Any:
        try:
            return run(sql, params)
        except sqlite3.OperationalError as exc:  # no room, or locked: the exporter waits
            raise SpanStoreUnavailable(str(exc)) from exc


async def _prepare_spans(db: aiosqlite.Connection, path: Path) -> None:
    """Bring the span file to this release's schema; a SetupError for a newer one."""
    await db.execute("PRAGMA busy_timeout=5000")
    # Processes opening a new file at once take turns (switching it to WAL does not wait).
    async with held_once(path.parent, SCHEMA_LOCK):
        await db.execute("PRAGMA journal_mode=WAL")
        version = await _user_version(db)
        if version > _SCHEMA_VERSION:
            raise SetupError(
                f"{path} was written by a newer memento-proxy (span schema {version}); "
                "upgrade memento-proxy or point --data-dir elsewhere"
            )
        await db.executescript(_SCHEMA)
        await db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        await db.commit()


async def open_sqlite_spans(path: Path) -> SpanTable:
    """The span store in the SQLite file at `path` (created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    db.row_factory = aiosqlite.Row
    try:  # else the connection's thread, left open, keeps the process from exiting
        await _prepare_spans(db, path)
    except BaseException as error:
        await db.close()
        if isinstance(error, sqlite3.DatabaseError):
            unreadable = unreadable_database(path, error)
            if unreadable is not None:
                raise unreadable from None
        raise
    await db.execute("PRAGMA synchronous=NORMAL")
    writer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    writer.execute("PRAGMA synchronous=NORMAL")
    writer.execute("PRAGMA busy_timeout=5000")

    async def read(sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        async with db.execute(sql, params) as cursor:
            # sqlite3.Row reads by column name, as the table asks of a row.
            return cast(list[Mapping[str, Any]], list(await cursor.fetchall()))

    return SpanTable(read, _SQLiteWriter(writer), SQLITE_SPANS, close=db.close, where=str(path))


async def _user_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


def _summary(root: SpanRow, counts: dict[str, Any]) -> dict[str, Any]:
    attrs = root.attributes
    return {
        "request_id": root.request_id,
        "client_request_id": attrs.get(CLIENT_REQUEST_ID_ATTR),
        "trace_id": root.trace_id,
        "user": root.user_id,
        "model": attrs.get("gen_ai.request.model"),
        "start": root.start_ns / 1e9,
        "duration_ms": round((root.end_ns - root.start_ns) / 1e6, 3),
        "status": root.status,
        "spans": counts.get("spans", 0),
        "errors": counts.get("errors", 0),
        "injected": counts.get("injected", 0),
        "written": counts.get("written", 0),
    }


def _as_list(value: Any) -> list[Any]:
    """Span attributes hold lists natively or as JSON text; accept either."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [value] if value else []
    return list(value) if isinstance(value, list | tuple) else []
