"""Between dataclasses and SQL rows: the columns of a record, its JSON columns, shared clauses.

The columns of `memories` and `requests` are the fields of `MemoryRecord` and `RequestLog`, in
their order; the fields typed as a list or dict are stored as JSON text.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, get_origin, get_type_hints

from storage.records import MemoryRecord, RequestLog, Scope

if TYPE_CHECKING:
    from storage.relational import SQLConnection


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def placeholders(count: int) -> str:
    return ", ".join("?" * count)


async def fill_missing(
    connection: SQLConnection,
    column: str,
    sources: str,
    make: Callable[[list[Any]], Awaitable[list[Any]]],
    batch: int = 5_000,
) -> int:
    """Give the records (not erased) whose derived `column` is NULL its value, a batch per
    transaction; returns how many. `make` turns rows of the `sources` columns (the id first)
    into the values, in order."""
    filled = 0
    while True:
        rows = await connection.fetchall(
            f"SELECT {sources} FROM memories WHERE {column} IS NULL AND status != 'deleted' "
            "LIMIT ?",
            (batch,),
        )
        if not rows:
            return filled
        values = await make(rows)
        async with connection.transaction() as db:
            await db.executemany(
                f"UPDATE memories SET {column} = ? WHERE id = ?",
                [(value, row[0]) for value, row in zip(values, rows, strict=True)],
            )
        filled += len(rows)


def _columns(record_type: type[Any]) -> tuple[tuple[str, ...], frozenset[str]]:
    """The fields of a dataclass in order, and those holding a list or dict (JSON columns)."""
    hints = get_type_hints(record_type)
    names = tuple(field.name for field in dataclasses.fields(record_type))
    json_columns = frozenset(name for name in names if get_origin(hints[name]) in (list, dict))
    return names, json_columns


RECORD_COLUMNS, JSON_COLUMNS = _columns(MemoryRecord)
SELECT_RECORD = ", ".join(RECORD_COLUMNS)
REQUEST_COLUMN_NAMES, _REQUEST_JSON = _columns(RequestLog)
REQUEST_COLUMNS = ", ".join(REQUEST_COLUMN_NAMES)

# An index change, for the outbox the index is brought up to date from.
OUTBOX_INSERT = "INSERT INTO index_outbox (memory_id, tenant_id, enqueued_at) VALUES (?, ?, ?)"

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
# What a record's BM25 document (`search_text`) is made from; its date is its `valid_from`.
SEARCH_TEXT_FIELDS = frozenset({"text", "key_text", "keywords", "tags", "valid_from"})
# Changes to these touch the index row (scope filter, status filter, BM25 text, vector).
INDEXED_FIELDS = SEARCH_TEXT_FIELDS | {"kind", "status", "expires_at"}

_EMPTY_JSON: dict[str, type[list[Any]] | type[dict[str, Any]]] = {"[]": list, "{}": dict}


# Where the JSON columns sit in a row: a record is built from the row's values in order (a
# write's consensus check builds thousands, so no dict of names on the way).
_JSON_POSITIONS = tuple(n for n, column in enumerate(RECORD_COLUMNS) if column in JSON_COLUMNS)


def record_from_row(row: Sequence[Any]) -> MemoryRecord:
    if len(row) != len(RECORD_COLUMNS):
        raise ValueError(f"a memory row has {len(RECORD_COLUMNS)} columns, not {len(row)}")
    values = list(row)
    for position in _JSON_POSITIONS:
        raw = values[position]
        empty = _EMPTY_JSON.get(raw)  # most of these columns are empty: skip the parser
        values[position] = empty() if empty is not None else json.loads(raw)
    return MemoryRecord(*values)


def column_value(column: str, value: Any) -> Any:
    """What SQLite stores for `value` in `column` of `memories` (JSON text for JSON columns)."""
    return dumps(value) if column in JSON_COLUMNS else value


def record_values(record: MemoryRecord) -> list[Any]:
    return [column_value(column, getattr(record, column)) for column in RECORD_COLUMNS]


def request_from_row(row: Sequence[Any]) -> RequestLog:
    values = dict(zip(REQUEST_COLUMN_NAMES, row, strict=True))
    for column in _REQUEST_JSON:
        values[column] = json.loads(values[column])
    return RequestLog(**values)


def request_values(entry: RequestLog) -> list[Any]:
    return [
        dumps(value) if column in _REQUEST_JSON else value
        for column, value in ((c, getattr(entry, c)) for c in REQUEST_COLUMN_NAMES)
    ]


def user_clause(user_id: str | None) -> tuple[str, list[Any]]:
    if user_id is None:
        return "user_id IS NULL", []
    return "user_id = ?", [user_id]


def live_record_query(columns: str, scope: Scope, memory_id: str) -> tuple[str, tuple[Any, ...]]:
    """The scoped look-up every read and read-modify-write of one record starts from: `columns`
    of the record `memory_id` in `scope`, unless it was deleted."""
    clause, params = user_clause(scope.user_id)
    return (
        f"SELECT {columns} FROM memories "
        f"WHERE id = ? AND tenant_id = ? AND {clause} AND status != 'deleted'",
        (memory_id, scope.tenant_id, *params),
    )
