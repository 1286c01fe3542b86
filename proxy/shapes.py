"""The JSON shapes the proxy speaks, in one place for the API routes, the `/ui/` pages and the
`memento-proxy` command: what a memory, a verdict, a job, a list page and a trace look like on
the wire, and how a check request's candidates are read.

Each view of the same thing renders it with the same function here, so the page's JSON twin,
the API's reply and `memento-proxy … --json` cannot drift apart. Nothing here knows a route or
an app: a shape is a pure function of records (with `with_memory_texts` the one reader of a
store, for the texts a trace may show).

`trace_document` turns one request's stored spans into the shape every view of a trace shares.
The spans form a tree in display order: the request's own trace first, then the later
write-path traces linked to it. `memory` says for every candidate whether it was injected and
why (not), `writes` each write-path verdict as a sentence (proxy/ui/explain.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from proxy.errors import bad_request
from proxy.memory.candidates import Candidate, TrustVerdict
from proxy.policy import TracingPolicy
from proxy.tracing import content_attr
from proxy.ui.explain import explain_memory, explain_writes
from proxy.validation import user_id
from storage.api import MemoryStore
from storage.records import MemoryKind, MemoryRecord, QueuedJob, SpanRow
from storage.span_rows import CLIENT_REQUEST_ID_ATTR, REQUEST_SPAN

# The kinds a client may write (`lesson` is the sanitizer's own).
CLIENT_KINDS: tuple[MemoryKind, ...] = ("fact", "preference", "case")
MAX_CANDIDATES = 1000
MAX_TEXT_CHARS = 32_000
CHECK_SOURCES = ("user", "assistant", "tool", "import")


def memory_json(record: MemoryRecord) -> dict[str, Any]:
    return {"object": "memory", **dataclasses.asdict(record)}


def verdict_json(verdict: TrustVerdict) -> dict[str, Any]:
    return {
        "verdict": verdict.verdict,
        "trust": verdict.trust,
        "reasons": verdict.reasons_as_dicts(),
        "text": verdict.text,
    }


def job_json(job: QueuedJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "memory.job",
        "kind": job.kind,
        "state": job.state,
        "attempts": job.attempts,
        "created_at": job.created_at,
        "available_at": job.available_at,
        "last_error": job.last_error,
        "request_id": job.payload.get("request_id"),
    }


@dataclass(frozen=True)
class PageRequest:
    """What a client asked of a list: at most `limit` items, starting past `after`."""

    limit: int
    after: str | None

    @property
    def fetch(self) -> int:
        """How many to ask the store for: one more says whether there is a next page."""
        return self.limit + 1


def page_json(items: Sequence[dict[str, Any]], page: PageRequest) -> dict[str, Any]:
    """The page of `items` (fetched with `page.fetch`), with its cursor fields."""
    data = list(items[: page.limit])
    return {
        "object": "list",
        "data": data,
        "has_more": len(items) > page.limit,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def memory_page_json(records: Sequence[MemoryRecord], page: PageRequest) -> dict[str, Any]:
    """A page of memories (fetched with `page.fetch`), each as `memory_json` renders it."""
    return page_json([memory_json(record) for record in records], page)


def parse_candidates(body: Any) -> tuple[str | None, str | None, list[Candidate]]:
    """Validate a check request: `{"user", "session"?, "candidates": [{text, source, kind?}]}`."""
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object with a 'candidates' list.")
    user = user_id(body.get("user"))
    session = optional_str(body, "session")
    items = body.get("candidates")
    if not isinstance(items, list) or not items:
        raise bad_request(
            '\'candidates\' must be a non-empty list of {"text": ..., "source": ...} objects.',
            param="candidates",
        )
    if len(items) > MAX_CANDIDATES:
        raise bad_request(
            f"At most {MAX_CANDIDATES} candidates per request; got {len(items)}. Split the batch.",
            param="candidates",
        )
    candidates = []
    for index, item in enumerate(items):
        param = f"candidates[{index}]"
        if not isinstance(item, dict):
            raise bad_request(f"{param} must be an object with 'text' and 'source'.", param=param)
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise bad_request(f"{param}.text must be a non-empty string.", param=f"{param}.text")
        if len(text) > MAX_TEXT_CHARS:
            raise bad_request(
                f"{param}.text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}.",
                param=f"{param}.text",
            )
        source = item.get("source", "user")
        if source not in CHECK_SOURCES:
            raise bad_request(
                f"{param}.source must be one of {', '.join(CHECK_SOURCES)}; got {source!r}.",
                param=f"{param}.source",
            )
        kind = item.get("kind", "fact")
        if kind not in get_args(MemoryKind) or kind == "lesson":
            raise bad_request(
                f"{param}.kind must be fact, preference or case; got {kind!r}.",
                param=f"{param}.kind",
            )
        candidates.append(Candidate(kind=kind, text=text, source_role=source))
    return user, session, candidates


def optional_str(body: dict[str, Any], name: str) -> str | None:
    """`body[name]`: a string of at most 256 characters, or None when absent or empty."""
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise bad_request(f"'{name}' must be a string of at most 256 characters.", param=name)
    return value


def trace_document(request_id: str, rows: Sequence[SpanRow]) -> dict[str, Any]:
    """One request's spans as a tree in display order, with times relative to the request."""
    ordered = _tree_order(rows)
    root = next((row for row, _ in ordered if row.name == REQUEST_SPAN), ordered[0][0])
    origin = root.start_ns
    spans = [_span_entry(row, depth, origin, root.trace_id) for row, depth in ordered]
    return {
        "object": "trace",
        "request_id": request_id,
        "client_request_id": root.attributes.get(CLIENT_REQUEST_ID_ATTR),
        "trace_id": root.trace_id,
        "user": root.user_id,
        "model": root.attributes.get("gen_ai.request.model"),
        "start": origin / 1e9,
        "duration_ms": _ms(root.end_ns - root.start_ns),
        "status": root.status,
        "memory": explain_memory(spans),
        "writes": explain_writes(spans),
        "spans": spans,
    }


def _tree_order(rows: Sequence[SpanRow]) -> list[tuple[SpanRow, int]]:
    """Depth-first, children by start time; roots (the request, then later work) by start."""
    ids = {(row.trace_id, row.span_id) for row in rows}
    children: dict[tuple[str, str], list[SpanRow]] = {}
    roots: list[SpanRow] = []
    for row in sorted(rows, key=lambda r: (r.start_ns, -r.end_ns)):
        parent = (row.trace_id, row.parent_span_id or "")
        if row.parent_span_id and parent in ids:
            children.setdefault(parent, []).append(row)
        else:
            roots.append(row)
    ordered: list[tuple[SpanRow, int]] = []
    stack = [(row, 0) for row in reversed(roots)]
    while stack:
        row, depth = stack.pop()
        ordered.append((row, depth))
        for child in reversed(children.get((row.trace_id, row.span_id), [])):
            stack.append((child, depth + 1))
    return ordered


def _span_entry(row: SpanRow, depth: int, origin_ns: int, request_trace: str) -> dict[str, Any]:
    return {
        "name": row.name,
        "phase": "request" if row.trace_id == request_trace else "write",
        "depth": depth,
        "trace_id": row.trace_id,
        "span_id": row.span_id,
        "parent_span_id": row.parent_span_id,
        "offset_ms": _ms(row.start_ns - origin_ns),
        "duration_ms": _ms(row.end_ns - row.start_ns),
        "status": row.status,
        "attributes": {key: decode_json_attr(value) for key, value in row.attributes.items()},
        "events": [
            {
                "name": event.get("name"),
                "offset_ms": _ms(int(event.get("time_ns") or origin_ns) - origin_ns),
                "attributes": event.get("attributes", {}),
            }
            for event in row.events
        ],
        "links": row.links,
    }


def decode_json_attr(value: Any) -> Any:
    """Decisions recorded as JSON text (scores, verdicts) come back as structures."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


async def with_memory_texts(
    doc: dict[str, Any], store: MemoryStore | None, tenant_id: str, tracing: TracingPolicy
) -> None:
    """Add each candidate's and each written memory's text, as `tracing.content` allows it
    (nothing when off, masked when redacted); a memory erased since has none."""
    entries = [*doc["memory"]["candidates"], *(w for w in doc["writes"] if w["memory_id"])]
    for entry in entries:
        entry["text"] = None
    if tracing.content == "off" or store is None or not entries:
        return
    ids = list({str(entry.get("id") or entry.get("memory_id")) for entry in entries})
    texts = {
        record.id: record.text
        for record in await store.get_many(tenant_id, ids)
        if record.status != "deleted"
    }
    for entry in entries:
        text = texts.get(str(entry.get("id") or entry.get("memory_id")))
        entry["text"] = None if text is None else content_attr(tracing, text)
