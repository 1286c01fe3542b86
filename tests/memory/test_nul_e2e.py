"""Text PostgreSQL cannot store (NUL) and ids no one can mean (control characters): a memory's
text with NUL is refused with a 400 that says so, an id with a control character too, and a
NUL in a chat turn never keeps the exchange from being learned, on either backend."""

from __future__ import annotations

from collections.abc import Callable

from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for, wait_for_memories
from tests.postgres_server import BOTH_DATABASES

pytestmark = BOTH_DATABASES


def test_nul_and_control_characters_are_refused_or_dropped(
    memory_proxy: Callable[..., RunningProxy], each_database: str | None
) -> None:
    proxy = memory_proxy()
    with api(proxy) as http:
        refused = http.post(
            "/v1/memories", json={"user": "ana", "kind": "fact", "text": "tea\u0000time"}
        )
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "text" and "NUL" in error["message"]
        for user in ("an\u0000a", "an\na"):
            bad_id = http.post(
                "/v1/memories", json={"user": user, "kind": "fact", "text": "Likes tea."}
            )
            assert bad_id.status_code == 400 and bad_id.json()["error"]["param"] == "user"

    client_for(proxy).chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "I live in Lisbon\u0000 and I prefer tea."}],
        user="ana",
    )
    learned = [memory["text"] for memory in wait_for_memories(proxy, "ana", 2)]
    assert {"The user lives in Lisbon.", "The user prefers tea."} <= set(learned)
    assert not any("\u0000" in text for text in learned)
    with api(proxy) as http:
        assert http.get("/v1/memories/jobs", params={"state": "failed"}).json()["data"] == []
