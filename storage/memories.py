"""Memory operations over both halves of the store: SQLite rows and the derived index.

A write commits to SQLite together with an outbox entry, then the outbox is drained into the
index before the call returns, so a record is searchable when `add` returns. Searches take ids
from the index but records from SQLite, and re-check scope, status and expiry there, so a stale
index can hide a record for a moment but never show one it should not. Reads that need only
SQLite (`get`, `list`, `audit`...) are those of `storage.sqlite.memories.MemoryRows`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, get_args

import numpy as np

from storage.api import Embedder, IndexUnavailable
from storage.index_schema import IndexHit, scope_filter, scope_key
from storage.index_sync import IndexSync, blob, unblob
from storage.records import (
    MEMORY_KINDS,
    MEMORY_STATUSES,
    MemoryKind,
    MemoryRecord,
    MemoryStatus,
    NewMemory,
    Scope,
    SearchHit,
    SourceRole,
    Vector,
)
from storage.relational import SQLConnection
from storage.search import (
    TextSearch,
    VectorSearch,
    normalized,
    query_unit_rows,
    query_unit_vector,
    visible,
)
from storage.sqlite.memories import MemoryRows
from storage.sqlite.outbox import embedding_input
from storage.sqlite.rows import UPDATABLE_FIELDS


def _validate_new(memory: NewMemory) -> None:
    if memory.kind not in MEMORY_KINDS:
        raise ValueError(f"kind must be one of {MEMORY_KINDS}, got {memory.kind!r}")
    if memory.status not in MEMORY_STATUSES or memory.status == "deleted":
        raise ValueError(
            f"a new memory's status must be active, quarantined, rejected or "
            f"superseded, got {memory.status!r}"
        )
    if memory.source_role not in get_args(SourceRole):
        raise ValueError(f"source_role must be one of {get_args(SourceRole)}")
    if not memory.text.strip():
        raise ValueError("a memory needs a non-empty text")


def _validate_changes(changes: dict[str, Any]) -> None:
    unknown = changes.keys() - UPDATABLE_FIELDS
    if unknown:
        raise ValueError(
            f"cannot update {sorted(unknown)}; updatable fields: {sorted(UPDATABLE_FIELDS)}"
        )
    if "kind" in changes and changes["kind"] not in MEMORY_KINDS:
        raise ValueError(f"kind must be one of {MEMORY_KINDS}")
    if "status" in changes and changes["status"] not in MEMORY_STATUSES:
        raise ValueError(f"status must be one of {MEMORY_STATUSES}")
    if changes.get("status") == "deleted":
        raise ValueError("use delete() to delete a memory: it erases the content")


class Memories(MemoryRows):
    """The `MemoryStore` of the embedded store: SQLite's memory rows, kept in the index."""

    def __init__(self, connection: SQLConnection, sync: IndexSync, embedder: Embedder) -> None:
        super().__init__(connection)
        self.embedder = embedder
        self._sync = sync
        self._vectors = VectorSearch(sync, self)
        self._texts = TextSearch(self._vectors)

    def _new_record(self, scope: Scope, memory: NewMemory, now: float) -> MemoryRecord:
        created = memory.created_at if memory.created_at is not None else now
        return MemoryRecord(
            id=uuid.uuid4().hex,
            tenant_id=scope.tenant_id,
            user_id=scope.user_id,
            session_id=scope.session_id,
            agent_id=scope.agent_id,
            kind=memory.kind,
            text=memory.text,
            key_text=memory.key_text,
            fields=dict(memory.fields),
            metadata=dict(memory.metadata),
            keywords=list(memory.keywords),
            tags=list(memory.tags),
            source_role=memory.source_role,
            source_request_id=memory.source_request_id,
            trace_id=memory.trace_id,
            trust=float(memory.trust),
            trust_reasons=list(memory.trust_reasons),
            status=memory.status,
            version=1,
            supersedes=None,
            superseded_by=None,
            q=float(memory.q),
            q_visits=0,
            reward_ma=0.0,
            last_reward=None,
            n_pos=0,
            n_neg=0,
            created_at=created,
            updated_at=now,
            last_used_at=None,
            valid_from=memory.valid_from if memory.valid_from is not None else created,
            valid_to=None,
            expires_at=memory.expires_at,
            embedding_model=self.embedder.model_id,
            derived_from_ids=list(memory.derived_from_ids),
            evidence=list(memory.evidence),
            model=memory.model,
        )

    async def add(
        self,
        scope: Scope,
        memories: Sequence[NewMemory],
        *,
        vectors: Sequence[Sequence[float]] | None = None,
    ) -> list[MemoryRecord]:
        """Write new records in one transaction; they are searchable when this returns.

        `vectors` (optional) are the records' embeddings by this store's embedder, for imports
        that carry them; without it the records are embedded here.
        """
        if not memories:
            return []
        for memory in memories:
            _validate_new(memory)
        now = time.time()
        records = [self._new_record(scope, memory, now) for memory in memories]
        dimensions = self._sync.index.dimensions
        if vectors is not None:
            if len(vectors) != len(records) or any(len(v) != dimensions for v in vectors):
                raise ValueError(
                    f"need one {dimensions}-dimensional vector per memory "
                    f"(made by {self.embedder.model_id})"
                )
            blobs = [blob(normalized(vector)) for vector in vectors]
        else:
            blobs = await self._sync.embed([embedding_input(r.key_text, r.text) for r in records])
        await self.insert_memories(records, blobs, actor=f"write:{records[0].source_role}")
        await self._sync.publish()
        return records

    async def import_records(
        self,
        tenant_id: str,
        records: Sequence[MemoryRecord],
        outcome: dict[str, Any],
        *,
        embedded: Mapping[str, Vector] | None = None,
    ) -> None:
        """Write complete records as an import gives them (ids, version links, times, Q and
        its counts kept) and the import's `outcome`, in one transaction. The vectors are made
        here, from each record's key text, by this store's embedder, except those `embedded`
        holds already (texts the import's checks embedded by the same embedder)."""
        known = embedded or {}
        for record in records:
            if record.tenant_id != tenant_id:
                raise ValueError("every imported record must belong to the importing tenant")
            record.embedding_model = self.embedder.model_id
        inputs = [embedding_input(r.key_text, r.text) for r in records]
        missing = list(dict.fromkeys(text for text in inputs if text not in known))
        made = dict(zip(missing, await self._sync.embed(missing), strict=True))
        blobs = [made[text] if text in made else blob(known[text]) for text in inputs]
        await self.import_memories(tenant_id, records, blobs, outcome)
        await self._sync.publish()

    async def update(self, scope: Scope, memory_id: str, **changes: Any) -> MemoryRecord | None:
        """Change fields; a text change is a new version, re-embedded and re-indexed."""
        _validate_changes(changes)
        if not changes:
            return await self.get(scope, memory_id)
        embedding: bytes | None = None
        if "text" in changes or "key_text" in changes:
            current = await self.get(scope, memory_id)
            if current is None:
                return None
            text = changes.get("text", current.text)
            if not str(text).strip():
                raise ValueError("a memory needs a non-empty text")
            if "text" in changes and "key_text" not in changes:
                # The key is what search matches and what the vector is made of: a new text
                # with the old key would keep being found by what it no longer says.
                changes = {**changes, "key_text": text}
            key_text = changes.get("key_text", current.key_text)
            (embedding,) = await self._sync.embed([embedding_input(key_text, text)])
        record = await self.update_memory(
            scope,
            memory_id,
            changes,
            embedding=embedding,
            embedding_model=self.embedder.model_id,
            actor="update",
        )
        if record is not None:
            await self._sync.publish()
        return record

    async def supersede(
        self, scope: Scope, old_id: str, new: NewMemory, *, at: float | None = None
    ) -> MemoryRecord:
        _validate_new(new)
        at = time.time() if at is None else at
        record = self._new_record(scope, new, at)
        (embedding,) = await self._sync.embed([embedding_input(record.key_text, record.text)])
        written = await self.write_successor(
            scope, old_id, record, embedding, at=at, actor="supersede"
        )
        await self._sync.publish()
        return written

    async def delete(self, scope: Scope, memory_id: str, *, actor: str) -> bool:
        deleted = await self.delete_memory(scope, memory_id, actor=actor)
        if deleted:
            await self._sync.sync()
            self._sync.wake.set()  # maintenance soon, so old index versions are pruned
        return deleted

    async def delete_user(self, tenant_id: str, user_id: str, *, actor: str) -> int:
        count = await self.delete_user_memories(tenant_id, user_id, actor=actor)
        await self._sync.sync()
        self._sync.wake.set()
        return count

    async def warm(self, scope: Scope, *, include_shared: bool = False) -> None:
        """Load the scope's rows into memory now, where they fit: a search that finds them
        missing starts loading them but goes to the index meanwhile."""
        users, _ = _searched(scope, include_shared, None, ())
        await self._vectors.warm(scope.tenant_id, users)

    async def stop_loading(self) -> None:
        """Give up the scopes still loading into memory (the store closes)."""
        await self._vectors.stop_loading()

    async def vectors(self, tenant_id: str, memory_ids: Sequence[str]) -> dict[str, list[float]]:
        blobs = await self.vector_blobs(tenant_id, memory_ids)
        return {memory_id: unblob(data).tolist() for memory_id, data in blobs.items()}

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
    ) -> list[list[SearchHit]]:
        """For each vector, the k records of the scope nearest to it by cosine, best first, each
        with its stored vector: what a write compares a candidate with.

        The cost follows k, not the scope: exact k-NN over the scope's vectors in memory, scored
        in a worker thread, or the index's vector search for a scope too large for that; then
        one SQLite read for every hit of every vector.
        """
        if k <= 0 or not vectors:
            return [[] for _ in vectors]
        now = time.time() if now is None else now
        users, where = _searched(scope, include_shared, kinds, statuses)
        dimensions, model_id = self._sync.index.dimensions, self.embedder.model_id
        queries = query_unit_rows(vectors, dimensions, model_id)
        per_query = await self._vectors.nearest_many(
            scope.tenant_id, users, where, queries, k, kinds=kinds, statuses=statuses, now=now
        )
        ids = list(dict.fromkeys(hit.id for hits in per_query for hit in hits))
        found = await self.get_many_with_vectors(scope.tenant_id, ids, embedding_model=model_id)
        records: list[MemoryRecord] = []
        vectors_found: list[np.ndarray[Any, np.dtype[np.float32]]] = []
        for record, data in found:
            if data is None or not visible(record, scope.tenant_id, users, kinds, statuses, now):
                continue
            vector = unblob(data)
            if vector.shape == (dimensions,):
                records.append(record)
                vectors_found.append(vector)
        row_of = {record.id: row for row, record in enumerate(records)}
        # Every (query, hit) pair's cosine in one product, not one small product per hit.
        pairs = [
            (number, rank, row_of[hit.id])
            for number, hits in enumerate(per_query)
            for rank, hit in enumerate(hits)
            if hit.id in row_of
        ]
        cosines: list[float] = []
        if pairs:
            numbers, _, rows = np.asarray(pairs).T
            stored = np.stack(vectors_found)[rows]
            cosines = np.einsum("ij,ij->i", stored, queries[numbers]).tolist()
        result: list[list[SearchHit]] = [[] for _ in queries]
        for (number, rank, row), cosine in zip(pairs, cosines, strict=True):
            result[number].append(
                SearchHit(records[row], None, None, cosine, rank, vectors_found[row])
            )
        for near in result:
            near.sort(key=lambda hit: hit.cosine or 0.0, reverse=True)
        return result

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
    ) -> list[SearchHit]:
        """Top-k by BM25 ∪ top-k by vector within the scope, checked against SQLite.

        Vector search is exact and BM25 in process, from the scopes' rows in memory
        (`storage.vector_cache`), unless a scope is too large for that; then both go through
        the LanceDB index. With
        `embed_query` and no `query_vector`, the store embeds `query_text` with its embedder.
        """
        if k <= 0:
            return []
        now = time.time() if now is None else now
        users, where = _searched(scope, include_shared, kinds, statuses)
        # The query is embedded before the BM25 search starts, not during it: on two cores the
        # two fought for the CPU and the overlap was slower. BM25 then runs on LanceDB's
        # threads while the vector search runs here.
        if query_vector is None and embed_query and query_text.strip():
            query_vector = (await self.embedder.embed([query_text]))[0]
        sync = self._sync
        query = (
            query_unit_vector(query_vector, sync.index.dimensions, self.embedder.model_id)
            if query_vector is not None
            else None
        )

        async def search_index() -> tuple[list[IndexHit], list[IndexHit]]:
            text_search = asyncio.ensure_future(
                self._texts.matches(
                    scope.tenant_id,
                    users,
                    where,
                    query_text,
                    k,
                    kinds=kinds,
                    statuses=statuses,
                    now=now,
                )
            )
            try:
                vector_hits = await self._vectors.nearest(
                    scope.tenant_id, users, where, query, k, kinds=kinds, statuses=statuses, now=now
                )
                return vector_hits, await text_search
            finally:
                text_search.cancel()  # only matters when something above failed

        searched = sync.index
        try:
            vector_hits, text_hits = await search_index()
        except Exception as exc:
            async with sync.switching():
                await sync.follow_generation()
            if sync.index is searched:  # not a generation dropped under this search
                sync.report("index.search", f"search failed, rebuilding the index: {exc}")
                sync.repair_wanted = True
                sync.wake.set()
                raise IndexUnavailable(f"the search index failed ({type(exc).__name__})") from exc
            vector_hits, text_hits = await search_index()  # once more, on the new generation
        if "index.search" in sync.problems:
            sync.clear("index.search")
        vector_rank = {hit.id: rank for rank, hit in enumerate(vector_hits)}
        text_rank = {hit.id: rank for rank, hit in enumerate(text_hits)}
        ordered = list(dict.fromkeys([*vector_rank, *text_rank]))
        # Records and vectors from SQLite in one query: the truth, and cheaper than reading
        # the vectors out of LanceDB with the hits.
        found = await self.get_many_with_vectors(
            scope.tenant_id, ordered, embedding_model=self.embedder.model_id
        )
        hits: list[SearchHit] = []
        for record, data in found:
            if not visible(record, scope.tenant_id, users, kinds, statuses, now):
                continue
            vector = unblob(data) if data is not None else None
            if vector is not None and vector.shape != (sync.index.dimensions,):
                vector = None
            bm25 = text_rank.get(record.id)
            hits.append(
                SearchHit(
                    record=record,
                    bm25_score=text_hits[bm25].score if bm25 is not None else None,
                    bm25_rank=bm25,
                    cosine=float(vector @ query)
                    if query is not None and vector is not None
                    else None,
                    vector_rank=vector_rank.get(record.id),
                    vector=vector if with_vectors else None,
                )
            )
        return hits


def _searched(
    scope: Scope,
    include_shared: bool,
    kinds: Sequence[MemoryKind] | None,
    statuses: Sequence[MemoryStatus],
) -> tuple[list[str | None], str]:
    """The users a search covers (the scope's, and the tenant-shared one when asked) and the
    index's filter for them."""
    users: list[str | None] = [scope.user_id]
    if include_shared and scope.user_id is not None:
        users.append(None)
    keys = [scope_key(scope.tenant_id, user) for user in users]
    return users, scope_filter(keys, kinds=kinds, statuses=statuses)
