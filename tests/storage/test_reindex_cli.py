"""`memento-proxy reindex` rebuilds a lost index from SQLite."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from storage import open_store
from storage.embedders import LocalEmbedder
from storage.records import NewMemory, Scope

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
