"""Errors of the Messages door in Anthropic's shape, raised by the anthropic SDK as its own
exception classes: before the call (auth, model, body), from the upstream, and mid-stream."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import RunningProxy, write_tenant
from tests.messages.conftest import KEY, NATIVE, TRANSLATED, client_for
from tests.scripted_upstream import Reply, ScriptedUpstream

HELLO = [{"role": "user", "content": "Hello"}]


def _shape(error: anthropic.APIStatusError, error_type: str) -> str:
    body: Any = error.body
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert body["request_id"] == error.response.headers["x-request-id"]
    message: str = body["error"]["message"]
    return message


def test_a_bad_proxy_key_is_an_authentication_error(messages_proxy: RunningProxy) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client_for(messages_proxy, "not-a-key").messages.create(
            model=NATIVE, max_tokens=16, messages=HELLO
        )
    assert "Incorrect proxy key" in _shape(caught.value, "authentication_error")
    with pytest.raises(anthropic.AuthenticationError):
        client_for(messages_proxy, "not-a-key").messages.count_tokens(model=NATIVE, messages=HELLO)


def test_bearer_is_accepted_like_x_api_key(messages_proxy: RunningProxy) -> None:
    client = anthropic.Anthropic(base_url=messages_proxy.base_url, auth_token=KEY, max_retries=0)
    message = client.messages.create(model=TRANSLATED, max_tokens=16, messages=HELLO)
    assert message.content[0].type == "text"


def test_an_unknown_model_is_not_found(messages_proxy: RunningProxy) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client_for(messages_proxy).messages.create(
            model="claude-unknown", max_tokens=16, messages=HELLO
        )
    message = _shape(caught.value, "not_found_error")
    assert "claude-unknown" in message and f"{NATIVE}, claude-local, echo, {TRANSLATED}" in message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"max_tokens": 16, "messages": []}, "'messages' must contain at least one turn"),
        ({"max_tokens": 0, "messages": HELLO}, "'max_tokens' must be a positive integer"),
        ({"messages": HELLO}, "Missing required field 'max_tokens'"),
        (
            {"max_tokens": 16, "messages": [{"role": "system", "content": "Be terse."}]},
            "top-level 'system' field",
        ),
        ({"max_tokens": 16, "messages": HELLO, "system": 3}, "'system' must be a string"),
        (
            {"max_tokens": 16, "messages": HELLO, "metadata": {"user_id": " "}},
            "'metadata.user_id' is blank",
        ),
        ({"max_tokens": 16, "messages": HELLO, "stop_sequences": "END"}, "a list of strings"),
    ],
)
def test_a_bad_body_is_a_bad_request_saying_what_to_fix(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy, body: dict[str, Any], says: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client_for(messages_proxy).post(
            "/v1/messages", body={"model": NATIVE, **body}, cast_to=object
        )
    assert says in _shape(caught.value, "invalid_request_error")
    assert upstream.received == []


def test_a_bad_count_tokens_body_is_a_bad_request(messages_proxy: RunningProxy) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client_for(messages_proxy).messages.count_tokens(model=TRANSLATED, messages=[])
    assert "at least one turn" in _shape(caught.value, "invalid_request_error")


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
def test_upstream_failures_keep_anthropics_shape(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy, model: str
) -> None:
    client = client_for(messages_proxy)
    upstream.script(Reply(status=429, error={"type": "rate_limit_error", "message": "slow"}))
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model=model, max_tokens=16, messages=HELLO)
    assert "slow" in _shape(limited.value, "rate_limit_error")
    upstream.script(Reply(status=500))
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model=model, max_tokens=16, messages=HELLO)
    assert failed.value.status_code == 500
    assert "failed (HTTP 500)" in _shape(failed.value, "api_error")
    upstream.script(Reply(status=529, error={"type": "overloaded_error", "message": "busy"}))
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        client.messages.create(model=model, max_tokens=16, messages=HELLO)
    assert "busy" in _shape(overloaded.value, "overloaded_error")


def _stream_error(proxy: RunningProxy, model: str) -> Any:
    """The error body the SDK raises for a stream of `model` that ends in an error event."""
    client = client_for(proxy)
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model=model, max_tokens=64, messages=HELLO) as stream,
    ):
        stream.get_final_message()
    return caught.value.body


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
def test_a_stream_that_breaks_ends_with_an_anthropic_error_event(
    upstream: ScriptedUpstream,
    messages_proxy: RunningProxy,
    model: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    upstream.script(Reply(content="A long answer that never ends", cut_after=4))
    body = _stream_error(messages_proxy, model)
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "stream" in body["error"]["message"]
    # Logged once, as the request line's error, not as a crash with a traceback (the scripted
    # upstream's own server logs its cut: not the proxy's).
    proxy_side = [r for r in caplog.records if r.name.startswith(("memento", "LiteLLM"))]
    warned = [r.getMessage() for r in proxy_side if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and warned[0].endswith(" error=stream_incomplete"), warned


def test_an_empty_body_is_an_anthropic_shaped_bad_request(
    messages_proxy: RunningProxy,
) -> None:
    response = httpx.post(
        messages_proxy.base_url + "/v1/messages", headers={"x-api-key": KEY}, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_translated_stream_that_ends_before_done_ends_with_an_error_event(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy
) -> None:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": "Half an answ"}, "finish_reason": None}],
    }
    raw = b"data: " + json.dumps(chunk).encode() + b"\n\n"  # and no [DONE]
    upstream.script(Reply(raw=raw, content_type="text/event-stream"))
    assert _stream_error(messages_proxy, TRANSLATED)["error"] == {
        "type": "api_error",
        "message": "The upstream's stream ended before it was complete; retry the request.",
    }


def test_memory_unavailable_for_a_fail_closed_tenant_is_overloaded(
    upstream: ScriptedUpstream,
    policies_dir: Path,
    start_proxy: Callable[..., RunningProxy],
) -> None:
    models = {TRANSLATED: {"model": "openai/gpt-4o-mini", "api_base": upstream.url}}
    memory = {"fail_closed": True, "retrieval": {"deadline_ms": 1}}
    write_tenant(policies_dir, "acme", KEY, models, memory=memory)
    proxy = start_proxy(policies_dir)
    remembered = {"user": "lee", "kind": "preference", "text": "The user likes mate."}
    created = httpx.post(
        proxy.base_url + "/v1/memories",
        json=remembered,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert created.status_code == 201
    before = messages_requests(proxy)
    with pytest.raises(anthropic.OverloadedError) as caught:
        client_for(proxy).messages.create(
            model=TRANSLATED, max_tokens=16, messages=HELLO, metadata={"user_id": "lee"}
        )
    assert caught.value.status_code == 529
    assert "fail-closed" in _shape(caught.value, "overloaded_error")
    assert upstream.received == []  # nothing went upstream
    # The request metric counts the status the client saw, not the proxy's 503 behind it.
    counted = messages_requests(proxy)
    assert (counted.get("529", 0) - before.get("529", 0), counted.get("503")) == (1, None)


def messages_requests(proxy: RunningProxy) -> dict[str, float]:
    """`memento_requests_total` of the Messages door, by status (proxies in this process share
    one meter, so callers compare before and after)."""
    scraped = httpx.get(proxy.base_url + "/metrics", timeout=30).text
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "memento_requests_total" and sample.labels["api"] == "messages"
    }


def test_routes_and_methods_the_door_lacks_answer_in_anthropics_shape(
    messages_proxy: RunningProxy,
) -> None:
    headers = {"x-api-key": KEY}
    wrong_method = httpx.get(messages_proxy.base_url + "/v1/messages", headers=headers, timeout=30)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"
    assert "GET is not allowed" in wrong_method.json()["error"]["message"]
    unknown = httpx.post(
        messages_proxy.base_url + "/v1/messages/batches", headers=headers, timeout=30
    )
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "error"
    assert unknown.json()["error"]["type"] == "not_found_error"
    elsewhere = httpx.get(messages_proxy.base_url + "/v1/nothing", timeout=30)
    assert elsewhere.json()["error"]["code"] == "unknown_url"  # OpenAI's shape off the door


@pytest.mark.parametrize(
    ("status", "error_type", "message"),
    [(400, "invalid_request_error", "prompt is too long"), (529, "overloaded_error", "Overloaded")],
)
def test_an_anthropic_routes_errors_read_as_openai_errors_on_the_chat_door(
    upstream: ScriptedUpstream,
    messages_proxy: RunningProxy,
    status: int,
    error_type: str,
    message: str,
) -> None:
    """Through litellm, Anthropic's error document was the whole message ('{"type": "error",
    …}'), and its 529 a 502 quoting litellm's exception."""
    import openai

    client = openai.OpenAI(base_url=f"{messages_proxy.base_url}/v1", api_key=KEY, max_retries=0)
    sent = {"type": "error", "error": {"type": error_type, "message": message}}
    upstream.script(Reply(status=status, raw=json.dumps(sent).encode()))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=NATIVE, messages=HELLO)  # type: ignore[arg-type]
    assert caught.value.status_code == status
    assert caught.value.body == {
        "message": message,
        "type": error_type,
        "param": None,
        "code": None,
    }
