"""`memento-proxy migrate-from-sqlite`: an embedded deployment moved into PostgreSQL and a bucket
holds the same rows and answers the same searches, and the copy is refused where it would mix
data or lose it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from proxy.cli import main as cli_main
from storage.embedders import LocalEmbedder
from storage.index_location import URI_SETTING
from storage.postgres.url import DATABASE_URL_SETTING
from storage.records import NewMemory, RequestLog, Scope
from storage.store import EmbeddedStore, open_embedded_store
from storage.vector_cache import VectorCacheSettings
from tests.s3_server import S3Server

ANN, BOB = Scope("acme", "ann"), Scope("globex", "bob")
QUESTIONS = {
    ANN: ["Where does Ann live?", "What does Ann sail?", "What does Ann drink?"],
    BOB: ["What does Bob cook?"],
}


async def _fill(store: EmbeddedStore) -> None:
    """A deployment with something in every table: versions, erasures, requests, feedback,
    a queued job, a stored response."""
    texts = ["Ann lives in Lisbon", "Ann sails a sloop", "Ann drinks tea", "Ann reads poems"]
    ann = await store.memories.add(ANN, [NewMemory(kind="fact", text=t) for t in texts])
    await store.memories.add(BOB, [NewMemory(kind="fact", text="Bob cooks curry")])
    await store.memories.update(ANN, ann[2].id, text="Ann drinks green tea")
    await store.memories.delete(ANN, ann[3].id, actor="test")
    await store.requests.log_request(
        RequestLog("r1", "acme", "ann", None, None, "m", time.time(), [{"memory_id": ann[0].id}])
    )
    await store.requests.record_feedback("acme", "r1", "api", 1.0, None)
    await store.queue.enqueue("acme", "exchange", {"request_id": "r2"})


async def _answers(store: EmbeddedStore) -> dict[str, list[str]]:
    answers = {}
    for scope, questions in QUESTIONS.items():
        for question in questions:
            hits = await store.memories.search(scope, query_text=question, embed_query=True, k=3)
            answers[question] = [hit.record.id for hit in hits]
    return answers


def test_a_data_folder_moves_into_postgresql_and_a_bucket(
    tmp_path: Path,
    local_embedder: LocalEmbedder,
    postgres_url: str,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "data"

    async def before() -> dict[str, list[str]]:
        store = await open_embedded_store(folder, local_embedder, maintenance_interval_s=0)
        try:
            await _fill(store)
            return await _answers(store)
        finally:
            await store.close()

    answers = asyncio.run(before())
    bucket = s3_server.new_bucket()
    for name, value in {**s3_server.env, URI_SETTING: f"s3://{bucket}/index"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(DATABASE_URL_SETTING, postgres_url)

    assert cli_main(["migrate-from-sqlite", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["differences"] == []
    counts = report["tables"]
    assert counts["memories"] == [5, 5] and counts["memory_versions"] == [1, 1]
    assert counts["requests"] == [1, 1] and counts["feedback"] == [1, 1]
    assert counts["jobs"] == [1, 1] and counts["audit"][0] == counts["audit"][1] > 0
    assert report["indexed"] == 4  # the erased one is not indexed
    assert report["generation"] == 1  # rebuilt once, from the copy
    # Rebuilt in the bucket from the PostgreSQL copy (the vectors copied), not from SQLite.
    assert report["index"] == f"s3://{bucket}/index"
    assert report["database"].startswith("postgresql: postgresql://")

    async def after() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        answered = []
        for cache in (VectorCacheSettings(), VectorCacheSettings(max_bytes=0)):  # and LanceDB
            store = await open_embedded_store(
                tmp_path / "replica",
                local_embedder,
                maintenance_interval_s=0,
                database_url=postgres_url,
                vector_cache=cache,
            )
            try:
                answered.append(await _answers(store))
            finally:
                await store.close()
        options = {"maintenance_interval_s": 0, "database_url": postgres_url}
        store = await open_embedded_store(tmp_path / "replica", local_embedder, **options)
        try:
            edits = await store.memories.edits("acme", answers["What does Ann drink?"][0])
            assert [edit.text for edit in edits] == ["Ann drinks tea"]
            job = (await store.queue.claim("w", 1))[0]
            assert job.payload == {"request_id": "r2"} and job.id == 1
            await store.queue.enqueue("acme", "exchange", {})  # ids go on after the copied
            assert (await store.queue.list_jobs("acme", limit=1))[0].id == 2
        finally:
            await store.close()
        return answered[0], answered[1]

    in_memory, through_index = asyncio.run(after())
    assert in_memory == answers and through_index == answers

    # Again into the same (now full) database: refused, nothing mixed.
    assert cli_main(["migrate-from-sqlite", str(folder)]) == 2
    assert "already holds data" in capsys.readouterr().err


def test_without_a_database_url_the_move_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(DATABASE_URL_SETTING, raising=False)
    assert cli_main(["migrate-from-sqlite", str(tmp_path)]) == 2
    assert DATABASE_URL_SETTING in capsys.readouterr().err


def test_a_folder_without_a_database_is_exit_3(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_URL_SETTING, postgres_url)
    assert cli_main(["migrate-from-sqlite", str(tmp_path / "nothing")]) == 3
