"""MemoryStore behaviour on the real SQLite + LanceDB + local embedder."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from storage import EmbeddedStore
from storage.embedders import LocalEmbedder
from storage.index_settings import MaintenanceSettings
from storage.records import NewMemory, RequestLog, Scope
from storage.sqlite.requests import DuplicateRequestError
from storage.store import open_embedded_store
from storage.vector_cache import VectorCacheSettings
from tests.postgres_server import BOTH_DATABASES

ALICE = Scope("acme", "alice", session_id="s1")
BOB = Scope("acme", "bob")
SHARED = Scope("acme")


async def _vector(store: EmbeddedStore, text: str) -> list[float]:
    return (await store.embedder.embed([text]))[0]


@BOTH_DATABASES
async def test_add_get_list_round_trip(store: EmbeddedStore) -> None:
    written = await store.memories.add(
        ALICE,
        [
            NewMemory(
                kind="case",
                text="Use pandas.read_parquet with engine=pyarrow",
                key_text="how do I read a parquet file",
                fields={"outcome": "worked"},
                metadata={"app": "notebook"},
                keywords=["parquet"],
                tags=["python"],
                source_role="assistant",
                source_request_id="req-1",
                trust=0.6,
                trust_reasons=[{"signal": "source", "delta": 0.6}],
                evidence=[{"role": "assistant", "span": "read_parquet"}],
                derived_from_ids=["m0"],
                model="gpt-test",
            ),
            NewMemory(kind="fact", text="I live in Lisbon", status="quarantined"),
        ],
    )
    case, fact = written
    got = await store.memories.get(ALICE, case.id)
    assert got == case
    assert got is not None and got.scope == ALICE
    assert got.embedding_model == store.embedder.model_id
    assert (got.version, got.supersedes, got.q_visits) == (1, None, 0)
    assert await store.memories.get(BOB, case.id) is None
    assert await store.memories.get(SHARED, case.id) is None
    assert await store.memories.get(Scope("other", "alice"), case.id) is None
    listed = await store.memories.list(ALICE)
    assert {r.id for r in listed} == {case.id, fact.id}
    assert [r.id for r in await store.memories.list(ALICE, statuses=["quarantined"])] == [fact.id]
    assert [r.id for r in await store.memories.list(ALICE, kinds=["case"])] == [case.id]
    assert await store.memories.list(BOB) == []
    assert {r.id for r in await store.memories.list(BOB, all_users=True)} == {case.id, fact.id}
    assert [r.id for r in await store.memories.get_many("acme", [fact.id, "nope", case.id])] == [
        fact.id,
        case.id,
    ]
    assert await store.memories.get_many("other", [fact.id, case.id]) == []


@BOTH_DATABASES
async def test_search_returns_both_retrievers_with_scores(store: EmbeddedStore) -> None:
    hiking, food, club = await store.memories.add(
        ALICE,
        [
            NewMemory(kind="fact", text="I like hiking in the Alps"),
            NewMemory(kind="preference", text="I prefer vegetarian food"),
            NewMemory(kind="fact", text="Bob's hiking club meets on Fridays", status="rejected"),
        ],
    )
    (shared,) = await store.memories.add(
        SHARED, [NewMemory(kind="fact", text="Office hiking trip in May")]
    )
    query = await _vector(store, "mountain walks")
    hits = await store.memories.search(
        ALICE, query_text="hiking", query_vector=query, with_vectors=True
    )
    by_id = {hit.record.id: hit for hit in hits}
    assert set(by_id) == {hiking.id, food.id}  # rejected and shared records stay out
    assert by_id[hiking.id].bm25_rank == 0 and by_id[hiking.id].bm25_score is not None
    assert by_id[food.id].bm25_rank is None and by_id[food.id].bm25_score is None
    assert by_id[hiking.id].vector_rank == 0
    cosines = {memory_id: hit.cosine for memory_id, hit in by_id.items()}
    assert cosines[hiking.id] is not None and cosines[food.id] is not None
    assert cosines[hiking.id] > cosines[food.id]
    stored = await store.memories.vectors("acme", [hiking.id])
    assert by_id[hiking.id].vector == pytest.approx(stored[hiking.id], abs=1e-6)

    with_shared = await store.memories.search(
        ALICE, query_text="hiking", query_vector=query, include_shared=True
    )
    assert shared.id in {hit.record.id for hit in with_shared}
    rejected = await store.memories.search(
        ALICE, query_text="club", query_vector=None, statuses=["rejected"]
    )
    assert [hit.record.id for hit in rejected] == [club.id]
    assert rejected[0].cosine is None
    only_prefs = await store.memories.search(
        ALICE, query_text="hiking", query_vector=query, kinds=["preference"]
    )
    assert [hit.record.id for hit in only_prefs] == [food.id]


@BOTH_DATABASES
async def test_search_skips_expired_records(store: EmbeddedStore) -> None:
    now = time.time()
    old, fresh = await store.memories.add(
        ALICE,
        [
            NewMemory(kind="fact", text="I am in Paris this week", expires_at=now - 1),
            NewMemory(kind="fact", text="I am in Paris next month", expires_at=now + 3600),
        ],
    )
    hits = await store.memories.search(ALICE, query_text="Paris", query_vector=None)
    assert [hit.record.id for hit in hits] == [fresh.id]
    earlier = await store.memories.search(
        ALICE, query_text="Paris", query_vector=None, now=now - 10
    )
    assert {hit.record.id for hit in earlier} == {old.id, fresh.id}


@BOTH_DATABASES
async def test_update_re_embeds_and_reindexes(store: EmbeddedStore) -> None:
    (record,) = await store.memories.add(
        ALICE, [NewMemory(kind="fact", text="I drive a red bicycle")]
    )
    before = (await store.memories.vectors("acme", [record.id]))[record.id]
    updated = await store.memories.update(
        ALICE, record.id, text="I play the cello", trust=0.9, q=0.4, q_visits=2
    )
    assert updated is not None
    assert (updated.text, updated.trust, updated.q, updated.q_visits) == (
        "I play the cello",
        0.9,
        0.4,
        2,
    )
    after = (await store.memories.vectors("acme", [record.id]))[record.id]
    assert after != before
    assert await store.memories.search(ALICE, query_text="bicycle", query_vector=None) == []
    assert [
        h.record.id
        for h in await store.memories.search(ALICE, query_text="cello", query_vector=None)
    ]
    assert await store.memories.update(BOB, record.id, text="stolen") is None
    quarantined = await store.memories.update(ALICE, record.id, status="quarantined")
    assert quarantined is not None and quarantined.status == "quarantined"
    assert await store.memories.search(ALICE, query_text="cello", query_vector=None) == []
    with pytest.raises(ValueError, match="tenant_id"):
        await store.memories.update(ALICE, record.id, tenant_id="other")
    with pytest.raises(ValueError, match="delete"):
        await store.memories.update(ALICE, record.id, status="deleted")


@BOTH_DATABASES
async def test_supersede_builds_the_version_chain(store: EmbeddedStore) -> None:
    (old,) = await store.memories.add(ALICE, [NewMemory(kind="preference", text="I like tea")])
    new = await store.memories.supersede(
        ALICE, old.id, NewMemory(kind="preference", text="I like coffee")
    )
    previous = await store.memories.get(ALICE, old.id)
    assert previous is not None
    assert (previous.status, previous.superseded_by) == ("superseded", new.id)
    assert previous.valid_to == new.valid_from
    assert (new.version, new.supersedes, new.status) == (2, old.id, "active")
    hits = await store.memories.search(ALICE, query_text="like", query_vector=None)
    assert [hit.record.id for hit in hits] == [new.id]
    with pytest.raises(ValueError, match="already superseded"):
        await store.memories.supersede(
            ALICE, old.id, NewMemory(kind="preference", text="I like juice")
        )
    with pytest.raises(KeyError):
        await store.memories.supersede(
            BOB, new.id, NewMemory(kind="preference", text="I like juice")
        )


def _raw_files(data_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in data_dir.glob("memento.db*") if path.is_file())


@BOTH_DATABASES
async def test_delete_erases_content_and_leaves_an_audit_entry(store: EmbeddedStore) -> None:
    secret = "zebracorn-4471 passport number"
    (record,) = await store.memories.add(
        ALICE, [NewMemory(kind="fact", text=secret, keywords=["zk"])]
    )
    await store.memories.update(ALICE, record.id, text=secret + " renewed")
    (keep,) = await store.memories.add(ALICE, [NewMemory(kind="fact", text="I keep bees")])
    assert not await store.memories.delete(BOB, record.id, actor="bob")
    assert await store.memories.delete(ALICE, record.id, actor="alice")
    assert await store.memories.get(ALICE, record.id) is None
    assert await store.memories.search(ALICE, query_text="zebracorn", query_vector=None) == []
    assert await store.memories.vectors("acme", [record.id]) == {}
    assert record.id not in {r.id for r in await store.memories.list(ALICE)}
    assert [r.id for r in await store.memories.list(ALICE)] == [keep.id]
    assert b"zebracorn" not in _raw_files(store.data_dir)
    assert await store.index.index.count() == 1
    entries = await store.memories.audit("acme")
    deletion = next(entry for entry in entries if entry["action"] == "delete")
    assert (deletion["memory_id"], deletion["actor"]) == (record.id, "alice")
    assert "zebracorn" not in repr(entries)
    assert not await store.memories.delete(ALICE, record.id, actor="alice")  # already gone


@BOTH_DATABASES
async def test_delete_user_erases_every_record_of_that_user(store: EmbeddedStore) -> None:
    await store.memories.add(
        ALICE, [NewMemory(kind="fact", text=f"alice-secret-{i}") for i in range(3)]
    )
    (bobs,) = await store.memories.add(BOB, [NewMemory(kind="fact", text="bob keeps bees")])
    (shared,) = await store.memories.add(
        SHARED, [NewMemory(kind="fact", text="office closes at six")]
    )
    assert await store.memories.delete_user("acme", "alice", actor="admin") == 3
    assert await store.memories.list(ALICE) == []
    assert {r.id for r in await store.memories.list(ALICE, all_users=True)} == {bobs.id, shared.id}
    assert await store.memories.search(ALICE, query_text="secret", query_vector=None) == []
    assert await store.index.index.count() == 2
    assert b"alice-secret" not in _raw_files(store.data_dir)
    entry = (await store.memories.audit("acme", limit=1))[0]
    assert (entry["action"], entry["user_id"], entry["detail"]) == (
        "delete_user",
        "alice",
        {"count": 3},
    )


@BOTH_DATABASES
async def test_requests_and_feedback(store: EmbeddedStore) -> None:
    entry = RequestLog(
        request_id="req-9",
        tenant_id="acme",
        user_id="alice",
        session_id=None,
        trace_id="ab" * 16,
        model="echo",
        created_at=time.time(),
        injected=[{"memory_id": "m1", "score": 0.7}],
    )
    await store.requests.log_request(entry)
    assert await store.requests.get_request("acme", "req-9") == entry
    assert await store.requests.get_request("other", "req-9") is None
    await store.requests.set_request("acme", "req-9", written_case_id="m2", reward=0.5)
    got = await store.requests.get_request("acme", "req-9")
    assert got is not None and (got.written_case_id, got.reward) == ("m2", 0.5)
    with pytest.raises(ValueError, match="created_at"):
        await store.requests.set_request("acme", "req-9", created_at=0.0)
    assert await store.requests.record_feedback("acme", "req-9", "api", 1.0, "great") is None
    assert await store.requests.record_feedback("acme", "req-9", "api", -1.0, None) == 1.0
    assert await store.requests.record_feedback("acme", "req-9", "implicit", 0.2, None) is None
    assert await store.requests.record_feedback("other", "req-9", "api", 0.3, None) is None


@BOTH_DATABASES
async def test_a_logged_request_is_never_merged_with_another(store: EmbeddedStore) -> None:
    """Two calls under one id must not share a log: the second entry is refused, and the
    first call's user, memories and trace stay as they were."""
    carol = RequestLog(
        request_id="req-1",
        tenant_id="acme",
        user_id="carol",
        session_id=None,
        trace_id="c" * 32,
        model="echo",
        created_at=time.time(),
        injected=[{"memory_id": "m-carol"}],
        client_request_id="shared-rid-0001",
    )
    dave = RequestLog(
        request_id="req-1",
        tenant_id="acme",
        user_id="dave",
        session_id=None,
        trace_id="d" * 32,
        model="echo",
        created_at=time.time(),
        injected=[{"memory_id": "m-dave"}],
        client_request_id="shared-rid-0001",
    )
    await store.requests.log_request(carol)
    with pytest.raises(DuplicateRequestError, match="req-1"):
        await store.requests.log_request(dave)
    assert await store.requests.get_request("acme", "req-1") == carol
    await store.requests.log_request(RequestLog(**{**vars(dave), "request_id": "req-2"}))
    await store.requests.log_request(
        RequestLog(**{**vars(dave), "request_id": "req-3", "tenant_id": "globex"})
    )
    assert await store.requests.requests_by_client_id("acme", "shared-rid-0001") == [
        "req-1",
        "req-2",
    ]
    assert await store.requests.requests_by_client_id("globex", "shared-rid-0001") == ["req-3"]
    assert await store.requests.requests_by_client_id("acme", "req-1") == []


async def test_wal_mode_and_schema_version(store: EmbeddedStore) -> None:
    with sqlite3.connect(store.data_dir / "memento.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        from storage.sqlite.migrations import SCHEMA_VERSION

        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_small_scopes_search_exactly_once_an_ann_index_exists(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    settings = MaintenanceSettings(vector_index_min_rows=60, rows_per_partition=10, nprobes=8)
    store = await open_embedded_store(
        tmp_path,
        local_embedder,
        maintenance=settings,
        vector_cache=VectorCacheSettings(max_rows=20),
        maintenance_interval_s=0,
    )
    try:
        crowd = Scope("acme", "crowd")
        await store.memories.add(
            crowd, [NewMemory(kind="fact", text=f"crowd note {i}") for i in range(80)]
        )
        mine = await store.memories.add(
            ALICE, [NewMemory(kind="fact", text=t) for t in ("I fence", "I row", "I bake")]
        )
        await store.maintenance.maintain()
        assert store.index.index.vector_indexed
        query = await _vector(store, "which sports do I do?")
        hits = await store.memories.search(ALICE, query_text="", query_vector=query)
        assert {hit.record.id for hit in hits} == {r.id for r in mine}
        assert sorted(hit.vector_rank for hit in hits if hit.vector_rank is not None) == [0, 1, 2]
        # 80 records: more than the vector cache takes, so this one goes through the IVF index.
        crowd_hits = await store.memories.search(crowd, query_text="", query_vector=query, k=5)
        assert len(crowd_hits) == 5
        assert {hit.record.user_id for hit in crowd_hits} == {"crowd"}
    finally:
        await store.close()
