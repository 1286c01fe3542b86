"""The storage seam: the protocols the proxy codes against, and all it may assume of a store.

`Store` is the whole contract: its parts (`memories`, `requests`, `responses`, `queue`,
`maintenance`, `locks`) and its lifecycle (`attach_health`, `close`). `storage.open_store(data_dir,
embedder)` returns the store: SQLite through aiosqlite as the source of truth (or PostgreSQL,
given `MEMENTO_DATABASE_URL`), LanceDB as the derived hybrid index. Stages that need one part
take that part's protocol, not the whole store.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from storage.locks import StoreLocks
from storage.records import (
    ContentKey,
    JobState,
    MemoryKind,
    MemoryRecord,
    MemoryStatus,
    NewMemory,
    QueueDepth,
    QueuedJob,
    RequestLog,
    Scope,
    SearchHit,
    SpanRow,
    StoredResponse,
    TextEdit,
    Vector,
)


class StorageFull(RuntimeError):
    """The disk has no room for a write, which was not made. Reads go on working, and writes
    succeed again as soon as space is freed, without a restart."""


class DatabaseUnavailable(RuntimeError):
    """The database holding the source of truth cannot be reached (a PostgreSQL server down or
    out of reach); nothing was read or written. Reported to the health as `database` until a
    query succeeds again."""


class IndexUnavailable(RuntimeError):
    """A search failed in the derived index; the store rebuilds it from SQLite by itself, so the
    same search succeeds again once that is done."""


class Embedder(Protocol):
    """Turns texts into unit-length vectors. Implementations run CPU work off the event loop."""

    @property
    def model_id(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class MemoryStore(Protocol):
    """Memory records, scoped. Reads never cross tenants; `scope.user_id=None` is tenant-shared."""

    embedder: Embedder

    async def add(self, scope: Scope, memories: Sequence[NewMemory]) -> list[MemoryRecord]:
        """Write new records (one transaction; index update via the durable outbox)."""
        ...

    async def get(self, scope: Scope, memory_id: str) -> MemoryRecord | None:
        """One record of this tenant and user (or tenant-shared when user_id is None)."""
        ...

    async def get_many(self, tenant_id: str, memory_ids: Sequence[str]) -> list[MemoryRecord]:
        """Records by id within one tenant (the request log's injected ids, for feedback)."""
        ...

    async def edits(self, tenant_id: str, memory_id: str) -> list[TextEdit]:
        """The texts one memory had before its in-place edits, oldest first."""
        ...

    async def list(
        self,
        scope: Scope,
        *,
        kinds: Sequence[MemoryKind] | None = None,
        statuses: Sequence[MemoryStatus] | None = None,
        limit: int = 100,
        offset: int = 0,
        all_users: bool = False,
        after: str | None = None,
    ) -> list[MemoryRecord]:
        """Newest first (by `created_at`, then id). `all_users=True` lists every user of the
        tenant (admin views); `after` starts past that memory of the tenant (a page cursor,
        stable while memories are added)."""
        ...

    async def update(self, scope: Scope, memory_id: str, **changes: Any) -> MemoryRecord | None:
        """Change fields (text, fields, metadata, trust, trust_reasons, status, q counters,
        last_used_at, expires_at…). A text change is a new version (`version` + 1, the old text
        kept in the edit history); the key text follows the text unless `key_text` is given too,
        and the record is re-embedded and re-indexed. Returns the new row."""
        ...

    async def supersede(
        self, scope: Scope, old_id: str, new: NewMemory, *, at: float | None = None
    ) -> MemoryRecord:
        """Write `new` as the next version of `old_id`: old gets status superseded, valid_to and
        superseded_by; new gets supersedes, version+1 and valid_from."""
        ...

    async def delete(self, scope: Scope, memory_id: str, *, actor: str) -> bool:
        """Erase the content from SQLite and the index; leave an audit entry without content."""
        ...

    async def delete_user(self, tenant_id: str, user_id: str, *, actor: str) -> int:
        """Erase every record of one user, and their exchanges waiting in the write queue;
        returns how many records."""
        ...

    async def search(
        self,
        scope: Scope,
        *,
        query_text: str,
        query_vector: Sequence[float] | None = None,
        k: int = 30,
        kinds: Sequence[MemoryKind] | None = None,
        statuses: Sequence[MemoryStatus] = ("active",),
        include_shared: bool = False,
        now: float | None = None,
        with_vectors: bool = False,
        embed_query: bool = False,
    ) -> builtins.list[SearchHit]:
        """Hybrid candidates: top-k by BM25 ∪ top-k by vector, unexpired, with raw scores.

        Scope: the user's records; plus tenant-shared records when `include_shared`. With
        `embed_query` and no `query_vector`, the store embeds `query_text` with its own embedder.
        """
        ...

    async def nearest(
        self,
        scope: Scope,
        vectors: Sequence[Sequence[float]],
        *,
        k: int,
        kinds: Sequence[MemoryKind] | None = None,
        statuses: Sequence[MemoryStatus] = ("active",),
        include_shared: bool = False,
        now: float | None = None,
    ) -> builtins.list[builtins.list[SearchHit]]:
        """For each vector, its k nearest records of the scope by cosine, best first, with their
        stored vectors (the write path's consensus and duplicate checks). Costs follow k, not the
        size of the scope, and no scoring runs on the event loop."""
        ...

    async def vectors(
        self, tenant_id: str, memory_ids: Sequence[str]
    ) -> dict[str, builtins.list[float]]:
        """Stored vectors of records in one tenant, by id."""
        ...

    async def audit(
        self, tenant_id: str, limit: int = 100, *, action: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Audit entries of one tenant, newest first (only those of `action` when given)."""
        ...

    async def import_records(
        self,
        tenant_id: str,
        records: Sequence[MemoryRecord],
        outcome: dict[str, Any],
        *,
        embedded: Mapping[str, Vector] | None = None,
    ) -> None:
        """Write complete records (ids, versions, times, Q kept; embedded here unless
        `embedded` has the vector of a record's key text) and the import's outcome in one
        transaction."""
        ...

    async def record_import(self, tenant_id: str, outcome: dict[str, Any]) -> None:
        """Keep the outcome of an import that wrote nothing."""
        ...

    async def imports(
        self, tenant_id: str, limit: int, *, after: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """The kept outcomes of the tenant's imports, newest first; `after` starts past the
        import of that id (a page cursor)."""
        ...

    async def import_outcome(self, tenant_id: str, import_id: str) -> dict[str, Any] | None:
        """The kept outcome of one import (completed, refused or cancelled), if any."""
        ...

    async def existing_ids(self, memory_ids: Sequence[str]) -> dict[str, str]:
        """Which ids are taken, in any tenant or status: id → tenant (ids are global)."""
        ...

    async def same_contents(
        self, tenant_id: str, contents: Sequence[ContentKey]
    ) -> builtins.list[str | None]:
        """For each (user, kind, text, key text), a stored record of that user's scope with
        exactly this content, if any."""
        ...

    async def count_written(self, scope: Scope, *, since: float, limit: int) -> int:
        """How many records of the scope (any status but deleted; lessons aside) were created
        at or after `since`, counted up to `limit` (the sanitizer's daily write limit)."""
        ...

    async def same_text(
        self, scope: Scope, kinds: Sequence[MemoryKind], text: str
    ) -> MemoryRecord | None:
        """An active record of exactly this scope and one of `kinds` with the same normalised
        text (`records.normalized_text`), found by its digest before anything is embedded."""
        ...


class RequestStore(Protocol):
    """Which memories each request used, and the feedback it received."""

    async def log_request(self, entry: RequestLog) -> None:
        """Log one call; an id the tenant already logged is refused, never merged."""
        ...

    async def get_request(self, tenant_id: str, request_id: str) -> RequestLog | None:
        """The call with this proxy request id (the response's x-request-id)."""
        ...

    async def requests_by_client_id(self, tenant_id: str, client_request_id: str) -> list[str]:
        """Proxy request ids of the calls a client sent this id of its own with."""
        ...

    async def set_request(self, tenant_id: str, request_id: str, **changes: Any) -> None: ...

    async def record_feedback(
        self, tenant_id: str, request_id: str, source: str, reward: float, comment: str | None
    ) -> float | None:
        """Store one reward per (request, source); return the reward it replaced, if any."""
        ...


class ResponseStore(Protocol):
    """Answers of the Responses API, by tenant: what `previous_response_id` and `GET
    /v1/responses/{id}` read. Never read across tenants (`held_by_another_tenant` only asks)."""

    async def put_response(self, stored: StoredResponse) -> None:
        """Keep one response (a response id stored again replaces the earlier one)."""
        ...

    async def get_response(self, tenant_id: str, response_id: str) -> StoredResponse | None: ...

    async def held_by_another_tenant(self, tenant_id: str, response_id: str) -> bool:
        """Whether a tenant other than `tenant_id` keeps a response of that id."""
        ...

    async def delete_response(self, tenant_id: str, response_id: str) -> bool:
        """Forget one response; False when the tenant has none of that id."""
        ...

    async def delete_user_responses(self, tenant_id: str, user_id: str) -> int:
        """Forget every response of one user (the user's erasure); returns how many."""
        ...


class WriteQueue(Protocol):
    """The durable write-path queue: survives crashes, restarts and shutdowns."""

    async def enqueue(self, tenant_id: str, kind: str, payload: dict[str, Any]) -> int:
        """Queue a job; its payload's `user_id`, when it has one, is the job's user."""
        ...

    async def open_jobs_of(self, tenant_id: str, user_id: str) -> list[QueuedJob]:
        """The user's jobs (at most 100, oldest first) that a first attempt has not ended yet:
        queued and never tried, or running. A job waiting for a retry is not one of them."""
        ...

    async def claim(
        self,
        worker: str,
        limit: int = 1,
        *,
        first: Sequence[int] = (),
        skip_tenants: Sequence[str] = (),
    ) -> list[QueuedJob]:
        """Take queued jobs (and jobs whose claim lease expired after a crash), oldest first;
        the users of `first` (ids a request is waiting for) ahead of the others when claimable.
        A user's jobs (tenant and `user_id`, None being one more user) are taken one at a time
        and in order, across every claimer: only the user's oldest open job, and only while
        none of theirs runs under a live lease. Jobs of `skip_tenants` (tenants already using
        all the workers they may) stay queued."""
        ...

    async def complete(self, job_id: int) -> None: ...

    async def fail(self, job_id: int, error: str, *, retry_in_s: float | None) -> None: ...

    async def exists(self, job_id: int) -> bool:
        """Whether the job is still in the queue: erasing its user removes it, even while a
        worker runs it."""
        ...

    async def pending(self) -> int: ...

    async def depths(self) -> dict[str, QueueDepth]:
        """By tenant with any: jobs queued or running, and when the oldest was queued."""
        ...

    async def unfinished(self, job_ids: Sequence[int]) -> set[int]:
        """Those of `job_ids` (at most 100) still queued or running."""
        ...


class JobAdmin(Protocol):
    """The write queue as an operator sees it: jobs by tenant and state, failed ones retried."""

    async def list_jobs(
        self,
        tenant_id: str,
        *,
        state: JobState | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[QueuedJob]:
        """Newest first; `after` starts past that job id (a page cursor)."""
        ...

    async def retry_job(self, tenant_id: str, job_id: int) -> QueuedJob | None:
        """Queue a failed job again; None when the tenant has no failed job of that id."""
        ...

    async def count_jobs(self, state: JobState) -> int: ...


class JobQueue(WriteQueue, JobAdmin, Protocol):
    """The write queue, as the write path and an operator use it."""


class IndexMaintainer(Protocol):
    """The background upkeep of a derived search index, and its rebuild from the truth."""

    async def maintain(self) -> dict[str, Any]:
        """One maintenance pass (what the store runs by itself once started)."""
        ...

    async def reindex(self, *, batch: int = 512) -> dict[str, Any]:
        """Rebuild the index from the source of truth; returns what was done."""
        ...


class HealthReporter(Protocol):
    """Where a component reports a problem by name, and clears it once it recovered."""

    def report(self, component: str, message: str) -> None: ...

    def clear(self, component: str) -> None: ...


class Store(Protocol):
    """A store as the app uses it: its parts, and its lifecycle.

    `storage.open_store` returns one started: migrated, its index caught up, its background
    maintenance running. `attach_health` has it report its problems (a full disk, a broken
    index) and their end; `close` stops it and waits for its writes.
    """

    @property
    def memories(self) -> MemoryStore: ...

    @property
    def requests(self) -> RequestStore: ...

    @property
    def responses(self) -> ResponseStore: ...

    @property
    def queue(self) -> JobQueue: ...

    @property
    def maintenance(self) -> IndexMaintainer: ...

    @property
    def locks(self) -> StoreLocks:
        """Named locks held across every process serving this store."""
        ...

    @property
    def database(self) -> str:
        """Where the source of truth is, as people may read it (`sqlite: PATH`, or
        `postgresql: URL` without its password)."""
        ...

    @property
    def index_location(self) -> str:
        """Where the search index is: a folder, or `s3://bucket/prefix` (no credentials)."""
        ...

    def attach_health(self, health: HealthReporter) -> None: ...

    async def secret(self, name: str) -> bytes:
        """A random 32-byte secret of this store, made at its first use and the same for every
        process and replica sharing the store (the UI signs its sessions with one)."""
        ...

    async def close(self) -> None: ...


class SpanStore(Protocol):
    """Finished spans, kept for inspection with bounded retention."""

    async def write_spans(self, spans: Sequence[SpanRow]) -> None: ...

    def write_spans_blocking(self, spans: Sequence[SpanRow]) -> None:
        """`write_spans` for an exporter thread: blocks that thread, never the event loop."""
        ...

    async def list_traces(
        self,
        tenant_id: str,
        *,
        limit: int = 50,
        user_id: str | None = None,
        client_request_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first: request_id, client_request_id, trace_id, user, model, start,
        duration, status, counts; only those a client sent `client_request_id` with, if given."""
        ...

    async def get_trace(self, tenant_id: str, request_id: str) -> list[SpanRow]: ...

    async def prune_spans(self, tenant_id: str, *, older_than: float, keep_max: int) -> int: ...

    async def prune_unresolved(self, *, older_than: float) -> int:
        """Delete spans never tied to a tenant (started outside any request), by age."""
        ...

    async def delete_user_spans(self, tenant_id: str, user_id: str) -> int:
        """Delete the traces of one user's requests, the write path's included (they carry
        the request's id); returns how many spans."""
        ...

    async def tenants(self) -> list[str]:
        """Tenants with spans stored: what retention has to visit."""
        ...
