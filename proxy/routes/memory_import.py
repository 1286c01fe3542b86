"""Import: JSONL memories into the key's tenant, whole or not at all, and idempotent.

The body is read as it arrives and refused (413) past the tenant's `limits.max_body_bytes`. Every
line is then checked before anything is written: one that is not UTF-8, not JSON, or has a wrong
field refuses the whole import with a 400 that names the line. Each good line is then

- skipped when its id is already in this tenant (importing an export again changes nothing;
  a memory deleted by id keeps its id, so an old export does not bring it back), when a
  memory of the same scope has exactly its kind, text and key text (a file from elsewhere,
  imported twice), or when an earlier id-less line of the file is the same memory;
- otherwise written as exported: its id (a new one only if another tenant holds it), version
  links, validity and expiry times, Q and its counts, evidence and provenance, after the
  sanitizer has assessed it again, with the memory's own versions left out of consensus. Trust
  is min(exported, assessed) and the status the stricter of the exported one and the verdict's.
  A user's lines are assessed a batch at a time, each as the next write to the store as it is
  (none counts towards another's rate limits: they keep their own times).

All written lines go into one transaction together with the import's outcome. A client that
disconnects before that transaction stops the import: nothing is written. Every outcome
(completed, refused, cancelled) is kept and listed newest first, a page at a time, at
`GET /v1/memories/imports` (one: `GET /v1/memories/imports/{id}`), so a client that lost its
connection can learn what happened; sending the same file again is always safe.
"""

from __future__ import annotations

import asyncio
import codecs
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, get_args

import numpy as np
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from proxy.app_state import pipeline_of, tenant_models
from proxy.auth import authenticate
from proxy.errors import ProxyError, bad_request
from proxy.memory.candidates import Candidate, Reason, TrustVerdict
from proxy.memory.model_call import CallModel
from proxy.memory.new_memory import STATUS_FOR_VERDICT, without_secrets
from proxy.memory.sanitize import Sanitizer
from proxy.policy import Policy
from proxy.routes.memory_fields import (
    MAX_TEXT,
    client_kind,
    memory_id_field,
    number_field,
    object_field,
    strings_field,
    text_field,
    timestamp_field,
)
from proxy.routes.pagination import page_request
from proxy.shapes import page_json
from proxy.validation import parse_json, read_body, user_id
from storage.api import MemoryStore
from storage.records import ContentKey, MemoryRecord, MemoryStatus, Scope, SourceRole, Vector

# Lines of one user assessed together: one embedding batch and one neighbour search. A lesson
# distilled from a line rejected in a batch is consulted from the next batch on.
ASSESS_BATCH = 256
_IMPORT_STATUSES: tuple[MemoryStatus, ...] = ("active", "quarantined", "rejected", "superseded")
# Which of two statuses is stricter: an import never makes a memory more servable than it was.
_STRICTNESS: dict[MemoryStatus, int] = {
    "active": 0,
    "quarantined": 1,
    "superseded": 2,
    "rejected": 3,
    "deleted": 4,
}


@dataclass
class ImportLine:
    """One checked line: the record to write (before assessment) and what the file said."""

    number: int
    record: MemoryRecord
    exported_id: str | None
    exported_trust: float | None
    exported_status: MemoryStatus | None


async def import_memories(request: Request) -> Response:
    policy = authenticate(request)
    store = pipeline_of(request).store.memories
    models = tenant_models(request, policy)
    outcome: dict[str, Any] = {
        "object": "memory.import",
        "id": "imp_" + uuid.uuid4().hex,
        "created_at": time.time(),
    }
    try:
        raw = await read_body(request, policy.limits.max_body_bytes)
    except ClientDisconnect:
        return await _cancelled(store, policy, outcome, "while sending the file")
    try:
        lines = parse_lines(raw, policy)
    except ProxyError as exc:
        outcome.update(status="refused", message=exc.message, imported=0)
        await store.record_import(policy.tenant, outcome)
        raise
    outcome["lines"] = len(lines)
    try:
        to_write, skipped = await _plan(store, policy.tenant, lines)
        embedded: dict[str, Vector] = {}  # what the checks embedded, for the write
        records, checked = await _assess_lines(request, store, models, policy, to_write, embedded)
        if records is None:
            where = f"after {checked} of {len(to_write)} lines were checked"
            return await _cancelled(store, policy, outcome, where)
        if await request.is_disconnected():
            return await _cancelled(store, policy, outcome, "before the write")
        statuses: dict[str, int] = {}
        for record in records:
            statuses[record.status] = statuses.get(record.status, 0) + 1
        outcome.update(
            status="completed",
            imported=len(records),
            skipped=len(skipped),
            statuses=statuses,
            ids=[record.id for record in records],
            skipped_lines=skipped,
        )
        await store.import_records(policy.tenant, records, outcome, embedded=embedded)
    except Exception as exc:
        # The transaction did not commit: nothing was written, and the outcome says so.
        outcome.update(status="failed", message=f"Import failed ({exc}); nothing was written.")
        for written in ("imported", "ids", "statuses"):
            outcome.pop(written, None)
        await store.record_import(policy.tenant, outcome)
        raise
    return JSONResponse(outcome)


async def list_imports(request: Request) -> Response:
    """A page of the tenant's imports, newest first, with what each wrote, skipped, refused or
    why it stopped."""
    policy = authenticate(request)
    store = pipeline_of(request).store.memories
    page = page_request(request)
    if page.after is not None and await store.import_outcome(policy.tenant, page.after) is None:
        raise bad_request(
            f"'after' must be the last_id of a previous page; this tenant has no import "
            f"{page.after!r}.",
            param="after",
        )
    outcomes = await store.imports(policy.tenant, page.fetch, after=page.after)
    return JSONResponse(page_json(outcomes, page))


async def import_outcome(request: Request) -> Response:
    policy = authenticate(request)
    import_id = request.path_params["import_id"]
    outcome = await pipeline_of(request).store.memories.import_outcome(policy.tenant, import_id)
    if outcome is not None:
        return JSONResponse(outcome)
    raise ProxyError(
        404,
        f"No import {import_id!r} for this key's tenant; list them with GET /v1/memories/imports.",
        code="import_not_found",
    )


async def _cancelled(
    store: MemoryStore, policy: Policy, outcome: dict[str, Any], when: str
) -> Response:
    """Stop an import whose client has gone: nothing is written, the outcome is kept."""
    outcome.update(
        status="cancelled",
        message=f"Import cancelled: the client disconnected {when}. Nothing was written; "
        "send the file again.",
        imported=0,
    )
    await store.record_import(policy.tenant, outcome)
    return Response(status_code=499)  # "client closed request": nobody is there to read it


def parse_lines(raw: bytes, policy: Policy) -> list[ImportLine]:
    """Every non-empty line as a checked record; the first bad line refuses the whole file."""
    lines = []
    now = time.time()
    for number, data in enumerate(raw.removeprefix(codecs.BOM_UTF8).split(b"\n"), 1):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _line_error(
                number, f"is not valid UTF-8 (byte {exc.start + 1} of the line)"
            ) from None
        if not text.strip():
            continue
        try:
            item = parse_json(text, what=f"Line {number}", hint="Send one memory object per line.")
        except ProxyError as exc:
            raise bad_request(f"{exc.message} Nothing was imported.", param=exc.param) from None
        try:
            lines.append(_checked_line(number, item, policy, now))
        except ProxyError as exc:
            raise _line_error(number, exc.message, exc.param) from None
    return lines


def _line_error(number: int, problem: str, param: str | None = None) -> ProxyError:
    # Field messages end with their own full stop ("'kind' must be one of …."): one is enough.
    return bad_request(f"Line {number}: {problem.rstrip('.')}. Nothing was imported.", param=param)


def _checked_line(number: int, item: Any, policy: Policy, now: float) -> ImportLine:
    if not isinstance(item, dict):
        raise bad_request("each line must be a JSON object with 'kind' and 'text'")
    user = user_id(item.get("user", item.get("user_id")))
    text = text_field(item.get("text"))
    key_text = item.get("key_text")
    if key_text is not None and not (isinstance(key_text, str) and len(key_text) <= MAX_TEXT):
        raise bad_request(f"'key_text' must be a string of at most {MAX_TEXT} characters")
    status = item.get("status")
    if status is not None and status not in _IMPORT_STATUSES:
        raise bad_request(f"'status' must be one of {', '.join(_IMPORT_STATUSES)}")
    role = item.get("source_role", "import")
    if role not in get_args(SourceRole):
        raise bad_request(f"'source_role' must be one of {', '.join(get_args(SourceRole))}")
    created_at = _or(timestamp_field(item.get("created_at"), "created_at"), now)
    valid_from = timestamp_field(item.get("valid_from"), "valid_from")
    exported_id = memory_id_field(item.get("id"), "id")
    feedback = policy.memory.feedback
    record = MemoryRecord(
        id=exported_id or uuid.uuid4().hex,
        tenant_id=policy.tenant,
        user_id=user,
        session_id=_id_field(item.get("session_id"), "session_id"),
        agent_id=_id_field(item.get("agent_id"), "agent_id"),
        kind=client_kind(item.get("kind")),
        text=text,
        key_text=key_text.strip() if isinstance(key_text, str) and key_text.strip() else text,
        fields=object_field(item.get("fields"), "fields"),
        metadata=object_field(item.get("metadata"), "metadata"),
        keywords=strings_field(item.get("keywords"), "keywords"),
        tags=strings_field(item.get("tags"), "tags"),
        source_role=role,
        source_request_id=_id_field(item.get("source_request_id"), "source_request_id"),
        trace_id=_id_field(item.get("trace_id"), "trace_id"),
        trust=0.0,  # set by the assessment
        trust_reasons=[],  # the assessment's
        status=status or "active",
        version=_count_field(item.get("version"), "version", low=1) or 1,
        supersedes=memory_id_field(item.get("supersedes"), "supersedes"),
        superseded_by=memory_id_field(item.get("superseded_by"), "superseded_by"),
        q=_or(number_field(item.get("q"), "q", -1, 1), feedback.q0),
        q_visits=_count_field(item.get("q_visits"), "q_visits"),
        reward_ma=_or(number_field(item.get("reward_ma"), "reward_ma", -1, 1), 0.0),
        last_reward=number_field(item.get("last_reward"), "last_reward", -1, 1),
        n_pos=_count_field(item.get("n_pos"), "n_pos"),
        n_neg=_count_field(item.get("n_neg"), "n_neg"),
        created_at=created_at,
        updated_at=now,
        last_used_at=timestamp_field(item.get("last_used_at"), "last_used_at"),
        valid_from=valid_from if valid_from is not None else created_at,
        valid_to=timestamp_field(item.get("valid_to"), "valid_to"),
        expires_at=timestamp_field(item.get("expires_at"), "expires_at"),
        embedding_model=None,
        derived_from_ids=strings_field(item.get("derived_from_ids"), "derived_from_ids"),
        evidence=_objects_field(item.get("evidence"), "evidence"),
        model=_id_field(item.get("model"), "model"),
    )
    return ImportLine(
        number=number,
        record=record,
        exported_id=exported_id,
        exported_trust=number_field(item.get("trust"), "trust", 0, 1),
        exported_status=status,
    )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _id_field(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256:
        raise bad_request(f"'{field}' must be a non-empty string of at most 256 characters")
    return value


def _count_field(value: Any, field: str, *, low: int = 0) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 2**53:
        raise bad_request(f"'{field}' must be a whole number of at least {low}")
    return value


def _objects_field(value: Any, field: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise bad_request(f"'{field}' must be a list of JSON objects")
    return list(value)


async def _plan(
    store: MemoryStore, tenant_id: str, lines: list[ImportLine]
) -> tuple[list[ImportLine], list[dict[str, Any]]]:
    """Which lines to write and which to skip (and why); ids another tenant holds are renewed,
    with the file's links to them."""
    taken = await store.existing_ids([line.exported_id for line in lines if line.exported_id])
    renamed: dict[str, str] = {}
    seen_ids: set[str] = set()
    seen_content: set[ContentKey] = set()
    fresh: list[tuple[ImportLine, ContentKey]] = []  # lines the file itself does not skip
    to_write: list[ImportLine] = []
    skipped: list[dict[str, Any]] = []
    for line in lines:
        record = line.record
        content: ContentKey = (record.user_id, record.kind, record.text, record.key_text)
        if line.exported_id is not None:
            if line.exported_id in seen_ids:
                skipped.append(_skip(line, "repeats an earlier line of this file"))
                continue
            seen_ids.add(line.exported_id)
            owner = taken.get(line.exported_id)
            if owner == tenant_id:
                skipped.append(_skip(line, "its id is in this tenant already (stored or deleted)"))
                continue
            if owner is not None:
                renamed[line.exported_id] = record.id = uuid.uuid4().hex
        elif content in seen_content:
            skipped.append(_skip(line, "repeats an earlier line of this file"))
            continue
        seen_content.add(content)
        fresh.append((line, content))
    # The store's copies of the file's contents, all looked up at once.
    stored = await store.same_contents(tenant_id, [content for _, content in fresh])
    for (line, _), same in zip(fresh, stored, strict=True):
        if same is None:
            to_write.append(line)
        else:
            skipped.append(_skip(line, f"same content as memory {same}"))
    skipped.sort(key=lambda skip: int(skip["line"]))
    for line in to_write:
        record = line.record
        record.supersedes = renamed.get(record.supersedes or "", record.supersedes)
        record.superseded_by = renamed.get(record.superseded_by or "", record.superseded_by)
        record.derived_from_ids = [renamed.get(i, i) for i in record.derived_from_ids]
    return to_write, skipped


def _skip(line: ImportLine, reason: str) -> dict[str, Any]:
    return {"line": line.number, "id": line.exported_id, "reason": reason}


async def _assess_lines(
    request: Request,
    store: MemoryStore,
    models: CallModel,
    policy: Policy,
    lines: Sequence[ImportLine],
    embedded: dict[str, Vector],
) -> tuple[list[MemoryRecord] | None, int]:
    """The lines' records as they will be written, in order, and how many lines were checked;
    None instead of the records when the client disconnected meanwhile. `embedded` gets the
    vectors made on the way, by the text embedded.

    Each user's lines are assessed `ASSESS_BATCH` at a time (one embedding batch, one search
    for their neighbours), each judged as the next write to the store as it is: the file's
    lines are written together at the end and keep their own times. Batches are assessed one
    after another (a lesson learned in one is consulted by the next), the next one embedded
    meanwhile: the embedder's thread and the checks run side by side."""
    sanitizer = Sanitizer(store, models, log_content=policy.logging.log_content)
    by_user: dict[str | None, list[int]] = {}
    for number, line in enumerate(lines):
        by_user.setdefault(line.record.user_id, []).append(number)
    batches = [
        (user, numbers[start : start + ASSESS_BATCH])
        for user, numbers in by_user.items()
        for start in range(0, len(numbers), ASSESS_BATCH)
    ]
    candidates = [[_candidate(lines[number]) for number in numbers] for _, numbers in batches]
    assessed: dict[int, MemoryRecord] = {}
    # The next batch's vectors, on their way while one batch is checked.
    embedding = [asyncio.ensure_future(sanitizer.embed(candidates[0]))] if batches else []
    try:
        for position, (user, numbers) in enumerate(batches):
            if await request.is_disconnected():
                return None, len(assessed)
            vectors = await embedding.pop()
            if position + 1 < len(batches):
                embedding.append(asyncio.ensure_future(sanitizer.embed(candidates[position + 1])))
            scope, batch = Scope(policy.tenant, user), candidates[position]
            rows = np.asarray(vectors, np.float32)
            embedded.update(zip(sanitizer.embedded_texts(batch), rows, strict=True))
            verdicts = await sanitizer.assess(
                scope, batch, policy.sanitizer, each_alone=True, vectors=vectors
            )
            for number, verdict in zip(numbers, verdicts, strict=True):
                assessed[number] = _assessed(lines[number], verdict, policy)
    finally:
        for pending in embedding:
            pending.cancel()
    return [assessed[number] for number in range(len(lines))], len(lines)


def _candidate(line: ImportLine) -> Candidate:
    """What the sanitizer assesses of a line: its memory, none of its versions a witness."""
    record = line.record
    return Candidate(
        kind=record.kind,
        text=record.text,
        source_role="import",
        key_text=record.key_text,
        fields=record.fields,
        metadata=record.metadata,
        created_at=record.created_at,
        same_as=frozenset(
            i for i in (line.exported_id, record.supersedes, record.superseded_by) if i
        ),
    )


def _assessed(line: ImportLine, verdict: TrustVerdict, policy: Policy) -> MemoryRecord:
    """The line's record as it will be written: sanitized text (a secret redacted wherever the
    record holds it, unless the policy keeps secrets), trust no higher than exported, status no
    more servable than exported."""
    record = line.record
    trust, reasons = verdict.trust, verdict.reasons_as_dicts()
    if line.exported_trust is not None and line.exported_trust < trust:
        cap = Reason(
            "import", line.exported_trust - trust, "trust kept at the exported value, not raised"
        )
        trust, reasons = line.exported_trust, [*reasons, cap.as_dict()]
    status = STATUS_FOR_VERDICT[verdict.verdict]
    if line.exported_status is not None and (
        _STRICTNESS[line.exported_status] > _STRICTNESS[status]
    ):
        status = line.exported_status
    text = verdict.text
    key_text = text if record.key_text == record.text else record.key_text
    written = replace(
        record,
        text=text,
        key_text=key_text,
        trust=trust,
        trust_reasons=reasons,
        status=status,
    )
    return written if policy.sanitizer.pii == "allow" else without_secrets(written)
