"""A user who asks the assistant to forget something has it forgotten."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import api, client_for
from tests.scripted_upstream import ScriptedUpstream

pytestmark = pytest.mark.usefixtures("each_database")


def learned(proxy: RunningProxy, request_id: str) -> None:
    """Wait until the write path has finished the exchange of `request_id`."""
    with api(proxy) as http:
        for _ in range(300):
            jobs = http.get("/v1/memories/jobs").json()["data"]
            if any(j["request_id"] == request_id and j["state"] == "done" for j in jobs):
                return
            time.sleep(0.1)
    raise AssertionError(f"the exchange of {request_id} was not learned")


@pytest.mark.parametrize(
    "ask",
    ["Forget that my sister is called Ana.", "Forget about my sister.", "Please forget my sister."],
)
def test_asking_to_forget_erases_the_memory(
    ask: str, upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    client = client_for(proxy)
    for text in ("Remember that my sister is called Ana.", ask):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}], user="ivy"
        )
        learned(proxy, raw.headers["x-request-id"])
    with api(proxy) as http:
        active = http.get("/v1/memories", params={"user": "ivy", "status": "active"}).json()
        assert [m["text"] for m in active["data"]] == []
