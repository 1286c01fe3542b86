"""Erasing a user (`DELETE /v1/users/{user}/memories`) reaches their exchanges in the write
queue too: those waiting are never learned and their conversation text is gone, and one being
learned at that moment takes back what it wrote."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.store import DB_FILE
from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for, wait_for_memories
from tests.scripted_upstream import Reply, ScriptedUpstream
from tests.test_support import wait_until

STATEMENT = "I own a red bicycle and I live in Tallinn."


def _rows(data_dir: Path, sql: str, *params: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True, timeout=10) as db:
        return db.execute(sql, params).fetchall()


def test_erasing_a_user_drops_their_waiting_exchanges_with_their_text(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy], tmp_path: Path
) -> None:
    proxy = memory_proxy(memory_workers=0)  # nothing is learned: the exchanges wait
    client = client_for(proxy)
    with api(proxy) as http:
        for user in ("ula", "vic"):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": STATEMENT}], user=user
            )
            told = {"request_id": raw.headers["x-request-id"], "reward": 1, "comment": user}
            assert http.post("/v1/memory/feedback", json=told).status_code == 200
        jobs = "SELECT user_id, payload FROM jobs"
        assert sorted(user for user, _ in _rows(tmp_path / "data", jobs)) == ["ula", "vic"]
        assert http.delete("/v1/users/ula/memories").status_code == 200
    left = _rows(tmp_path / "data", jobs)
    assert [user for user, _ in left] == ["vic"]  # another user's exchange stays
    assert "Tallinn" in str(json.loads(str(left[0][1])))
    comments = _rows(tmp_path / "data", "SELECT comment FROM feedback ORDER BY comment")
    assert comments == [(None,), ("vic",)]  # what the client said of ula's call is gone


@pytest.mark.parametrize("mode", ["rules", "model"])
def test_an_exchange_learned_while_its_user_is_erased_takes_back_what_it_wrote(
    upstream: ScriptedUpstream,
    memory_proxy: Callable[..., RunningProxy],
    tmp_path: Path,
    mode: str,
) -> None:
    """The extraction model answers only once the user is erased: the worker had claimed the
    exchange before, and writes its memories after."""
    extraction = {
        "memories": [
            {
                "kind": "fact",
                "text": "The user owns a red bicycle.",
                "evidence": "I own a red bicycle",
            }
        ]
    }
    if mode == "model":
        proxy = memory_proxy(
            memory={"extraction": {"model": "extractor"}},
            extra_models={
                "extractor": {"model": "openai/extractor-model", "api_base": upstream.url}
            },
        )
        upstream.script(Reply(), Reply(content=json.dumps(extraction), hold=True))
    else:
        proxy = memory_proxy()
    client_for(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": STATEMENT}], user="wes"
    )
    data = tmp_path / "data"
    if mode == "rules":  # learned before the erase: the erase itself removes it
        assert wait_for_memories(proxy, "wes", 1)
    else:  # claimed and waiting for the extraction model
        wait_until(lambda: _rows(data, "SELECT 1 FROM jobs WHERE state = 'running'") != [])
    with api(proxy) as http:
        assert http.delete("/v1/users/wes/memories").status_code == 200
        upstream.release()
        wait_until(lambda: _rows(data, "SELECT 1 FROM jobs") == [])
        if mode == "model":  # its write came after the erase, and was taken back
            wait_until(
                lambda: (
                    _rows(data, "SELECT 1 FROM memories WHERE user_id = 'wes'") != []
                    and _rows(
                        data, "SELECT 1 FROM memories WHERE user_id = 'wes' AND status != 'deleted'"
                    )
                    == []
                )
            )
        assert http.get("/v1/memories", params={"user": "wes"}).json()["data"] == []
    texts = _rows(data, "SELECT text FROM memories WHERE user_id = 'wes'")
    assert all("bicycle" not in str(text) for (text,) in texts)
