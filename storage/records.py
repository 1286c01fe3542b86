"""What storage keeps: scopes, memory records, requests, feedback, queued writes, spans and the
Responses API's stored responses.

These types are the contract between `storage/` and the proxy. Every store call takes a `Scope`
(or a tenant id for tenant-wide admin calls); there is no call that reads across tenants.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

# A stored vector as search returns it: a numpy row (no copy into a Python list on the hot path).
Vector = Sequence[float] | np.ndarray[Any, np.dtype[np.float32]]

MemoryKind = Literal["fact", "preference", "case", "lesson"]
MemoryStatus = Literal["active", "quarantined", "rejected", "superseded", "deleted"]
SourceRole = Literal["user", "assistant", "tool", "system", "import", "guard", "admin"]
# What makes two records of a tenant the same memory: their user, kind, text and key text.
ContentKey = tuple[str | None, MemoryKind, str, str]
JobState = Literal["queued", "running", "done", "failed"]

MEMORY_KINDS: tuple[MemoryKind, ...] = ("fact", "preference", "case", "lesson")
MEMORY_STATUSES: tuple[MemoryStatus, ...] = (
    "active",
    "quarantined",
    "rejected",
    "superseded",
    "deleted",
)


def normalized_text(text: str) -> str:
    """A memory's text as duplicates are recognised: lower case, one space between words, no
    final full stop or exclamation mark ("I like tea." and "i like  tea" are one memory)."""
    return " ".join(text.lower().strip().rstrip(".!").split())


def text_hash(text: str) -> str:
    """The key an exact duplicate is found by, before anything is embedded: a digest of the
    normalised text, kept with each record."""
    return hashlib.sha256(normalized_text(text).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Scope:
    """Whose memory: always a tenant; a user unless the record is tenant-shared.

    `user_id=None` means the tenant-shared scope. `session_id` and `agent_id` narrow writes and
    are recorded on records; reads filter by tenant and user only, unless a caller asks for a
    session explicitly.
    """

    tenant_id: str
    user_id: str | None = None
    session_id: str | None = None
    agent_id: str | None = None

    def shared(self) -> Scope:
        """The tenant-shared scope of the same tenant."""
        return Scope(self.tenant_id, None)


@dataclass
class NewMemory:
    """A memory about to be written (already sanitized: trust and status are decided)."""

    kind: MemoryKind
    text: str
    key_text: str = ""  # what is matched: the request for cases, the fact itself for facts
    fields: dict[str, Any] = field(default_factory=dict)  # structured: task/approach/outcome, slot…
    metadata: dict[str, Any] = field(default_factory=dict)  # caller's JSON, returned unchanged
    keywords: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    source_role: SourceRole = "user"
    source_request_id: str | None = None
    trace_id: str | None = None
    trust: float = 0.8
    trust_reasons: list[dict[str, Any]] = field(default_factory=list)
    status: MemoryStatus = "active"
    q: float = 0.0
    created_at: float | None = None  # epoch seconds; None = now
    valid_from: float | None = None
    expires_at: float | None = None
    derived_from_ids: list[str] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)  # {role, span, turn}
    model: str | None = None


@dataclass
class MemoryRecord:
    """A stored memory, one row of the source of truth."""

    id: str
    tenant_id: str
    user_id: str | None
    session_id: str | None
    agent_id: str | None
    kind: MemoryKind
    text: str
    key_text: str
    fields: dict[str, Any]
    metadata: dict[str, Any]
    keywords: list[str]
    tags: list[str]
    source_role: SourceRole
    source_request_id: str | None
    trace_id: str | None
    trust: float
    trust_reasons: list[dict[str, Any]]
    status: MemoryStatus
    version: int
    supersedes: str | None
    superseded_by: str | None
    q: float
    q_visits: int
    reward_ma: float
    last_reward: float | None
    n_pos: int
    n_neg: int
    created_at: float
    updated_at: float
    last_used_at: float | None
    valid_from: float
    valid_to: float | None
    expires_at: float | None
    embedding_model: str | None
    derived_from_ids: list[str]
    evidence: list[dict[str, Any]]
    model: str | None

    @property
    def scope(self) -> Scope:
        return Scope(self.tenant_id, self.user_id, self.session_id, self.agent_id)


@dataclass(frozen=True)
class TextEdit:
    """A text a memory had until an in-place edit (`PATCH`, a re-stated preference) replaced it
    at `replaced_at`; the memory keeps its id and counts its `version` up."""

    text: str
    replaced_at: float


@dataclass(frozen=True)
class SearchHit:
    """One candidate from the hybrid index, with the raw scores of each retriever.

    `bm25_rank` / `vector_rank` are 0-based ranks within each retriever's own list (None when
    the record was not in that list); `cosine` is the cosine similarity to the query vector,
    computed for every hit so the retrieval stage can apply its thresholds.
    """

    record: MemoryRecord
    bm25_score: float | None
    bm25_rank: int | None
    cosine: float | None
    vector_rank: int | None
    vector: Vector | None = None


@dataclass
class RequestLog:
    """One proxied call: what the feedback endpoint and traces join on.

    `request_id` is the proxy's own id, unique per tenant; `client_request_id` is whatever id the
    client sent, which any number of calls may share.
    """

    request_id: str
    tenant_id: str
    user_id: str | None
    session_id: str | None
    trace_id: str | None
    model: str
    created_at: float
    injected: list[dict[str, Any]] = field(default_factory=list)  # {memory_id, score, parts...}
    written_case_id: str | None = None
    reward: float | None = None
    status: str = "ok"
    client_request_id: str | None = None  # the client's own id for the call, if it sent one


@dataclass
class QueuedJob:
    """A durable unit of write-path work (one finished exchange to learn from)."""

    id: int
    tenant_id: str
    kind: str
    payload: dict[str, Any]
    state: JobState
    attempts: int
    created_at: float
    available_at: float
    last_error: str | None = None


@dataclass(frozen=True)
class QueueDepth:
    """How far behind a tenant's write jobs are: how many are queued or running, and when the
    oldest of them was queued."""

    jobs: int
    oldest_created_at: float

    def age_s(self, now: float) -> float:
        return max(0.0, now - self.oldest_created_at)


@dataclass
class SpanRow:
    """A finished OpenTelemetry span as kept in SQLite for inspection."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    tenant_id: str
    request_id: str | None
    user_id: str | None
    name: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    links: list[dict[str, Any]]


@dataclass
class StoredResponse:
    """One answer of the Responses API as the proxy keeps it (`GET /v1/responses/{id}`, and the
    conversation a later call names with `previous_response_id`)."""

    tenant_id: str
    response_id: str
    user_id: str | None
    previous_response_id: str | None
    created_at: float
    # The whole context the answer was given in, as Responses input items: the conversation
    # before `previous_response_id`, then the call's own input.
    input_items: list[dict[str, Any]]
    response: dict[str, Any]  # the response object, as the client received it
