"""End to end: the official openai SDK → the real proxy → the scripted upstream, and back."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.memory.seam import NoMemory
from tests.harness import RunningProxy, write_tenant
from tests.scripted_upstream import Reply, ScriptedUpstream
from tests.test_support import wait_until

KEY = "acme-proxy-key"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_CALLS = [
    {
        "id": "call_abc123",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    }
]


@pytest.fixture
def proxy(
    upstream: ScriptedUpstream,
    policies_dir: Path,
    start_proxy: Callable[..., RunningProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> RunningProxy:
    monkeypatch.setenv("SCRIPTED_UPSTREAM_KEY", "sk-server-side-secret")
    write_tenant(
        policies_dir,
        "acme",
        KEY,
        {
            "fast": {
                "model": "openai/upstream-model",
                "api_base": upstream.url,
                "api_key": "env:SCRIPTED_UPSTREAM_KEY",
            },
            "translated": {
                "model": "openai/translated-model",
                "api_base": upstream.url,
                "api_key": "env:SCRIPTED_UPSTREAM_KEY",
                "passthrough": False,
            },
            "translated-priced": {  # a model litellm has a price for
                "model": "openai/gpt-4o-mini",
                "api_base": upstream.url,
                "api_key": "env:SCRIPTED_UPSTREAM_KEY",
                "passthrough": False,
            },
            "embedder": {"model": "openai/embed-model", "api_base": upstream.url},
            "echo": {"model": "echo"},
            "slow": {"model": "openai/slow", "api_base": upstream.url, "timeout_s": 0.3},
            "nowhere": {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1"},
            "translated-nowhere": {
                "model": "openai/x",
                "api_base": "http://127.0.0.1:9/v1",
                "passthrough": False,
            },
        },
    )
    write_tenant(policies_dir, "other", "other-key", {"echo": {"model": "echo"}})
    return start_proxy(policies_dir, memory=NoMemory())  # the core alone: memory has its own tests


@pytest.fixture
def client(proxy: RunningProxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def aclient(proxy: RunningProxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url + "/v1", api_key=KEY, max_retries=0)


def test_every_parameter_reaches_the_upstream_unchanged(
    client: openai.OpenAI, upstream: ScriptedUpstream
) -> None:
    params: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
        ],
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_object"},
        "temperature": 0.25,
        "top_p": 0.9,
        "n": 2,
        "stop": ["\n\n", "END"],
        "seed": 42,
        "max_tokens": 77,
        "max_completion_tokens": 88,
        "logprobs": True,
        "top_logprobs": 3,
        "user": "user-17",
        "metadata": {"project": "alpha"},
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "logit_bias": {"50256": -100},
        "parallel_tool_calls": False,
    }
    client.chat.completions.create(model="fast", **params, extra_body={"custom_field": [1, 2]})
    received = upstream.last()
    assert received.path == "/v1/chat/completions"
    sent = received.json
    assert sent.pop("model") == "upstream-model"
    assert sent.pop("custom_field") == [1, 2]
    assert sent == params


def test_every_content_part_openai_takes_reaches_the_upstream_unchanged(
    client: openai.OpenAI, upstream: ScriptedUpstream
) -> None:
    messages: list[Any] = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                {"type": "file", "file": {"file_id": "file-1"}},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Partly:"}, {"type": "refusal", "refusal": "no"}],
        },
        {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS},
        {"role": "tool", "tool_call_id": "call_abc123", "content": [{"type": "text", "text": "9"}]},
        {"role": "user", "content": []},
    ]
    client.chat.completions.create(model="fast", messages=messages)
    assert upstream.last().json["messages"] == messages


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "banana"}], "messages[0].content[0]"),
        (["hi"], "messages[0].content[0]"),
        (
            [{"type": "text", "text": "ok"}, {"type": "text", "text": 5}],
            "messages[0].content[1].text",
        ),
    ],
)
def test_a_content_part_openai_refuses_is_a_400_naming_it(
    client: openai.OpenAI, upstream: ScriptedUpstream, content: list[Any], param: str
) -> None:
    for model in ("fast", "echo"):  # the echo model answered these with an empty user turn
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": content}]
            )
        body: Any = caught.value.body
        assert body["param"] == param and body["type"] == "invalid_request_error"
    assert upstream.received == []


def test_provider_key_is_the_servers_and_the_client_key_never_leaves(
    client: openai.OpenAI, upstream: ScriptedUpstream
) -> None:
    client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    headers = upstream.last().headers
    assert headers["authorization"] == "Bearer sk-server-side-secret"
    assert KEY not in json.dumps(headers)


def test_non_streamed_answer_and_request_id(
    client: openai.OpenAI, upstream: ScriptedUpstream
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="fast", messages=[{"role": "user", "content": "ping"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "scripted reply to: ping"
    assert completion.usage is not None and completion.usage.total_tokens == 12
    assert raw.headers["x-request-id"].startswith("req_")

    # A client's own id is echoed as a correlation id; the request id stays the proxy's.
    for header in ("x-request-id", "x-client-request-id"):
        mine = client.chat.completions.with_raw_response.create(
            model="fast",
            messages=[{"role": "user", "content": "ping"}],
            extra_headers={header: "trace-me-42"},
        )
        assert mine.headers["x-client-request-id"] == "trace-me-42"
        assert mine.headers["x-request-id"].startswith("req_")
        assert mine.headers["x-request-id"] != raw.headers["x-request-id"]
    insane = client.chat.completions.with_raw_response.create(
        model="fast",
        messages=[{"role": "user", "content": "ping"}],
        extra_headers={"x-request-id": "no spaces; please"},
    )
    assert "x-client-request-id" not in insane.headers


@pytest.mark.parametrize("model", ["fast", "translated"])
def test_tool_calls_come_back_unchanged(
    client: openai.OpenAI, upstream: ScriptedUpstream, model: str
) -> None:
    upstream.script(Reply(tool_calls=TOOL_CALLS))
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None
    assert [c.model_dump(exclude_none=True) for c in calls] == TOOL_CALLS
    assert completion.choices[0].finish_reason == "tool_calls"
    assert upstream.last().json["tools"] == TOOLS


@pytest.mark.parametrize("model", ["fast", "translated"])
def test_streamed_tool_calls_come_back_unchanged(
    client: openai.OpenAI, upstream: ScriptedUpstream, model: str
) -> None:
    upstream.script(Reply(tool_calls=TOOL_CALLS))
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS, stream=True
    )
    name, arguments, call_id, finish = "", "", None, None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                call_id = call.id or call_id
                name += (call.function and call.function.name) or ""
                arguments += (call.function and call.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert (call_id, name, arguments) == (
        "call_abc123",
        "get_weather",
        TOOL_CALLS[0]["function"]["arguments"],
    )
    assert finish == "tool_calls"


@pytest.mark.parametrize("model", ["fast", "translated", "translated-priced", "echo"])
def test_streaming_with_usage(
    client: openai.OpenAI, upstream: ScriptedUpstream, model: str
) -> None:
    upstream.script(Reply(content="one two three four", chunk_count=4))
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].total_tokens > 0
    assert chunks[-1].usage is not None  # usage comes last, after the content
    assert not usage[0].model_extra  # OpenAI's usage fields only: litellm adds `cost`
    if model == "echo":
        assert text.startswith("echo: received 1 message(s) (1 user)")
    else:
        assert text == "one two three four"
        assert upstream.last().json["stream_options"] == {"include_usage": True}


def test_raw_stream_ends_with_done(proxy: RunningProxy, upstream: ScriptedUpstream) -> None:
    body = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream(
        "POST",
        proxy.base_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {KEY}"},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"]
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


async def test_async_client_streams_and_not(
    aclient: openai.AsyncOpenAI, upstream: ScriptedUpstream
) -> None:
    completion = await aclient.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "async"}]
    )
    assert completion.choices[0].message.content == "scripted reply to: async"
    stream = await aclient.chat.completions.create(
        model="translated", messages=[{"role": "user", "content": "async stream"}], stream=True
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == "scripted reply to: async stream"


def test_litellm_path_forwards_parameters(
    client: openai.OpenAI, upstream: ScriptedUpstream
) -> None:
    client.chat.completions.create(
        model="translated",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.3,
        seed=7,
        max_tokens=50,
        stop=["END"],
        user="u-1",
        metadata={"k": "v"},
    )
    sent = upstream.last().json
    assert sent["model"] == "translated-model"
    assert upstream.last().headers["authorization"] == "Bearer sk-server-side-secret"
    for name, value in {
        "temperature": 0.3,
        "seed": 7,
        "max_tokens": 50,
        "stop": ["END"],
        "user": "u-1",
        "metadata": {"k": "v"},
    }.items():
        assert sent[name] == value, name


def test_embeddings_are_forwarded(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    result = client.embeddings.create(model="embedder", input=["alpha", "beta"])
    assert [d.embedding for d in result.data] == [[5.0, 0.5, -0.5], [4.0, 0.5, -0.5]]
    received = upstream.last()
    assert received.path == "/v1/embeddings"
    assert received.json["model"] == "embed-model"
    assert received.json["input"] == ["alpha", "beta"]


def test_models_lists_only_this_tenants_aliases(proxy: RunningProxy) -> None:
    acme = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=KEY)
    other = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="other-key")
    assert {m.id for m in acme.models.list()} == {
        "fast",
        "translated",
        "translated-priced",
        "embedder",
        "echo",
        "slow",
        "nowhere",
        "translated-nowhere",
    }
    assert [m.id for m in other.models.list()] == ["echo"]
    assert acme.models.retrieve("fast").id == "fast"
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve("fast")


def test_echo_describes_what_it_received(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="echo",
        messages=[
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"},
        ],
    )
    text = completion.choices[0].message.content or ""
    assert text.startswith("echo: received 4 message(s) (1 system, 2 user, 1 assistant).")
    assert "'second'" in text


def test_echo_streams_every_choice_it_is_asked_for(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "twice"}]
    whole = client.chat.completions.create(model="echo", messages=messages, n=2)
    stream = client.chat.completions.create(model="echo", messages=messages, n=2, stream=True)
    texts: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            finishes[choice.index] = choice.finish_reason or finishes.get(choice.index)
    assert [c.index for c in whole.choices] == [0, 1]
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert texts[1].startswith("echo: received 1 message(s) (1 user)")
    assert finishes == {0: "stop", 1: "stop"}


def test_unknown_or_missing_key_is_401(proxy: RunningProxy) -> None:
    bad = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 401
    assert "memento-proxy keys hash" in caught.value.message
    response = httpx.get(proxy.base_url + "/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    response = httpx.get(proxy.base_url + "/v1/models", headers={"authorization": "Basic eDp5"})
    assert response.status_code == 401
    assert "not 'Bearer <key>': 'Basic'" in response.json()["error"]["message"]


def test_a_gateways_basic_credentials_do_not_hide_the_x_api_key(
    proxy: RunningProxy, client: openai.OpenAI
) -> None:
    """An Authorization header of another scheme hid the key sent as x-api-key: 'No proxy key
    provided'."""
    key = client.api_key
    headers = {"authorization": "Basic eDp5", "x-api-key": key}
    response = httpx.get(proxy.base_url + "/v1/models", headers=headers)
    assert response.status_code == 200, response.text


def test_model_not_allowed_is_404(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"
    assert "fast" in caught.value.message
    assert upstream.received == []


@pytest.mark.parametrize("model", ["fast", "translated"])
def test_rate_limit_stays_429_with_retry_after(
    client: openai.OpenAI, upstream: ScriptedUpstream, model: str
) -> None:
    rate_limited = Reply(
        status=429,
        headers={"retry-after": "7"},
        error={
            "message": "slow down",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        },
    )
    upstream.script(*[rate_limited] * 3)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 429
    assert len(upstream.received) == 1  # the client retries; the proxy does not retry for it
    assert caught.value.response.headers["retry-after"] == "7"
    # The proxy's own words on either route: no litellm class names or provider prefixes.
    assert caught.value.body == {
        "message": "upstream rate limit: slow down",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert caught.value.response.headers["x-request-id"]


def test_litellm_route_relays_the_upstreams_error_fields(
    client: openai.OpenAI, upstream: ScriptedUpstream
) -> None:
    bad_tools = {"message": "bad tools", "type": "invalid_request_error", "param": "tools"}
    upstream.script(Reply(status=400, error={**bad_tools, "code": None}))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="translated", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body == {**bad_tools, "code": None}
    # Not OpenAI's error shape: litellm's message, without its wrapping.
    upstream.script(*[Reply(status=429, raw=b"slow down", content_type="text/plain")] * 3)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(
            model="translated", messages=[{"role": "user", "content": "x"}]
        )
    assert limited.value.status_code == 429
    assert limited.value.body == {
        "message": "upstream rate limit: slow down",
        "type": "rate_limit_error",
        "param": None,
        "code": None,
    }


def _sse(*chunks: dict[str, Any]) -> bytes:
    events = [b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks]
    return b"".join(events) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_route_answers_in_openais_shape(
    proxy: RunningProxy, upstream: ScriptedUpstream, stream: bool
) -> None:
    """litellm moves fields it does not know into `provider_specific_fields` (and passes an
    upstream's own, e.g. a LiteLLM server's, through): none of them reach the client."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    if stream:
        delta = {"role": "assistant", "content": "Hi", "provider_specific_fields": {"x": 1}}
        done = {"index": 0, "delta": {}, "finish_reason": "stop"}
        raw = _sse({**head, "choices": [{"index": 0, "delta": delta}]}, {**head, "choices": [done]})
        upstream.script(Reply(raw=raw, content_type="text/event-stream"))
    else:
        message = {"role": "assistant", "content": "Hi", "vendor_note": "x"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        body = {**head, "object": "chat.completion", "choices": [choice]}
        upstream.script(Reply(raw=json.dumps(body).encode()))
    response = httpx.post(
        proxy.base_url + "/v1/chat/completions",
        json={
            "model": "translated",
            "messages": [{"role": "user", "content": "x"}],
            "stream": stream,
        },
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 200, response.text
    assert "provider_specific_fields" not in response.text
    if stream:
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(
            choice["delta"].get("content") or ""
            for event in events[:-1]
            for choice in json.loads(event)["choices"]
        )
        assert text == "Hi"
    else:
        assert response.json()["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}


def test_upstream_errors_keep_meaningful_status(
    client: openai.OpenAI, upstream: ScriptedUpstream
) -> None:
    upstream.script(
        Reply(
            status=400,
            error={
                "message": "bad tools",
                "type": "invalid_request_error",
                "param": "tools",
                "code": None,
            },
        )
    )
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    assert bad.value.param == "tools"

    upstream.script(Reply(status=401))
    with pytest.raises(openai.APIStatusError) as auth:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    assert auth.value.status_code == 502  # the server's credentials, not the client's
    assert "api_key" in auth.value.message

    upstream.script(Reply(status=500))
    with pytest.raises(openai.InternalServerError) as server:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    assert server.value.status_code == 502
    assert "'fast'" in server.value.message


@pytest.mark.parametrize("model", ["fast", "translated"])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_answering_200_with_a_web_page_is_502(
    proxy: RunningProxy, upstream: ScriptedUpstream, stream: bool, model: str
) -> None:
    """A gateway's login or error page in front of the model is not an answer to relay, nor
    one to translate into an empty answer."""
    page = b"<html><body>Please sign in</body></html>"
    upstream.script(Reply(raw=page, content_type="text/html; charset=utf-8"))
    response = httpx.post(
        proxy.base_url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "x"}], "stream": stream},
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 502, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    if model == "fast" or stream:  # litellm reads a page as a failed JSON parse, not as a page
        assert error["code"] == "upstream_bad_response"
        wanted = "text/event-stream" if stream else "application/json"
        assert f"with text/html; charset=utf-8 instead of {wanted}" in error["message"]
    if model == "fast":  # the relay quotes it too
        assert "Please sign in" in error["message"]


@pytest.mark.parametrize("model", ["fast", "translated"])
def test_upstream_answering_200_with_a_body_that_is_not_json_is_502(
    client: openai.OpenAI, upstream: ScriptedUpstream, model: str
) -> None:
    upstream.script(Reply(raw=b"{not json", content_type="application/json"))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    if model == "fast":
        body = caught.value.body
        assert isinstance(body, dict) and body["code"] == "upstream_bad_response"
        assert "not a JSON object" in caught.value.message and "{not json" in caught.value.message


def test_every_call_has_its_request_line_in_the_log_failed_ones_with_why(
    client: openai.OpenAI, upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memento.proxy")
    client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    upstream.script(Reply(status=500))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong").chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "x"}]
        )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request=")]
    assert len(lines) == 4, lines
    answered, failed, unknown, refused = lines
    assert "tenant=acme api=chat_completions model=fast stream=False status=200" in answered
    assert "tenant=acme api=chat_completions model=fast stream=False status=502" in failed
    assert failed.endswith("error=upstream_error")
    assert "model=- stream=False status=404" in unknown and unknown.endswith(
        "error=model_not_found"
    )
    assert "tenant=- api=chat_completions model=- stream=False status=401" in refused
    warned = [r for r in caplog.records if "status=502" in r.getMessage()]
    assert [r.levelno for r in warned] == [logging.WARNING]


def test_upstream_timeout_is_504(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.script(Reply(delay_s=2.0))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 504
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_timeout"


@pytest.mark.parametrize("model", ["nowhere", "translated-nowhere"])
def test_unreachable_upstream_is_502(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    assert "litellm" not in caught.value.message and "Exception" not in caught.value.message
    with pytest.raises(openai.APIStatusError) as streamed:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert streamed.value.status_code == 502


def test_upstream_dropping_the_connection_is_502(
    client: openai.OpenAI, upstream: ScriptedUpstream
) -> None:
    upstream.script(Reply(drop=True))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502


@pytest.mark.parametrize("model", ["fast", "translated"])
def test_missing_provider_key_is_the_servers_misconfiguration(
    client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch, upstream: ScriptedUpstream, model: str
) -> None:
    monkeypatch.delenv("SCRIPTED_UPSTREAM_KEY")
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 500
    assert caught.value.type == "server_error" and caught.value.code == "upstream_misconfigured"
    assert "SCRIPTED_UPSTREAM_KEY" in caught.value.message and "operator" in caught.value.message
    assert "Traceback" not in caught.value.response.text
    assert upstream.received == []


@pytest.mark.parametrize("model", ["fast", "translated"])
def test_client_disconnect_mid_stream_cancels_the_upstream_call(
    proxy: RunningProxy, upstream: ScriptedUpstream, model: str
) -> None:
    upstream.script(Reply(hang=True))
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "long"}]}
    with httpx.stream(
        "POST",
        proxy.base_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {KEY}"},
        timeout=30,
    ) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    # The client hung up; the proxy must hang up on the upstream (which waits for exactly that).
    wait_until(lambda: upstream.disconnects == 1)
    assert upstream.completed_streams == 0


@pytest.mark.parametrize("model", ["fast", "translated"])
def test_upstream_breaking_off_a_stream_raises_in_the_sdk(
    client: openai.OpenAI, upstream: ScriptedUpstream, model: str
) -> None:
    upstream.script(Reply(content="a long answer that never ends", chunk_count=6, cut_after=2))
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "go"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    assert "broke off the stream" in caught.value.message
