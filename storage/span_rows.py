"""A span as its row in the span store holds it, and back; and the resolution, as a batch is
written, of the tenant, request and user of spans that do not carry them.

Text is stored as valid UTF-8 whatever a span carries: a lone surrogate (which Python strings
can hold and UTF-8 cannot encode) becomes U+FFFD in that span alone, instead of failing the
batch it was written in, and with it other requests' and other tenants' spans.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from storage.records import SpanRow

REQUEST_SPAN = "memento.request"
CLIENT_REQUEST_ID_ATTR = "memento.client_request_id"  # on the request span, when a client sent one

SPAN_COLUMNS = (
    "trace_id, span_id, parent_span_id, tenant_id, request_id, user_id, name, start_ns, end_ns,"
    " status, attributes, events, links"
)


def linked_trace(span: SpanRow) -> str | None:
    linked = span.links[0].get("trace_id") if span.links else None
    return str(linked) if linked else None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(text: str) -> str:
    """`text` with any lone surrogate replaced by U+FFFD, so that it encodes as UTF-8."""
    if text.isascii():  # constant time: the common case costs nothing
        return text
    return _SURROGATE.sub("\ufffd", text)


def storable_row(span: SpanRow) -> SpanRow:
    """The span with the text its owner is resolved from made storable (the JSON columns are
    made storable as they are encoded)."""

    def text(value: str | None) -> str | None:
        return None if value is None else _storable(value)

    fields = (span.tenant_id, span.request_id, span.user_id, span.name, span.status)
    if all(value is None or value.isascii() for value in fields):
        return span
    return dataclasses.replace(
        span,
        tenant_id=_storable(span.tenant_id),
        request_id=text(span.request_id),
        user_id=text(span.user_id),
        name=_storable(span.name),
        status=_storable(span.status),
    )


def _storable_json(value: Any) -> str:
    # Unescaped (ensure_ascii=False), a surrogate stays one character that _storable can find.
    return _storable(json.dumps(value, default=str, ensure_ascii=False))


def span_params(span: SpanRow) -> tuple[Any, ...]:
    return (
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        span.tenant_id,
        span.request_id,
        span.user_id,
        span.name,
        span.start_ns,
        span.end_ns,
        span.status,
        _storable_json(span.attributes),
        _storable_json(span.events),
        _storable_json(span.links),
        linked_trace(span),
    )


def span_from_row(row: Mapping[str, Any]) -> SpanRow:
    return SpanRow(
        trace_id=row["trace_id"],
        span_id=row["span_id"],
        parent_span_id=row["parent_span_id"],
        tenant_id=row["tenant_id"],
        request_id=row["request_id"],
        user_id=row["user_id"],
        name=row["name"],
        start_ns=row["start_ns"],
        end_ns=row["end_ns"],
        status=row["status"],
        attributes=json.loads(row["attributes"]),
        events=json.loads(row["events"]),
        links=json.loads(row["links"]),
    )


class SpanWriter(Protocol):
    """The blocking connection spans are written with, in the exporter's thread (a DB-API
    connection with `?` placeholders, in one transaction from `begin` to `commit`)."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any: ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


Owner = tuple[str, str | None, str | None]  # tenant, request id, user id
_OWNER_SQL = (
    "SELECT tenant_id, request_id, user_id FROM spans WHERE trace_id = ? AND tenant_id != ''"
    " ORDER BY request_id IS NULL, parent_span_id IS NOT NULL LIMIT 1"
)


_UPSERT = (
    f"INSERT INTO spans ({SPAN_COLUMNS}, linked_trace_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (trace_id, span_id) DO UPDATE"
    " SET parent_span_id = excluded.parent_span_id, tenant_id = excluded.tenant_id,"
    " request_id = excluded.request_id, user_id = excluded.user_id, name = excluded.name,"
    " start_ns = excluded.start_ns, end_ns = excluded.end_ns, status = excluded.status,"
    " attributes = excluded.attributes, events = excluded.events, links = excluded.links,"
    " linked_trace_id = excluded.linked_trace_id"
)


def insert_resolved(db: SpanWriter, spans: Sequence[SpanRow]) -> None:
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
    db.executemany(_UPSERT, params)
    if found_in_batch:
        _claim_waiting(db, {t: owners[t] for t in found_in_batch})


def _claim_waiting(db: SpanWriter, owners: dict[str, Owner]) -> None:
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
