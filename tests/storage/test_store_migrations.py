"""Schema migrations (empty and previous version), newer schemas refused, embedder switches."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from storage import EmbedderMismatchError, open_store
from storage.embedders import LiteLLMEmbedder, LocalEmbedder
from storage.records import NewMemory, RequestLog, Scope
from storage.sqlite import Database
from storage.sqlite.migrations import MIGRATIONS, SCHEMA_VERSION, SchemaTooNewError
from storage.sqlite.requests import DuplicateRequestError
from storage.sqlite.rows import JSON_COLUMNS, RECORD_COLUMNS, REQUEST_COLUMN_NAMES
from storage.store import open_embedded_store
from tests.scripted_upstream import ScriptedUpstream

SCOPE = Scope("acme", "alice")


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as raw:
        return {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}


async def test_empty_database_migrates_to_latest(tmp_path: Path) -> None:
    path = tmp_path / "memento.db"
    db = await Database.open(path)
    await db.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    expected = {"memories", "audit", "requests", "feedback", "jobs", "index_outbox"}
    assert expected | {"memory_versions", "store_meta"} <= _tables(path)


async def test_a_new_file_opened_by_several_at_once_is_migrated_once(tmp_path: Path) -> None:
    """Serving processes (or replicas) started together on a new folder: each step is applied
    by one of them; the others find it applied instead of failing on a table that exists."""
    path = tmp_path / "memento.db"
    for _ in range(3):
        path.unlink(missing_ok=True)
        databases = await asyncio.gather(*(Database.open(path) for _ in range(4)))
        for db in databases:
            await db.close()
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_the_tables_hold_every_field_of_the_records(tmp_path: Path) -> None:
    """The columns read and written are the dataclasses' fields: a field added to
    MemoryRecord or RequestLog needs a migration step that adds its column, or this fails.
    Beside them: the vector, the digest duplicates are found by (`records.text_hash`) and the
    BM25 document (`search_text`)."""
    path = tmp_path / "memento.db"
    await (await Database.open(path)).close()
    with sqlite3.connect(path) as raw:

        def columns(table: str) -> set[str]:
            return {row[1] for row in raw.execute(f"PRAGMA table_info({table})")}

        assert columns("memories") == {*RECORD_COLUMNS, "embedding", "text_hash", "search_text"}
        assert columns("requests") == set(REQUEST_COLUMN_NAMES)
    # Lists and dicts are kept as JSON text.
    assert {
        "fields",
        "metadata",
        "keywords",
        "tags",
        "trust_reasons",
        "derived_from_ids",
        "evidence",
    } == JSON_COLUMNS


def test_migration_steps_are_named_once() -> None:
    names = [step.name for step in MIGRATIONS]
    assert len(set(names)) == len(names) == SCHEMA_VERSION


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
async def test_older_versions_upgrade_in_place(
    tmp_path: Path, local_embedder: LocalEmbedder, version: int
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / "memento.db"
    old = await Database.open(path, migrations=MIGRATIONS[:version])
    await old.close()
    assert ("memory_versions" in _tables(path)) == (version >= 2)
    # A row as an older release wrote it: no vector yet, no store metadata, and an outbox
    # entry without a tenant.
    now = time.time()
    with sqlite3.connect(path) as raw:
        raw.execute(
            "INSERT INTO memories (id, tenant_id, user_id, kind, text, source_role, trust, "
            "status, created_at, updated_at, valid_from) "
            "VALUES ('m-old', 'acme', 'alice', 'fact', 'I grow tomatoes', 'user', 0.8, "
            "'active', ?, ?, ?)",
            (now, now, now),
        )
        raw.execute("INSERT INTO index_outbox (memory_id, enqueued_at) VALUES ('m-old', ?)", (now,))
    store = await open_store(data, local_embedder)
    try:
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        record = await store.memories.get(SCOPE, "m-old")
        assert record is not None and record.text == "I grow tomatoes"
        # Its digest was filled in at open: an exact copy of it is found by that digest.
        same = await store.memories.same_text(SCOPE, ["fact"], "i grow tomatoes.")
        assert same is not None and same.id == "m-old"
        contents = [(SCOPE.user_id, "fact", "I grow tomatoes", ""), (None, "fact", "x", "x")]
        assert await store.memories.same_contents(SCOPE.tenant_id, contents) == ["m-old", None]
        # So was its BM25 document.
        with sqlite3.connect(path) as raw:
            (stored,) = raw.execute("SELECT search_text FROM memories").fetchone()
        assert stored.startswith("I grow tomatoes ")
        # The new version's feature works on the old row: the edit history keeps the old text.
        await store.memories.update(SCOPE, "m-old", text="I grow peppers")
        with sqlite3.connect(path) as raw:
            history = raw.execute("SELECT text FROM memory_versions").fetchall()
        assert history == [("I grow tomatoes",)]
        hits = await store.memories.search(SCOPE, query_text="peppers", query_vector=None)
        assert [hit.record.id for hit in hits] == ["m-old"]
    finally:
        await store.close()


async def test_requests_logged_before_client_ids_upgrade(tmp_path: Path) -> None:
    """Version 4 keeps a client's id beside the request's own: older rows read back without
    one, and the old upsert is gone (a second entry under a logged id is refused)."""
    path = tmp_path / "memento.db"
    old = await Database.open(path, migrations=MIGRATIONS[:3])
    await old.close()
    with sqlite3.connect(path) as raw:
        raw.execute(
            "INSERT INTO requests (tenant_id, request_id, user_id, model, created_at, injected) "
            "VALUES ('acme', 'shared-rid-0001', 'carol', 'echo', 1.0, '[{\"memory_id\": \"m1\"}]')"
        )
    db = await Database.open(path)
    try:
        entry = await db.requests.get_request("acme", "shared-rid-0001")
        assert entry is not None
        assert (entry.user_id, entry.injected, entry.client_request_id) == (
            "carol",
            [{"memory_id": "m1"}],
            None,
        )
        newer = RequestLog(
            request_id="req_new",
            tenant_id="acme",
            user_id="dave",
            session_id=None,
            trace_id=None,
            model="echo",
            created_at=2.0,
            client_request_id="shared-rid-0001",
        )
        await db.requests.log_request(newer)
        assert await db.requests.get_request("acme", "req_new") == newer
        assert await db.requests.requests_by_client_id("acme", "shared-rid-0001") == ["req_new"]
        with pytest.raises(DuplicateRequestError):
            await db.requests.log_request(
                RequestLog(**{**vars(newer), "request_id": "shared-rid-0001"})
            )
        assert (await db.requests.get_request("acme", "shared-rid-0001")) == entry
    finally:
        await db.close()


async def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "memento.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE future (x)")
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNewError, match="Upgrade memento-proxy"):
        await Database.open(path)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert _tables(path) == {"future"}


async def test_switching_embedder_requires_reindex(
    tmp_path: Path, local_embedder: LocalEmbedder, upstream: ScriptedUpstream
) -> None:
    data = tmp_path / "data"
    store = await open_store(data, local_embedder)
    written = await store.memories.add(
        SCOPE, [NewMemory(kind="fact", text=t) for t in ("I sail", "I knit scarves")]
    )
    await store.close()

    remote = LiteLLMEmbedder("openai/stub-embedding", api_base=upstream.url, api_key="test-key")
    await remote.probe()
    assert remote.dimensions == 3
    with pytest.raises(EmbedderMismatchError, match="memento-proxy reindex"):
        await open_store(data, remote)

    store = await open_embedded_store(data, remote, check_embedder=False)
    try:
        report = await store.maintenance.reindex()
        assert (report["records"], report["reembedded"]) == (2, 2)
        records = await store.memories.get_many("acme", [r.id for r in written])
        assert {r.embedding_model for r in records} == {"openai/stub-embedding"}
        vectors = await store.memories.vectors("acme", [r.id for r in written])
        assert {len(v) for v in vectors.values()} == {3}
        query = (await remote.embed(["I sail"]))[0]
        hits = await store.memories.search(SCOPE, query_text="scarves", query_vector=query)
        assert {hit.record.id for hit in hits} == {r.id for r in written}
    finally:
        await store.close()
    reopened = await open_store(data, remote)  # the new embedder is now the recorded one
    await reopened.close()


async def test_a_store_made_by_the_float_model_names_the_setting_that_serves_it(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    """A data folder written before int8 became the default: opening it with the default says
    both ways forward, each as something to type."""
    data = tmp_path / "data"
    float_model = LocalEmbedder(precision="fp32")
    store = await open_store(data, float_model)
    await store.memories.add(SCOPE, [NewMemory(kind="fact", text="I sail")])
    await store.close()

    assert local_embedder.model_id.endswith("-int8")
    with pytest.raises(EmbedderMismatchError, match=r"reindex.*MEMENTO_EMBEDDER=local-fp32"):
        await open_store(data, local_embedder)
    reopened = await open_store(data, float_model)
    await reopened.close()
    float_model.close()
