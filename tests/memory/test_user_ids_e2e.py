"""One rule for user ids on every route that scopes, stores or erases memories, and no route
that reads a JSON body fails on text that is not valid Unicode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

from proxy.cli import main as cli_main
from tests.harness import RunningProxy
from tests.memory.conftest import KEY, api, client_for, wait_for_memories
from tests.postgres_server import BOTH_DATABASES
from tests.scripted_upstream import ScriptedUpstream

pytestmark = [BOTH_DATABASES, pytest.mark.usefixtures("each_database")]

# The longest id there is, with what a path would otherwise cut or mangle ('/', '%', space, ø).
LONGEST_ID = ("team/ø 100% " * 30)[:256]
SURROGATE = '"\\ud800"'  # JSON text that decodes to a lone surrogate


def test_every_user_id_chat_accepts_can_be_erased(
    upstream: ScriptedUpstream,
    memory_proxy: Callable[..., RunningProxy],
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = memory_proxy()
    for user in (LONGEST_ID, "who?#x"):
        client_for(proxy).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hi! I am allergic to peanuts."}],
            user=user,
        )
        assert wait_for_memories(proxy, user, 1)
    forget = ["memories", "--url", proxy.base_url, "--key", KEY, "forget-user", "who?#x"]
    assert cli_main(forget) == 0
    assert capsys.readouterr().out == "deleted 1 memory of user who?#x\n"
    with api(proxy) as http:
        erased = http.delete(f"/v1/users/{quote(LONGEST_ID, safe='')}/memories")
        assert erased.status_code == 200, erased.text
        assert erased.json()["deleted"] >= 1
        assert http.get("/v1/memories", params={"user": LONGEST_ID}).json()["data"] == []
        too_long = http.delete(f"/v1/users/{'u' * 257}/memories")
        assert too_long.status_code == 400
        assert "at most 256" in too_long.json()["error"]["message"]


def test_a_user_id_in_the_erase_path_is_held_to_the_rule_before_anything_is_erased(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    client_for(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi! I am allergic to peanuts."}],
        user="\ufffd",  # what a lenient decoding makes of %ff
    )
    assert wait_for_memories(proxy, "\ufffd", 1)
    with api(proxy) as http:
        line_break = http.delete("/v1/users/a%0Ab/memories")
        assert line_break.status_code == 400, line_break.text
        assert "control character" in line_break.json()["error"]["message"]
        not_utf8 = http.delete("/v1/users/%ff/memories")
        assert not_utf8.status_code == 400, not_utf8.text
        assert not_utf8.json()["error"]["code"] == "invalid_unicode"
        assert http.get("/v1/memories", params={"user": "\ufffd"}).json()["data"] != []


def test_the_header_names_the_same_user_as_the_body(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    client = client_for(proxy)
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi! I am allergic to peanuts."}],
        extra_headers={"X-Memento-User": "alice"},
    )
    assert wait_for_memories(proxy, "alice", 1)
    # The same user both ways: alice's memory is injected.
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What should I avoid eating?"}],
        user="alice",
        extra_headers={"X-Memento-User": "alice"},
    )
    assert "peanuts" in str(upstream.last().json["messages"])
    with api(proxy) as http:
        conflict = http.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "What should I avoid eating?"}],
                "user": "bob",
            },
            headers={"X-Memento-User": "alice"},
        )
    assert conflict.status_code == 400
    assert conflict.json()["error"]["code"] == "conflicting_user"


def _body(route: str) -> str:
    """A body for `route` whose one wrong part is a lone surrogate."""
    return {
        "/v1/memories": '{"user": %s, "kind": "fact", "text": "The user sails."}',
        "/v1/memories#text": '{"user": "ann", "kind": "fact", "text": %s}',
        "/v1/memories/search": '{"user": "ann", "query": %s}',
        "/v1/memories/check": '{"user": %s, "candidates": [{"text": "x", "source": "user"}]}',
        "/v1/memory/feedback": '{"request_id": "r1", "reward": 1, "comment": %s}',
    }[route].replace("%s", SURROGATE)


@pytest.mark.parametrize(
    ("route", "param"),
    [
        ("/v1/memories", "user"),
        ("/v1/memories#text", "text"),
        ("/v1/memories/search", "query"),
        ("/v1/memories/check", "user"),
        ("/v1/memory/feedback", "comment"),
    ],
)
def test_invalid_unicode_is_400_on_every_memory_route(
    upstream: ScriptedUpstream,
    memory_proxy: Callable[..., RunningProxy],
    route: str,
    param: str,
) -> None:
    proxy = memory_proxy()
    with api(proxy) as http:
        response = http.post(
            route.split("#")[0],
            content=_body(route),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "invalid_unicode"
    assert error["param"] == param


def test_a_surrogate_on_an_import_line_is_400_naming_the_line(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    line = '{"user": "ann", "kind": "fact", "text": %s}\n'
    lines = line.replace("%s", '"ok"') + line.replace("%s", SURROGATE)
    with api(proxy) as http:
        response = http.post("/v1/memories/import", content=lines)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("Line 2 has text that is not valid")


def test_a_session_id_is_held_to_the_user_id_rule(
    upstream: ScriptedUpstream, memory_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = memory_proxy()
    body = {"model": "echo", "user": "sam", "messages": [{"role": "user", "content": "Hi"}]}
    with api(proxy) as http:
        ok = http.post("/v1/chat/completions", json=body, headers={"X-Memento-Session": "s-1"})
        assert ok.status_code == 200, ok.text
        for bad, says in (("s" * 257, "at most 256"), ("", "blank")):
            refused = http.post(
                "/v1/chat/completions", json=body, headers={"X-Memento-Session": bad}
            )
            assert refused.status_code == 400
            error = refused.json()["error"]
            assert error["param"] == "x-memento-session" and says in error["message"]
            # It speaks of sessions: a blank session was told to "send a user id".
            assert "user" not in error["message"] and error["code"] == "invalid_session"
