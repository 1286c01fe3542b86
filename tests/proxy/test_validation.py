"""Malformed input over raw HTTP: every error is OpenAI-shaped and says what to fix."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.memory.seam import NoMemory
from tests.harness import RunningProxy, write_tenant
from tests.scripted_upstream import ScriptedUpstream

KEY = "raw-key"
AUTH = {"authorization": f"Bearer {KEY}"}
ROOMY_KEY = "roomy-key"  # a tenant with the default body limit
ROOMY = {"authorization": f"Bearer {ROOMY_KEY}"}


@pytest.fixture
def proxy(
    upstream: ScriptedUpstream, policies_dir: Path, start_proxy: Callable[..., RunningProxy]
) -> RunningProxy:
    write_tenant(
        policies_dir,
        "acme",
        KEY,
        {"fast": {"model": "openai/m", "api_base": upstream.url}, "echo": {"model": "echo"}},
        limits={"max_body_bytes": 2000},
    )
    write_tenant(policies_dir, "roomy", ROOMY_KEY, {"echo": {"model": "echo"}})
    return start_proxy(policies_dir, memory=NoMemory())  # the core alone: memory has its own tests


def post(
    proxy: RunningProxy,
    content: bytes | str,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.post(proxy.base_url + path, content=content, headers=headers or AUTH)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert response.headers["x-request-id"]
    error: dict[str, Any] = body["error"]
    return error


def chat(**fields: Any) -> str:
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps({k: v for k, v in body.items() if v is not ...})


@pytest.mark.parametrize(
    ("content", "param", "says"),
    [
        ("{not json", None, "not valid JSON"),
        ("", None, "body is empty"),
        ("[1, 2]", None, "must be a JSON object, not an array."),
        ("null", None, "must be a JSON object, not null."),
        ('"hi"', None, "must be a JSON object, not a string."),
        (chat(model=...), "model", "Missing required parameter 'model'"),
        (chat(model=5), "model", "'model' must be a non-empty string, got a number."),
        (chat(messages=...), "messages", "Missing required parameter 'messages'"),
        (
            chat(messages="hi"),
            "messages",
            "'messages' must be a list of message objects, got a string.",
        ),
        (chat(messages=[]), "messages", "at least one message"),
        (chat(messages=["hi"]), "messages[0]", "'messages[0]' must be an object"),
        (chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role", "must be one of"),
        (chat(messages=[{"role": "user", "content": 5}]), "messages[0].content", "got a number."),
        (
            chat(messages=[{"role": "user", "content": [{"type": "banana"}]}]),
            "messages[0].content[0]",
            "is a 'banana' part; a user message's content parts are text, image_url, input_audio "
            "or file",
        ),
        (
            chat(messages=[{"role": "user", "content": ["hi"]}]),
            "messages[0].content[0]",
            "'messages[0].content[0]' must be a content part object such as "
            '{"type": "text", "text": "Hi"}, got a string.',
        ),
        (
            chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
            "messages[0].content[0].text",
            "'messages[0].content[0].text' must be a string, got a number.",
        ),
        (
            chat(messages=[{"role": "user", "content": [{"type": "text"}]}]),
            "messages[0].content[0].text",
            "is a text part without its 'text'",
        ),
        (
            chat(messages=[{"role": "user", "content": [{"text": "hi"}]}]),
            "messages[0].content[0]",
            "'messages[0].content[0]' has no 'type'",
        ),
        (
            chat(
                messages=[
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": [{"type": "image_url", "image_url": {}}]},
                ]
            ),
            "messages[1].content[0]",
            "an assistant message's content parts are text or refusal",
        ),
        (
            chat(messages=[{"role": "system", "content": [{"type": "refusal", "refusal": "x"}]}]),
            "messages[0].content[0]",
            "a system message's content parts are text,",
        ),
        (
            chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]),
            "messages[0].content[0].image_url",
            'must be an object such as {"url": "https://…"}, got a string.',
        ),
        (chat(temperature="hot"), "temperature", "'temperature' must be a number, got a string."),
        (chat(n=1.5), "n", "'n' must be an integer, got a number."),
        (chat(max_tokens=True), "max_tokens", "'max_tokens' must be an integer, got a boolean."),
        (chat(stream="yes"), "stream", "'stream' must be true or false"),
        (chat(stop=[1]), "stop", "a string or a list of strings"),
        (chat(tools={"a": 1}), "tools", "a list of tool objects"),
        (chat(user=7), "user", "'user' must be a string"),
        (chat(stream_options=[]), "stream_options", "must be an object"),
        (chat(n=0), "n", "'n' must be from 1 to 128"),
        (chat(n=300_000), "n", "'n' must be from 1 to 128 (choices to generate), got 300000"),
        (chat(user="   "), "user", "'user' is blank"),
        (chat(user=""), "user", "'user' is blank"),
        (chat(user="u" * 257), "user", "'user' is 257 characters long; user ids have at most 256"),
        ('{"model": "fast", "user": "\\ud800", "messages": []}', "user", "lone surrogate"),
        (chat(messages=[{"role": "user", "content": "\ud83d"}]), "messages[0].content", "lone"),
        (chat(metadata={"\udfff": "x"}), 'metadata["\\udfff"]', "not valid Unicode"),
        (b'{"model": "fast", "user": "\xed\xa0\x80"}', "user", "lone surrogate"),
    ],
)
def test_malformed_requests_are_400_with_a_fix(
    proxy: RunningProxy,
    upstream: ScriptedUpstream,
    content: str | bytes,
    param: str | None,
    says: str,
) -> None:
    response = post(proxy, content)
    assert response.status_code == 400
    error = error_of(response)
    assert says in error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert upstream.received == []


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
def test_a_body_that_is_not_an_object_is_named_in_json_words(
    proxy: RunningProxy, upstream: ScriptedUpstream, path: str
) -> None:
    for raw, named in (("null", "null"), ("[]", "an array"), ("3", "a number")):
        response = post(proxy, raw, path=path)
        assert response.status_code == 400
        body = response.json()
        error = body["error"]
        assert error["message"] == f"The request body must be a JSON object, not {named}."
        assert error["type"] == "invalid_request_error"
        assert (body.get("type") == "error") is (path == "/v1/messages")  # Anthropic's shape
    assert upstream.received == []


def test_body_over_the_tenants_limit_is_413(
    proxy: RunningProxy, upstream: ScriptedUpstream
) -> None:
    response = post(proxy, chat(messages=[{"role": "user", "content": "x" * 3000}]))
    assert response.status_code == 413
    assert "limits.max_body_bytes" in error_of(response)["message"]

    def chunks() -> Any:  # no content-length: the limit holds while reading
        yield b'{"model": "fast", "messages": [{"role": "user", "content": "'
        yield b"y" * 3000
        yield b'"}]}'

    streamed = httpx.post(proxy.base_url + "/v1/chat/completions", content=chunks(), headers=AUTH)
    assert streamed.status_code == 413
    assert upstream.received == []


def test_embeddings_input_is_checked(proxy: RunningProxy) -> None:
    response = post(proxy, json.dumps({"model": "fast"}), path="/v1/embeddings")
    assert response.status_code == 400
    assert error_of(response)["param"] == "input"
    echo = post(proxy, json.dumps({"model": "echo", "input": "x"}), path="/v1/embeddings")
    assert echo.status_code == 400
    assert "no embeddings" in error_of(echo)["message"]


def test_unknown_route_and_method(proxy: RunningProxy) -> None:
    missing = httpx.get(proxy.base_url + "/v1/nothing-here", headers=AUTH)
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "unknown_url"
    wrong = httpx.get(proxy.base_url + "/v1/chat/completions", headers=AUTH)
    assert wrong.status_code == 405
    assert error_of(wrong)["code"] == "method_not_allowed"


def test_probes(proxy: RunningProxy) -> None:
    assert httpx.get(proxy.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(proxy.base_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def nested(depth: int) -> str:
    """A chat body whose `metadata` holds arrays nested so that the body is `depth` deep."""
    inner = "[" * (depth - 2) + "]" * (depth - 2)
    head = '{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "metadata": {"x": '
    return head + inner + "}}"


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_json_nested_too_deep_is_400(proxy: RunningProxy, depth: int) -> None:
    response = post(proxy, nested(depth), headers=ROOMY)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "json_too_deep"
    assert "more than 64 levels deep" in error["message"]


def test_json_nested_to_the_limit_is_served(proxy: RunningProxy) -> None:
    response = post(proxy, nested(64), headers=ROOMY)
    assert response.status_code == 200, response.text


def test_echo_serves_up_to_128_choices(proxy: RunningProxy) -> None:
    body = json.loads(chat(model="echo", n=128))
    response = httpx.post(proxy.base_url + "/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200
    assert len(response.json()["choices"]) == 128


@pytest.mark.parametrize(
    ("body_user", "header", "code", "says"),
    [
        ("alice", "bob", "conflicting_user", "'alice') and the X-Memento-User header ('bob')"),
        (None, "", "invalid_user", "'x-memento-user' is blank"),
        ("   ", "alice", "invalid_user", "'user' is blank"),
        (None, "h" * 257, "invalid_user", "'x-memento-user' is 257 characters long"),
    ],
)
def test_user_header_and_body_must_agree_and_be_valid(
    proxy: RunningProxy,
    upstream: ScriptedUpstream,
    body_user: str | None,
    header: str,
    code: str,
    says: str,
) -> None:
    body = chat(user=body_user if body_user is not None else ...)
    response = post(proxy, body, headers={**AUTH, "x-memento-user": header})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code
    assert says in error["message"]
    assert upstream.received == []


def test_user_header_must_be_utf8_and_sent_once(proxy: RunningProxy) -> None:
    url = proxy.base_url + "/v1/chat/completions"
    auth = [(b"authorization", f"Bearer {KEY}".encode())]
    latin1 = httpx.post(url, content=chat(), headers=[*auth, (b"x-memento-user", b"b\xf8b")])
    assert latin1.status_code == 400 and error_of(latin1)["code"] == "invalid_unicode"
    twice = [*auth, (b"x-memento-user", b"a"), (b"x-memento-user", b"b")]
    repeated = httpx.post(url, content=chat(), headers=twice)
    assert repeated.status_code == 400 and "more than once" in error_of(repeated)["message"]


def test_the_same_user_in_body_and_header_is_served(
    proxy: RunningProxy, upstream: ScriptedUpstream
) -> None:
    response = httpx.post(
        proxy.base_url + "/v1/chat/completions",
        content=chat(user=" bj\u00f8rn"),
        headers=[
            (b"authorization", f"Bearer {KEY}".encode()),
            (b"x-memento-user", "bj\u00f8rn".encode()),
        ],
    )
    assert response.status_code == 200, response.text
    assert upstream.last().json["user"] == " bj\u00f8rn"  # the body reaches the upstream unchanged
