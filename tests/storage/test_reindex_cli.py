"""`memento-proxy reindex` rebuilds a lost index from the source of truth, and says where."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main as cli_main
from storage import open_store
from storage.embedders import LocalEmbedder
from storage.index_location import URI_SETTING
from storage.postgres.url import DATABASE_URL_SETTING
from storage.records import NewMemory, Scope
from storage.store import open_embedded_store
from tests.s3_server import S3Server

SCOPE = Scope("acme", "alice")


async def test_reindex_command_rebuilds_the_index(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    data = tmp_path / "data"
    store = await open_store(data, local_embedder)
    (record,) = await store.memories.add(SCOPE, [NewMemory(kind="fact", text="I collect stamps")])
    await store.close()

    done = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "reindex", "--json", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={"MEMENTO_EMBEDDER": "local", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[2],
    )
    report = json.loads(done.stdout)
    assert (report["records"], report["reembedded"]) == (1, 0)

    store = await open_store(data, local_embedder)
    try:
        hits = await store.memories.search(SCOPE, query_text="stamps", query_vector=None)
        assert [hit.record.id for hit in hits] == [record.id]
    finally:
        await store.close()


async def test_a_lost_index_is_rebuilt_at_open(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    data = tmp_path / "data"
    store = await open_store(data, local_embedder)
    (record,) = await store.memories.add(SCOPE, [NewMemory(kind="fact", text="I collect stamps")])
    await store.close()
    shutil.rmtree(data / "index")
    store = await open_store(data, local_embedder)
    try:
        hits = await store.memories.search(SCOPE, query_text="stamps", query_vector=None)
        assert [hit.record.id for hit in hits] == [record.id]
    finally:
        await store.close()


def test_reindex_names_the_index_it_rebuilt_and_its_source(
    tmp_path: Path,
    local_embedder: LocalEmbedder,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The index is in a bucket, not in the data folder: the message names the bucket."""
    data = tmp_path / "data"
    index = f"s3://{s3_server.new_bucket()}/index"
    for name, value in {**s3_server.env, URI_SETTING: index}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(DATABASE_URL_SETTING, raising=False)

    async def fill() -> None:
        store = await open_store(data, local_embedder)
        await store.memories.add(SCOPE, [NewMemory(kind="fact", text="I collect stamps")])
        await store.close()

    asyncio.run(fill())
    assert cli_main(["reindex", "--data-dir", str(data), "--embedder", "local"]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"rebuilt the index at {index} (1 memories from sqlite: "), said
    assert str(data / "memento.db") in said


async def test_a_rebuild_to_another_embedder_stopped_midway_is_undone_by_maintenance(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    """A reindex to the float model stopped (Ctrl-C) after its first batch left those records
    with float vectors, which the int8 store's in-process search does not read: they were not
    found until a reindex was run again. Maintenance now embeds them again."""
    data = tmp_path / "data"
    store = await open_embedded_store(data, local_embedder, maintenance_interval_s=0)
    texts = [f"I keep {n} stamps from the island number {n}" for n in range(24)]
    await store.memories.add(SCOPE, [NewMemory(kind="fact", text=t) for t in texts])
    await store.close()

    float_model = LocalEmbedder(precision="fp32")
    switching = await open_embedded_store(
        data, float_model, check_embedder=False, maintenance_interval_s=0
    )
    outbox = switching.db.outbox
    stored = outbox.set_embeddings
    first_batch = asyncio.Event()

    async def set_embeddings(*args: object) -> None:
        await stored(*args)  # type: ignore[arg-type]
        first_batch.set()
        await asyncio.sleep(60)  # stopped here

    outbox.set_embeddings = set_embeddings  # type: ignore[method-assign]
    rebuild = asyncio.ensure_future(switching.maintenance.reindex(batch=8))
    await first_batch.wait()
    rebuild.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rebuild
    await switching.close()
    float_model.close()

    store = await open_embedded_store(data, local_embedder, maintenance_interval_s=0)
    try:

        async def models() -> set[str | None]:
            found: set[str | None] = set()
            async for sources in store.db.outbox.iter_index_sources(100):
                found |= {source.embedding_model for source in sources}
            return found

        assert await models() == {local_embedder.model_id, float_model.model_id}
        await store.maintenance.maintain()
        assert await models() == {local_embedder.model_id}
        for text in texts:
            hits = await store.memories.search(SCOPE, query_text=text, embed_query=True, k=1)
            assert [hit.record.text for hit in hits] == [text]
    finally:
        await store.close()
