"""The memory loop with the index on object storage: openai SDK → proxy → scripted upstream,
the LanceDB tables in a bucket of moto's S3 server (MEMENTO_INDEX_URI), every search through
them (no in-memory vectors), across a restart, a `reindex` and the erasure of a user."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lancedb
import pytest

from storage.index_location import IndexLocation
from storage.index_schema import scope_key, sql_literal, table_name
from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for, memory_block, wait_for_memories
from tests.s3_server import S3Server
from tests.scripted_upstream import ScriptedUpstream

ROOT = Path(__file__).resolve().parents[2]
ASK = [{"role": "user", "content": "Suggest a snack for my allergy."}]


def _injected(proxy: RunningProxy, upstream: ScriptedUpstream) -> str | None:
    response = client_for(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=ASK, user="alice"
    )
    assert response.http_response.status_code == 200
    return memory_block(upstream.last().json)


def _rows_of(index_uri: str, env: dict[str, str], user: str) -> dict[str, int]:
    """The rows of acme's `user` in each table of the bucket, read through LanceDB's own
    connection (not the proxy's)."""
    location = IndexLocation.s3(index_uri, env)
    db = lancedb.connect(location.uri, storage_options=location.storage_options)
    where = f"scope_key = {sql_literal(scope_key('acme', user))}"
    return {name: db.open_table(name).count_rows(where) for name in db.table_names()}


def test_memories_live_in_the_bucket_through_restart_reindex_and_erasure(
    upstream: ScriptedUpstream,
    memory_proxy: Callable[..., RunningProxy],
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index_uri = f"s3://{s3_server.new_bucket()}/memento/index"
    for name, value in {**s3_server.env, "MEMENTO_INDEX_URI": index_uri}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MEMENTO_VECTOR_CACHE_MB", "0")  # every search goes to LanceDB
    data_dir = tmp_path / "data"

    proxy = memory_proxy()
    client_for(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi! I am allergic to peanuts."}],
        user="alice",
    )
    assert wait_for_memories(proxy, "alice", 1)
    block = _injected(proxy, upstream)
    assert block is not None and "allergic to peanuts" in block
    assert _rows_of(index_uri, s3_server.env, "alice") == {table_name("acme"): 1}
    assert not (data_dir / "index").exists()  # nothing of the index in the data folder

    # A restart on the same data folder and bucket finds it again.
    proxy.__exit__(None, None, None)
    proxy = memory_proxy()
    block = _injected(proxy, upstream)
    assert block is not None and "allergic to peanuts" in block

    # `memento-proxy reindex` rebuilds into the bucket while the proxy serves; the proxy
    # follows the new generation at its next index write or search.
    env = {**os.environ, "MEMENTO_EMBEDDER": "local", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "proxy.cli", "reindex", "--json", "--data-dir", str(data_dir)]
    # Run without the proxy's setting, it would rebuild a folder the proxy does not serve.
    elsewhere = {name: value for name, value in env.items() if name != "MEMENTO_INDEX_URI"}
    refused = subprocess.run(command, capture_output=True, text=True, env=elsewhere, cwd=ROOT)
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert f"run with MEMENTO_INDEX_URI={index_uri}" in line, line
    assert not (data_dir / "index").exists()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["generation"], report["dropped_tables"]) == (1, 1)
    assert report["records"] >= 1
    assert _rows_of(index_uri, s3_server.env, "alice") == {table_name("acme", 1): 1}
    block = _injected(proxy, upstream)
    assert block is not None and "allergic to peanuts" in block

    # Erasing the user removes their rows from the bucket's table; others stay.
    client_for(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "I like tea."}], user="bob"
    )
    assert wait_for_memories(proxy, "bob", 1)
    with api(proxy) as http:
        assert http.delete("/v1/users/alice/memories").status_code == 200
    assert _rows_of(index_uri, s3_server.env, "alice") == {table_name("acme", 1): 0}
    assert _rows_of(index_uri, s3_server.env, "bob")[table_name("acme", 1)] >= 1
    assert _injected(proxy, upstream) is None
