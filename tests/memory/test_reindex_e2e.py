"""`memento-proxy reindex` while the proxy serves the same data folder, and the index's health.

The rebuild runs in another process (the CLI) while searches go on: no search may fail or see a
half-built index, `/readyz` stays ready, and after a restart search still works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import api

ROOT = Path(__file__).resolve().parents[2]
FACTS = [f"Alice keeps {n} stamps from country number {n} in album {n % 7}" for n in range(40)]


def _reindex(data_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "MEMENTO_EMBEDDER": "local", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "reindex", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _add_facts(proxy: RunningProxy) -> None:
    with api(proxy) as http:
        for text in FACTS:
            reply = http.post("/v1/memories", json={"user": "alice", "kind": "fact", "text": text})
            assert reply.status_code == 201, reply.text


def _search(proxy: RunningProxy, query: str) -> list[str]:
    with api(proxy) as http:
        reply = http.post("/v1/memories/search", json={"user": "alice", "query": query})
        assert reply.status_code == 200, reply.text
        return [memory["text"] for memory in reply.json()["data"]]


def test_reindex_while_serving_keeps_search_working(
    memory_proxy: Callable[..., RunningProxy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every search goes to LanceDB (no in-memory vectors to hide a broken index).
    monkeypatch.setenv("MEMENTO_VECTOR_CACHE_MB", "0")
    data_dir = tmp_path / "data"
    proxy = memory_proxy()
    if True:
        _add_facts(proxy)
        assert FACTS[3] in _search(proxy, "stamps album 3 country number 3")
        rebuild = _reindex(data_dir)
        searches = 0
        with api(proxy) as http:
            # Searches and writes go on for as long as the rebuild runs, and a while after.
            while rebuild.poll() is None or searches < 5:
                reply = http.post(
                    "/v1/memories/search", json={"user": "alice", "query": "stamps album"}
                )
                assert reply.status_code == 200, reply.text
                assert reply.json()["data"], "a search during the rebuild found nothing"
                searches += 1
                written = http.post(
                    "/v1/memories",
                    json={
                        "user": "alice",
                        "kind": "fact",
                        "text": f"Alice bought ferry {searches}",
                    },
                )
                assert written.status_code == 201, written.text
                # A deletion wakes the server's index maintenance (compaction, pruning).
                gone = http.delete(f"/v1/memories/{written.json()['id']}")
                assert gone.status_code == 200, gone.text
                kept = http.post(
                    "/v1/memories",
                    json={"user": "alice", "kind": "fact", "text": f"Alice took ferry {searches}"},
                )
                assert kept.status_code == 201, kept.text
        out, err = rebuild.communicate()
        assert rebuild.returncode == 0, err
        report = json.loads(out[out.index("{") :])
        assert report["records"] >= len(FACTS)
        assert FACTS[5] in _search(proxy, "stamps album 5 country number 5")
        # Memories written during the rebuild are in the new index too.
        assert any("ferry 1" in text for text in _search(proxy, "ferry 1"))
        with api(proxy) as http:
            ready = http.get("/readyz")
            assert ready.status_code == 200, ready.text
    proxy.__exit__(None, None, None)  # a restart on the same data folder
    proxy = memory_proxy()
    if True:
        assert FACTS[3] in _search(proxy, "stamps album 3 country number 3")
        assert any("ferry 1" in text for text in _search(proxy, "ferry 1"))
