"""`memento-proxy reindex` while the proxy serves the same data folder, and the index's health.

The rebuild runs in another process (the CLI) while searches go on: no search may fail or see a
half-built index, `/readyz` stays ready, and after a restart search still works.
"""

from __future__ import annotations

import asyncio
import fcntl
import glob
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lancedb
import pytest

from proxy.cli import main as cli_main
from storage.index_location import INDEX_DIR
from storage.index_schema import table_name
from storage.locks import FileLocks
from storage.maintenance import REBUILD_LOCK
from storage.sqlite import Database
from storage.store import DB_FILE
from tests.harness import RunningProxy
from tests.memory.conftest import KEY, OTHER_KEY, api

ROOT = Path(__file__).resolve().parents[2]
FACTS = [f"Alice keeps {n} stamps from country number {n} in album {n % 7}" for n in range(40)]


def _reindex(data_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "MEMENTO_EMBEDDER": "local", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "reindex", "--json", "--data-dir", str(data_dir)],
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
    _add_facts(proxy)
    assert FACTS[3] in _search(proxy, "stamps album 3 country number 3")
    rebuild = _reindex(data_dir)
    written = 0
    with api(proxy) as http:
        # Searches and writes go on for as long as the rebuild runs, and a while after.
        while rebuild.poll() is None or written < 5:
            reply = http.post("/v1/memories/search", json={"user": "alice", "query": "stamps"})
            assert reply.status_code == 200, reply.text
            assert reply.json()["data"], "a search during the rebuild found nothing"
            written += 1
            for text in (f"Alice bought ferry {written}", f"Alice took ferry {written}"):
                added = http.post(
                    "/v1/memories", json={"user": "alice", "kind": "fact", "text": text}
                )
                assert added.status_code == 201, added.text
            # A deletion wakes the proxy's index maintenance (compaction, pruning).
            gone = http.delete(f"/v1/memories/{added.json()['id']}")
            assert gone.status_code == 200, gone.text
    out, err = rebuild.communicate()
    assert rebuild.returncode == 0, err
    report = json.loads(out[out.index("{") :])
    assert (report["generation"], report["records"] >= len(FACTS)) == (1, True)
    assert FACTS[5] in _search(proxy, "stamps album 5 country number 5")
    assert "Alice bought ferry 1" in _search(proxy, "bought ferry 1")
    with api(proxy) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
    proxy.__exit__(None, None, None)  # a restart on the same data folder
    # The new generation holds every live record, those written during the rebuild included.
    assert _index_rows(data_dir, "acme") == _live_records(data_dir, "acme")
    proxy = memory_proxy()
    assert FACTS[3] in _search(proxy, "stamps album 3 country number 3")
    assert "Alice bought ferry 1" in _search(proxy, "bought ferry 1")


def _index_rows(data_dir: Path, tenant: str) -> int:
    """Rows in the tenant's table of the generation SQLite points at."""
    with sqlite3.connect(data_dir / DB_FILE) as db:
        row = db.execute("SELECT value FROM store_meta WHERE key = 'index_generation'").fetchone()
    generation = int(row[0]) if row else 0
    table = lancedb.connect(str(data_dir / INDEX_DIR)).open_table(table_name(tenant, generation))
    return int(table.count_rows())


def _live_records(data_dir: Path, tenant: str) -> int:
    with sqlite3.connect(data_dir / DB_FILE) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM memories WHERE tenant_id = ? AND status != 'deleted'", (tenant,)
        ).fetchone()
    return int(count)


def test_a_broken_index_shows_on_readyz_and_is_rebuilt_without_a_restart(
    memory_proxy: Callable[..., RunningProxy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMENTO_VECTOR_CACHE_MB", "0")
    data_dir = tmp_path / "data"
    proxy = memory_proxy()
    _add_facts(proxy)
    proxy.__exit__(None, None, None)
    # The full-text index's files vanish, as they did under a rebuild in the old layout.
    table = data_dir / INDEX_DIR / f"{table_name('acme')}.lance"
    for path in glob.glob(str(table / "_indices" / "*" / "*")):
        Path(path).unlink()
    proxy = memory_proxy()
    with api(proxy) as http, open(FileLocks(data_dir).path(REBUILD_LOCK), "a+") as rebuild_lock:
        # As if another process were rebuilding: the proxy's own repair waits for it.
        fcntl.flock(rebuild_lock, fcntl.LOCK_EX)
        broken = http.post("/v1/memories/search", json={"user": "alice", "query": "stamps"})
        assert broken.status_code == 503
        assert broken.json()["error"]["code"] == "index_unavailable"
        ready = http.get("/readyz")
        assert ready.status_code == 503
        (problem,) = ready.json()["problems"]
        assert problem["component"] == "index.search"
        assert "tokens.lance" in problem["message"]
        fcntl.flock(rebuild_lock, fcntl.LOCK_UN)
        # The next failure wakes the repair, which can run now; no restart.
        http.post("/v1/memories/search", json={"user": "alice", "query": "stamps"})
        deadline = time.monotonic() + 120
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, http.get("/readyz").text
            time.sleep(0.1)
    assert FACTS[3] in _search(proxy, "stamps album 3 country number 3")
    assert _index_rows(data_dir, "acme") == len(FACTS)


def test_failed_jobs_are_listed_counted_and_retried(
    memory_proxy: Callable[..., RunningProxy], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = memory_proxy(memory_workers=0)  # nothing runs the retried job: it stays queued

    async def a_job_given_up() -> int:
        db = await Database.open(tmp_path / "data" / DB_FILE)
        try:
            job_id = await db.queue.enqueue("acme", "exchange", {"request_id": "req_1"})
            await db.queue.claim("worker-1")
            await db.queue.fail(job_id, "APIConnectionError: upstream down", retry_in_s=None)
            return job_id
        finally:
            await db.close()

    job_id = asyncio.run(a_job_given_up())
    with api(proxy) as http, api(proxy, OTHER_KEY) as other:
        ready = http.get("/readyz")
        assert (ready.status_code, ready.json()["failed_jobs"]) == (200, 1)
        assert ready.json()["write_queue"] == {"depth": 0, "oldest_age_s": 0.0}
        (job,) = http.get("/v1/memories/jobs", params={"state": "failed"}).json()["data"]
        assert (job["id"], job["state"], job["attempts"]) == (job_id, "failed", 1)
        assert job["last_error"] == "APIConnectionError: upstream down"
        assert job["request_id"] == "req_1"
        assert other.get("/v1/memories/jobs").json()["data"] == []
        assert other.post(f"/v1/memories/jobs/{job_id}/retry").status_code == 404
        bad = http.get("/v1/memories/jobs", params={"state": "broken"})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "state"
    code = cli_main(["jobs", "--url", proxy.base_url, "--key", KEY, "retry", str(job_id), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["state"] == "queued"
    code = cli_main(
        ["jobs", "--url", proxy.base_url, "--key", KEY, "list", "--state", "queued", "--json"]
    )
    assert code == 0
    assert [job["id"] for job in json.loads(capsys.readouterr().out)["data"]] == [job_id]
    with api(proxy) as http:
        ready = http.get("/readyz").json()
        assert ready["failed_jobs"] == 0
        assert ready["write_queue"]["depth"] == 1  # retried, and no worker here runs it
        assert ready["write_queue"]["oldest_age_s"] > 0
        again = http.post(f"/v1/memories/jobs/{job_id}/retry")
        assert again.status_code == 404
        assert again.json()["error"]["code"] == "job_not_found"


def test_a_reindex_with_another_embedder_is_not_undone_by_the_serving_proxy(
    memory_proxy: Callable[..., RunningProxy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Switching embedders while a proxy serves: the proxy cannot follow the new index, says so
    on /readyz, and must not rebuild it with its own embedder (it did: the restart the message
    asks for then failed); restarted with the new embedder, it serves."""
    monkeypatch.setenv("MEMENTO_VECTOR_CACHE_MB", "0")  # searches go to the index
    data_dir = tmp_path / "data"
    proxy = memory_proxy()
    _add_facts(proxy)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = ["reindex", "--embedder", "local-fp32", "--data-dir", str(data_dir)]
    switched = subprocess.run(
        [sys.executable, "-m", "proxy.cli", *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert switched.returncode == 0, switched.stderr
    with api(proxy) as http:
        http.post("/v1/memories/search", json={"user": "alice", "query": "stamps"})
        deadline = time.monotonic() + 60
        while "index.embedder" not in http.get("/readyz").text:
            assert time.monotonic() < deadline, http.get("/readyz").text
            http.post("/v1/memories/search", json={"user": "alice", "query": "stamps"})
            time.sleep(0.2)
        # Give a repair every chance to run (the searches above failed): it must not.
        until = time.monotonic() + 5
        while time.monotonic() < until:
            http.post("/v1/memories/search", json={"user": "alice", "query": "stamps"})
            time.sleep(0.2)
    with sqlite3.connect(data_dir / DB_FILE) as raw:
        models = {row[0] for row in raw.execute("SELECT embedding_model FROM memories")}
    assert models == {"local/all-MiniLM-L6-v2"}
    proxy.__exit__(None, None, None)

    with RunningProxy(proxy.settings.policies_dir, data_dir, embedder="local-fp32") as restarted:
        assert FACTS[3] in _search(restarted, "stamps album 3 country number 3")
