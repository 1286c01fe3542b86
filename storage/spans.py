"""Finished spans in their own SQLite file, so trace writes never contend with memory writes.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from storage.records import SpanRow
from storage.span_rows import SPAN_COLUMNS, linked_trace, span_from_row, span_params, storable_row

REQUEST_SPAN = "memento.request"
CLIENT_REQUEST_ID_ATTR = "memento.client_request_id"  # on the request span, when a client sent one
TRACES_FILE = "traces.db"
# The same expression in the index and in every query, so SQLite uses the index.
_CLIENT_ID_SQL = f"json_extract(attributes, '$.\"{CLIENT_REQUEST_ID_ATTR}\"')"

_SCHEMA_VERSION = 1
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


class SQLiteSpanStore:
    """The embedded `SpanStore` on `traces.db` in WAL mode.

    Writes come from the exporter's thread on their own blocking connection (so they never
    wait for, or hold up, the event loop); reads and retention use an aiosqlite connection.
    """

    def __init__(self, db: aiosqlite.Connection, writer: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._writer = writer
        self._write_lock = threading.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> SQLiteSpanStore:
        """Open (creating if needed) the span database at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA busy_timeout=5000")
        version = await _user_version(db)
        if version > _SCHEMA_VERSION:
            await db.close()
            raise RuntimeError(
                f"{path} was written by a newer memento-proxy (span schema {version}); "
                "upgrade memento-proxy or point --data-dir elsewhere"
            )
        await db.executescript(_SCHEMA)
        await db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        await db.commit()
        writer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        writer.execute("PRAGMA synchronous=NORMAL")
        writer.execute("PRAGMA busy_timeout=5000")
        return cls(db, writer, path)

    async def close(self) -> None:
        with self._write_lock:
            self._writer.close()
        await self._db.close()

    async def write_spans(self, spans: Sequence[SpanRow]) -> None:
        """Insert a batch (one transaction) and resolve who owns spans that lack a tenant."""
        await asyncio.to_thread(self.write_spans_blocking, spans)

    def write_spans_blocking(self, spans: Sequence[SpanRow]) -> None:
        """`write_spans` for the exporter's own thread (never call it on the event loop)."""
        if not spans:
            return
        with self._write_lock:
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                _insert_resolved(db, spans)
                db.execute("COMMIT")  # a full disk fails here: roll back, ready for the next
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
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
            where[0] = "+tenant_id = ?"
            where.append(f"{_CLIENT_ID_SQL} = ?")
            params.append(client_request_id)
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        sql = f"SELECT {SPAN_COLUMNS} FROM spans WHERE {' AND '.join(where)}"
        sql += " ORDER BY start_ns DESC LIMIT ?"
        params.append(max(0, limit))
        async with self._db.execute(sql, params) as cursor:
            roots = [span_from_row(row) for row in await cursor.fetchall()]
        counts = await self._counts(tenant_id, [r.request_id for r in roots if r.request_id])
        return [_summary(root, counts.get(root.request_id or "", {})) for root in roots]

    async def _counts(self, tenant_id: str, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not request_ids:
            return {}
        marks = ", ".join("?" for _ in request_ids)
        counts: dict[str, dict[str, Any]] = {
            rid: {"spans": 0, "errors": 0, "injected": 0, "written": 0} for rid in request_ids
        }
        async with self._db.execute(
            "SELECT request_id, name, status, attributes FROM spans"
            f" WHERE tenant_id = ? AND request_id IN ({marks})",
            [tenant_id, *request_ids],
        ) as cursor:
            async for request_id, name, status, attributes in cursor:
                entry = counts[request_id]
                entry["spans"] += 1
                entry["errors"] += status.startswith("error")
                if name in _SUMMARY_SPANS:
                    ids = json.loads(attributes).get("memento.memory.ids", [])
                    key = "injected" if name == "memento.inject" else "written"
                    entry[key] += len(_as_list(ids))
        return counts

    async def get_trace(self, tenant_id: str, request_id: str) -> list[SpanRow]:
        """Every span of one request, the later write path included, in start order."""
        async with self._db.execute(
            f"SELECT {SPAN_COLUMNS} FROM spans WHERE tenant_id = ? AND request_id = ?"
            " ORDER BY start_ns, end_ns DESC",
            (tenant_id, request_id),
        ) as cursor:
            return [span_from_row(row) for row in await cursor.fetchall()]

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

    def _delete_in_chunks(self, where: str, params: tuple[Any, ...], chunk: int = 5000) -> int:
        """Delete in short transactions so span writes never wait long behind retention."""
        deleted = 0
        while True:
            with self._write_lock:
                cursor = self._writer.execute(
                    f"DELETE FROM spans WHERE rowid IN (SELECT rowid FROM spans WHERE {where}"
                    f" LIMIT {int(chunk)})",
                    params,
                )
                count = max(0, cursor.rowcount)
            deleted += count
            if count < chunk:
                return deleted

    async def request_tenants(self, request_id: str) -> list[str]:
        """Tenants with spans for this request id (operator look-up across tenants; the
        proxy's ids are unique, but a file may hold traces from releases that took the
        client's x-request-id as the request's id)."""
        async with self._db.execute(
            "SELECT DISTINCT tenant_id FROM spans WHERE request_id = ? AND tenant_id != ''"
            " ORDER BY tenant_id",
            (request_id,),
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def client_requests(self, client_request_id: str) -> list[tuple[str, str]]:
        """(tenant, request id) of every request a client sent this id with, in every tenant,
        oldest first (operator look-up: `memento-proxy trace` given a client's id)."""
        async with self._db.execute(
            f"SELECT tenant_id, request_id FROM spans WHERE name = ? AND {_CLIENT_ID_SQL} = ?"
            " AND tenant_id != '' AND request_id IS NOT NULL ORDER BY start_ns",
            (REQUEST_SPAN, client_request_id),
        ) as cursor:
            return [(row[0], row[1]) for row in await cursor.fetchall()]

    async def tenants(self) -> list[str]:
        """Tenants that have spans stored (what retention has to visit)."""
        async with self._db.execute(
            "SELECT DISTINCT tenant_id FROM spans WHERE tenant_id != ''"
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]


async def open_span_store(data_dir: Path | str) -> SQLiteSpanStore:
    """The span store of a data directory: `<data_dir>/traces.db`."""
    return await SQLiteSpanStore.open(Path(data_dir) / TRACES_FILE)


Owner = tuple[str, str | None, str | None]  # tenant, request id, user id
_OWNER_SQL = (
    "SELECT tenant_id, request_id, user_id FROM spans WHERE trace_id = ? AND tenant_id != ''"
    " ORDER BY request_id IS NULL, parent_span_id IS NOT NULL LIMIT 1"
)


def _insert_resolved(db: sqlite3.Connection, spans: Sequence[SpanRow]) -> None:
    """Insert a batch, giving each span without a tenant the owner of its trace (or of the
    trace it links to), from this batch when possible, else from what is stored. Then claim
    spans stored earlier that were waiting for an owner arriving in this batch.

    A few statements per batch: the exporter shares the GIL with the event loop, and every
    statement is a chance to wait for it.
    """
    spans = [storable_row(span) for span in spans]
    owners: dict[str, Owner] = {}
    for span in sorted(spans, key=lambda s: (s.request_id is None, s.parent_span_id is not None)):
        if span.tenant_id and span.trace_id not in owners:
            owners[span.trace_id] = (span.tenant_id, span.request_id, span.user_id)
    found_in_batch = set(owners)  # traces whose owner is known now: claim their waiting spans
    stored: dict[str, Owner | None] = {}

    def owner_of(trace_id: str) -> Owner | None:
        if trace_id in owners:
            return owners[trace_id]
        if trace_id not in stored:
            row = db.execute(_OWNER_SQL, (trace_id,)).fetchone()
            stored[trace_id] = None if row is None else (row[0], row[1], row[2])
        return stored[trace_id]

    links = {s.trace_id: linked_trace(s) for s in spans if linked_trace(s)}
    params = []
    for span in spans:
        row = span_params(span)
        if not span.tenant_id:
            linked = links.get(span.trace_id)
            owner = owner_of(span.trace_id) or (owner_of(linked) if linked else None)
            if owner is not None:
                owners.setdefault(span.trace_id, owner)
                found_in_batch.add(span.trace_id)
                tenant_id, request_id, user_id = owner
                row = (
                    *row[:3],
                    tenant_id,
                    span.request_id or request_id,
                    span.user_id or user_id,
                    *row[6:],
                )
        params.append(row)
    db.executemany(
        f"INSERT OR REPLACE INTO spans ({SPAN_COLUMNS}, linked_trace_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params,
    )
    if found_in_batch:
        _claim_waiting(db, {t: owners[t] for t in found_in_batch})


def _claim_waiting(db: sqlite3.Connection, owners: dict[str, Owner]) -> None:
    """Spans stored before their owner arrived: same trace, or a trace linking to it."""
    marks = ", ".join("?" for _ in owners)
    same = db.execute(
        "SELECT DISTINCT trace_id, trace_id FROM spans"
        f" WHERE tenant_id = '' AND trace_id IN ({marks})",
        list(owners),
    ).fetchall()
    linking = db.execute(
        "SELECT DISTINCT trace_id, linked_trace_id FROM spans"
        f" WHERE tenant_id = '' AND linked_trace_id IN ({marks})",
        list(owners),
    ).fetchall()
    for trace_id, owner_trace in [*same, *linking]:
        tenant_id, request_id, user_id = owners[owner_trace]
        db.execute(
            "UPDATE spans SET tenant_id = ?, request_id = coalesce(request_id, ?),"
            " user_id = coalesce(user_id, ?) WHERE trace_id = ? AND tenant_id = ''",
            (tenant_id, request_id, user_id, trace_id),
        )


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
