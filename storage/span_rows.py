"""A span as its SQLite row holds it, and back.

Text is stored as valid UTF-8 whatever a span carries: a lone surrogate (which Python strings
can hold and UTF-8 cannot encode) becomes U+FFFD in that span alone, instead of failing the
batch it was written in, and with it other requests' and other tenants' spans.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import aiosqlite

from storage.records import SpanRow

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


def span_from_row(row: aiosqlite.Row) -> SpanRow:
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
