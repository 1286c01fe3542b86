"""What a user tells the assistant about themselves: restated, changed, or to be forgotten."""

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


def say(proxy: RunningProxy, *texts: str) -> None:
    """Each text as a call of ivy's, learned before the next is sent."""
    client = client_for(proxy)
    for text in texts:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}], user="ivy"
        )
        learned(proxy, raw.headers["x-request-id"])


@pytest.mark.parametrize(
    "ask",
    ["Forget that my sister is called Ana.", "Forget about my sister.", "Please forget my sister."],
)
def test_asking_to_forget_erases_the_memory(
    ask: str, upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    say(proxy, "Remember that my sister is called Ana.", ask)
    with api(proxy) as http:
        active = http.get("/v1/memories", params={"user": "ivy", "status": "active"}).json()
        assert [m["text"] for m in active["data"]] == []


def test_a_value_restated_without_now_is_the_same_value(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    """A change to "green now", said again plainly, is green already known: the memory is
    reinforced, not replaced by a new version that starts its utility over."""
    proxy = memory_proxy()
    say(
        proxy,
        "My favourite colour is blue.",
        "My favourite colour is green now.",
        "My favourite colour is green.",
    )
    with api(proxy) as http:
        mine = http.get("/v1/memories", params={"user": "ivy"}).json()["data"]
    states = sorted((m["text"], m["status"], m["version"]) for m in mine)
    assert states == [
        ("The user's favourite colour is blue.", "superseded", 1),
        ("The user's favourite colour is green now.", "active", 2),
    ]
    [green] = [m for m in mine if m["status"] == "active"]
    assert green["fields"]["value"] == "green" and green["fields"]["reinforced"] == 1
