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
        ("[1, 2]", None, "must be a JSON object, not a JSON list"),
        (chat(model=...), "model", "Missing required parameter 'model'"),
        (chat(model=5), "model", "'model' must be a non-empty string, got int"),
        (chat(messages=...), "messages", "Missing required parameter 'messages'"),
        (chat(messages="hi"), "messages", "'messages' must be a list of message objects, got str"),
        (chat(messages=[]), "messages", "at least one message"),
        (chat(messages=["hi"]), "messages[0]", "'messages[0]' must be an object"),
        (chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role", "must be one of"),
        (chat(messages=[{"role": "user", "content": 5}]), "messages[0].content", "got int"),
        (chat(temperature="hot"), "temperature", "'temperature' must be a number, got str"),
        (chat(n=1.5), "n", "'n' must be an integer, got float"),
        (chat(max_tokens=True), "max_tokens", "'max_tokens' must be an integer, got bool"),
        (chat(stream="yes"), "stream", "'stream' must be true or false"),
        (chat(stop=[1]), "stop", "a string or a list of strings"),
        (chat(tools={"a": 1}), "tools", "a list of tool objects"),
        (chat(user=7), "user", "'user' must be a string"),
        (chat(stream_options=[]), "stream_options", "must be an object"),
    ],
)
def test_malformed_requests_are_400_with_a_fix(
    proxy: RunningProxy, upstream: ScriptedUpstream, content: str, param: str | None, says: str
) -> None:
    response = post(proxy, content)
    assert response.status_code == 400
    error = error_of(response)
    assert says in error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
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
