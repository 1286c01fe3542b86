"""The index outbox and what the derived index is built from.

Every write that changes what the index holds (a record's scope, status, search text or vector)
adds an outbox entry in its own transaction. One process at a time applies pending entries to the
shared index and acknowledges them here (`index_applied_seq` in `store_meta`); every process
mirrors the same entries in its own in-memory copies of hot scopes, following the outbox by
sequence number. So entries are not forgotten when applied but pruned once they are both applied
and older than `OUTBOX_KEEP_S`, and `outbox_pruned_seq` says how far pruning went: a process
that had not yet read that far drops its copies (they reload from the truth). While a rebuild
runs (a new index generation built beside the served one), entries it may still need are kept.
`store_meta` holds the generation served and, during a rebuild, the outbox sequence number it
started after.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from storage.index_people import speaker_terms, without_addressees
from storage.index_schema import INDEX_TEXT_VERSION, ScopeRows, on_loop_or_thread, yielding
from storage.index_text import dated_terms
from storage.records import MemoryKind, MemoryRecord, MemoryStatus
from storage.relational import META_UPSERT, SQLConnection
from storage.sqlite.rows import fill_missing, placeholders

# store_meta keys of the index: the generation served, and (while a rebuild runs) the outbox
# sequence number the rebuild started after.
INDEX_GENERATION_META = "index_generation"
INDEX_BUILD_META = "index_build_from"
# Set by a rebuild that re-embeds with another embedder, gone when it switches: until then the
# records it re-embedded carry vectors the served index and searches do not read.
MIXED_VECTORS_META = "index_reembedding_to"
# The outbox entries applied to the served generation, and those pruned, by sequence number.
INDEX_APPLIED_META = "index_applied_seq"
OUTBOX_PRUNED_META = "outbox_pruned_seq"
_META_INT = "SELECT CAST(value AS BIGINT) FROM store_meta WHERE key = ?"
# How long an applied entry stays for the processes that mirror it (they read every fraction of a
# second; one that fell this far behind starts its copies over).
OUTBOX_KEEP_S = 60.0
# The `INDEX_TEXT_VERSION` the records' stored `search_text` was made by.
SEARCH_TEXT_META = "search_text_version"


@dataclass(frozen=True)
class IndexSource:
    """What the index keeps of one record: scope, filters, BM25 text and vector."""

    id: str
    tenant_id: str
    user_id: str | None
    kind: MemoryKind
    status: MemoryStatus
    expires_at: float | None
    search_text: str
    embed_text: str
    embedding: bytes | None
    embedding_model: str | None


def search_text_of(
    key_text: str,
    text: str,
    keywords: Iterable[str],
    tags: Iterable[str],
    when: float | None = None,
) -> str:
    """The BM25 document: what is matched (key text, else the text) plus keywords and tags,
    without the names they only address, then the speaker's name (`storage.index_people`) and
    the dates it speaks of as of `when`, the memory's date (`storage.index_text`)."""
    matched = key_text or text
    said = [without_addressees(part) for part in (matched, *keywords)]
    return " ".join([*said, *tags, *speaker_terms(matched), *dated_terms(matched, when)])


def record_search_text(record: MemoryRecord) -> str:
    """`search_text_of` a record, as its `search_text` column keeps it."""
    fields = (record.key_text, record.text, record.keywords, record.tags)
    return search_text_of(*fields, record.valid_from)


def embedding_input(key_text: str, text: str) -> str:
    """What the vector represents: the key text (a case's request, a fact itself)."""
    return key_text or text


class IndexOutbox:
    """The `index_outbox` table, the index's entries of `store_meta`, and the records' vectors
    as the index reads them."""

    def __init__(self, connection: SQLConnection) -> None:
        self._connection = connection

    async def outbox_batch(
        self, after_seq: int = 0, limit: int = 2000
    ) -> tuple[int, dict[str, str | None]]:
        """The oldest pending index changes after `after_seq`: the highest sequence number, and
        each distinct memory id with its tenant (None in entries written before schema 3)."""
        rows = await self._connection.fetchall(
            "SELECT seq, memory_id, tenant_id FROM index_outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        if not rows:
            return 0, {}
        return int(rows[-1][0]), {row[1]: row[2] for row in rows}

    async def outbox_ack(self, up_to_seq: int, generation: int) -> None:
        """Record that the entries up to `up_to_seq` are in index generation `generation`.

        Only if that generation is still the one served (else the entries are for its
        successor to apply too). The entries themselves stay for `prune_outbox`.
        """
        async with self._connection.transaction() as db:
            async with db.execute(_META_INT, (INDEX_GENERATION_META,)) as cursor:
                row = await cursor.fetchone()
            if (int(row[0]) if row is not None else 0) != generation:
                return
            if up_to_seq > await _meta_int(db, INDEX_APPLIED_META):
                await db.execute(META_UPSERT, (INDEX_APPLIED_META, str(up_to_seq)))

    async def applied_seq(self) -> int:
        """The entries up to this sequence number are in the served generation."""
        value = await self._connection.get_meta(INDEX_APPLIED_META)
        return int(value) if value is not None else 0

    async def pruned_seq(self) -> int:
        """No entry up to this sequence number is left in the outbox (some were pruned)."""
        value = await self._connection.get_meta(OUTBOX_PRUNED_META)
        return int(value) if value is not None else 0

    async def latest_seq(self) -> int:
        """The sequence number of the newest entry written (0 when none ever was)."""
        rows = await self._connection.fetchall("SELECT max(seq) FROM index_outbox")
        newest = int(rows[0][0]) if rows and rows[0][0] is not None else 0
        return max(newest, await self.pruned_seq())

    async def prune_outbox(self, older_than: float) -> int:
        """Forget entries applied to the served generation and enqueued before `older_than`
        (not those a running rebuild still needs); returns how many."""
        async with self._connection.transaction() as db:
            bound = await _meta_int(db, INDEX_APPLIED_META)
            async with db.execute(_META_INT, (INDEX_BUILD_META,)) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                bound = min(bound, int(row[0]))
            async with db.execute(
                "DELETE FROM index_outbox WHERE seq <= ? AND enqueued_at < ? RETURNING seq",
                (bound, older_than),
            ) as cursor:
                pruned = [int(row[0]) for row in await cursor.fetchall()]
            if pruned and max(pruned) > await _meta_int(db, OUTBOX_PRUNED_META):
                await db.execute(META_UPSERT, (OUTBOX_PRUNED_META, str(max(pruned))))
        return len(pruned)

    async def begin_index_build(self) -> int:
        """Mark a rebuild as started; returns the outbox sequence number it starts after."""
        async with self._connection.transaction() as db:
            # The newest entry (none: 0, which keeps every entry; as safe, only less frugal).
            async with db.execute("SELECT COALESCE(max(seq), 0) FROM index_outbox") as cursor:
                row = await cursor.fetchone()
            started_after = int(row[0])
            await db.execute(META_UPSERT, (INDEX_BUILD_META, str(started_after)))
        return started_after

    async def end_index_build(self) -> None:
        """Forget the rebuild marker of a rebuild that failed or died."""
        async with self._connection.transaction() as db:
            await db.execute("DELETE FROM store_meta WHERE key = ?", (INDEX_BUILD_META,))

    async def switch_index_generation(
        self, generation: int, applied_up_to: int, meta: dict[str, str]
    ) -> None:
        """Serve index generation `generation` from now on, in one transaction: the pointer,
        `meta` (which embedder built it), the rebuild's markers gone, and the outbox entries the
        new generation already holds (up to `applied_up_to`) recorded as applied."""
        async with self._connection.transaction() as db:
            for key, value in {INDEX_GENERATION_META: str(generation), **meta}.items():
                await db.execute(META_UPSERT, (key, value))
            for key in (INDEX_BUILD_META, MIXED_VECTORS_META):
                await db.execute("DELETE FROM store_meta WHERE key = ?", (key,))
            await db.execute(META_UPSERT, (INDEX_APPLIED_META, str(applied_up_to)))

    async def index_generation(self) -> int:
        """The index generation searches and writes go to."""
        value = await self._connection.get_meta(INDEX_GENERATION_META)
        return int(value) if value is not None else 0

    async def outbox_pending(self) -> int:
        """Entries not yet applied to the served generation."""
        rows = await self._connection.fetchall(
            f"SELECT count(*) FROM index_outbox WHERE seq > COALESCE(({_META_INT}), 0)",
            (INDEX_APPLIED_META,),
        )
        return int(rows[0][0])

    _INDEX_SOURCE_COLUMNS = (
        "id, tenant_id, user_id, kind, status, expires_at, text, key_text, keywords, tags, "
        "embedding, embedding_model, COALESCE(valid_from, created_at), search_text"
    )

    @staticmethod
    def _search_text(row: Sequence[Any]) -> str:
        """A row's stored index text; made here for a record written by a release before the
        column and not filled yet."""
        stored = row[13]
        if stored is not None:
            return str(stored)
        return search_text_of(row[7], row[6], json.loads(row[8]), json.loads(row[9]), row[12])

    @classmethod
    def _index_source(cls, row: Sequence[Any]) -> IndexSource:
        return IndexSource(
            id=row[0],
            tenant_id=row[1],
            user_id=row[2],
            kind=row[3],
            status=row[4],
            expires_at=row[5],
            search_text=cls._search_text(row),
            embed_text=embedding_input(row[7], row[6]),
            embedding=row[10],
            embedding_model=row[11],
        )

    @classmethod
    async def _index_sources(cls, rows: Sequence[Sequence[Any]]) -> list[IndexSource]:
        return await on_loop_or_thread(
            len(rows), lambda: [cls._index_source(r) for r in yielding(rows)]
        )

    async def index_sources(self, memory_ids: Sequence[str]) -> dict[str, IndexSource]:
        """Current state of these records for the index; absent ids were erased."""
        found: dict[str, IndexSource] = {}
        for start in range(0, len(memory_ids), 500):
            chunk = memory_ids[start : start + 500]
            rows = await self._connection.fetchall(
                f"SELECT {self._INDEX_SOURCE_COLUMNS} FROM memories "
                f"WHERE id IN ({placeholders(len(chunk))})",
                chunk,
            )
            for source in await self._index_sources(rows):
                found[source.id] = source
        return found

    async def scope_rows(
        self, tenant_id: str, user_id: str | None, model_id: str, dimensions: int
    ) -> ScopeRows:
        """The index rows of one scope (any status but deleted, with a vector of `model_id`,
        as `IndexSync.index_row` keeps them): what a scope's in-memory copy is loaded from.
        Made column by column, with no object per row."""
        user = "user_id IS NULL" if user_id is None else "user_id = ?"
        rows = await self._connection.fetch_bulk(
            f"SELECT {self._INDEX_SOURCE_COLUMNS} FROM memories "
            f"WHERE tenant_id = ? AND {user} AND {self._connection.dialect.unindexed}status "
            "!= 'deleted' AND embedding IS NOT NULL AND embedding_model = ?",
            (tenant_id, model_id) if user_id is None else (tenant_id, user_id, model_id),
        )

        def columns() -> ScopeRows:
            vectors = np.frombuffer(b"".join([row[10] for row in rows]), dtype=np.float32)
            return ScopeRows(
                [row[0] for row in rows],
                [row[3] for row in rows],
                [row[4] for row in rows],
                [row[5] for row in rows],
                [self._search_text(row) for row in yielding(rows)],
                vectors.reshape(len(rows), dimensions),
            )

        return await on_loop_or_thread(len(rows), columns)

    async def iter_index_sources(self, batch: int = 1000) -> AsyncIterator[list[IndexSource]]:
        """Every live record, in batches, for rebuilding the index."""
        last = ""
        while True:
            rows = await self._connection.fetchall(
                f"SELECT {self._INDEX_SOURCE_COLUMNS} FROM memories "
                "WHERE id > ? AND status != 'deleted' ORDER BY id LIMIT ?",
                (last, batch),
            )
            if not rows:
                return
            last = rows[-1][0]
            yield await self._index_sources(rows)

    async def fill_search_texts(self) -> int:
        """Give every record its `search_text`, once: after the column was added, or when
        `INDEX_TEXT_VERSION` changed. A batch per transaction; returns how many. Run at open,
        before the store serves (and before a changed index layout has the index rebuilt from
        these texts). A record an older release writes later has none: `_index_source` makes
        its text when it reads it."""
        version = str(INDEX_TEXT_VERSION)
        stored = await self._connection.get_meta(SEARCH_TEXT_META)
        if stored == version:
            return 0
        if stored is not None:
            async with self._connection.transaction() as db:
                await db.execute("UPDATE memories SET search_text = NULL")

        async def texts(rows: list[Any]) -> list[str]:
            return [source.search_text for source in await self._index_sources(rows)]

        columns = self._INDEX_SOURCE_COLUMNS
        filled = await fill_missing(self._connection, "search_text", columns, texts)
        await self._connection.set_meta(SEARCH_TEXT_META, version)
        return filled

    async def set_embeddings(self, items: Sequence[tuple[str, bytes]], model_id: str) -> None:
        async with self._connection.transaction() as db:
            await db.executemany(
                "UPDATE memories SET embedding = ?, embedding_model = ? WHERE id = ?",
                [(blob, model_id, memory_id) for memory_id, blob in items],
            )


async def _meta_int(db: Any, key: str) -> int:
    """An integer of `store_meta` read inside a write transaction (0 when absent)."""
    async with db.execute(_META_INT, (key,)) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0
