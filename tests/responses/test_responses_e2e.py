"""The Responses door end to end: openai SDK → proxy → scripted upstream, translated and relayed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.harness import RunningProxy
from tests.memory.conftest import OTHER_KEY, api, client_for, wait_for_memories
from tests.responses.conftest import NATIVE, TRANSLATED
from tests.scripted_upstream import Reply, ScriptedUpstream

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
WEATHER_CALL = {
    "id": "call_w1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
}


def test_translated_call_answers_as_a_response_and_asks_chat_completions(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    client = client_for(responses_proxy())
    raw = client.responses.with_raw_response.create(
        model=TRANSLATED,
        instructions="Be brief.",
        input="What is the capital of Norway?",
        max_output_tokens=50,
        metadata={"topic": "geo"},
    )
    response = raw.parse()
    assert response.output_text == "scripted reply to: What is the capital of Norway?"
    assert response.status == "completed"
    assert response.instructions == "Be brief."
    assert response.metadata == {"topic": "geo"}
    assert response.model == TRANSLATED
    assert response.usage is not None and response.usage.input_tokens == 5
    assert raw.headers["x-request-id"] and raw.headers["x-memento-memories"] == "0"
    sent = upstream.last()
    assert sent.path == "/v1/chat/completions"
    assert sent.json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of Norway?"},
    ]
    assert sent.json["max_tokens"] == 50 and sent.json["model"] == "gpt-4o-mini"


def test_translated_stream_is_typed_events_in_order(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    client = client_for(responses_proxy())
    with client.responses.with_streaming_response.create(
        model=TRANSLATED, input="Say hello", stream=True
    ) as raw:
        assert raw.headers["x-request-id"] and raw.headers["x-memento-memories"] == "0"
        events = list(raw.parse())
    types = [event.type for event in events]
    assert types[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert deltas == final.output_text == "scripted reply to: Say hello"
    assert upstream.last().json["stream"] is True


def test_translated_function_tool_round_trip_streamed(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    client = client_for(responses_proxy())
    upstream.script(Reply(tool_calls=[WEATHER_CALL]))
    stream = client.responses.create(
        model=TRANSLATED, input="Weather in Oslo?", tools=[WEATHER_TOOL], stream=True
    )
    events = list(stream)
    types = [event.type for event in events]
    assert "response.function_call_arguments.delta" in types
    assert types.index("response.function_call_arguments.done") < types.index("response.completed")
    first = events[-1].response  # type: ignore[union-attr]
    (call,) = first.output
    assert call.type == "function_call" and call.call_id == "call_w1"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    assert upstream.last().json["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["parameters"],
                "description": "The weather in a city.",
            },
        }
    ]

    second = client.responses.create(
        model=TRANSLATED,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_w1", "output": "Sunny, 21C"}],
        tools=[WEATHER_TOOL],
    )
    assert second.output_text.startswith("scripted reply to:")
    assert upstream.last().json["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "Sunny, 21C"},
    ]


def test_previous_response_id_over_three_turns_then_retrieve_list_and_delete(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = responses_proxy()
    client = client_for(proxy)
    first = client.responses.create(model=TRANSLATED, input="My name is Ada.", user="ada")
    second = client.responses.create(
        model=TRANSLATED, input="I like chess.", previous_response_id=first.id, user="ada"
    )
    # A call whose conversation carries the earlier turns does not wait for them to be learned
    # (read-your-writes waits only for what the call lacks): let them be, so memory has them.
    wait_for_memories(proxy, "ada", 2)
    third = client.responses.create(
        model=TRANSLATED,
        instructions="Answer in French.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Who am I?"}]}],
        previous_response_id=second.id,
        user="ada",
    )
    system, *messages = upstream.last().json["messages"]
    # Ada's name, learned from the first turn, is in the memory block after the instructions.
    assert system["content"].startswith("Answer in French.\n\n<memory-")
    assert messages == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "scripted reply to: My name is Ada."},
        {"role": "user", "content": "I like chess."},
        {"role": "assistant", "content": "scripted reply to: I like chess."},
        {"role": "user", "content": "Who am I?"},
    ]
    assert third.previous_response_id == second.id

    retrieved = client.responses.retrieve(third.id)
    assert retrieved.id == third.id and retrieved.output_text == third.output_text
    items = client.responses.input_items.list(third.id, order="asc")
    texts = [item.content[0].text for item in items.data]  # type: ignore[union-attr]
    assert texts == [
        "My name is Ada.",
        "scripted reply to: My name is Ada.",
        "I like chess.",
        "scripted reply to: I like chess.",
        "Who am I?",
    ]
    with pytest.raises(openai.NotFoundError):
        client_for(proxy, OTHER_KEY).responses.retrieve(third.id)  # another tenant's
    with pytest.raises(openai.BadRequestError, match="No response with id"):
        client.responses.create(  # another user's conversation is not continued
            model=TRANSLATED, input="And me?", previous_response_id=third.id, user="bob"
        )

    client.responses.delete(third.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(third.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(third.id)


def test_a_relayed_call_cannot_continue_another_users_conversation(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = responses_proxy()
    client = client_for(proxy)
    alices = client.responses.create(model=NATIVE, input="My PIN is 4321.", user="alice")
    upstream.reset()
    with pytest.raises(openai.BadRequestError, match="No response with id") as refused:
        client.responses.create(  # the upstream would answer with alice's conversation
            model=NATIVE, input="What is my PIN?", previous_response_id=alices.id, user="bob"
        )
    assert refused.value.code == "response_not_found"
    assert upstream.received == []
    # Nor another tenant's, whose calls go to the same upstream (they answered 200).
    with pytest.raises(openai.BadRequestError, match="No response with id") as refused:
        client_for(proxy, OTHER_KEY).responses.create(
            model=NATIVE, input="What is my PIN?", previous_response_id=alices.id, user="alice"
        )
    assert refused.value.code == "response_not_found"
    assert upstream.received == []
    follow_up = client.responses.create(
        model=NATIVE, input="And again", previous_response_id=alices.id, user="alice"
    )
    assert follow_up.output_text == "native reply to: And again"
    # An id the proxy keeps for no tenant is the upstream's to know.
    unknown = client_for(proxy, OTHER_KEY).responses.create(
        model=NATIVE, input="Go on", previous_response_id="resp_made_elsewhere", user="alice"
    )
    assert unknown.output_text == "native reply to: Go on"


def test_store_false_keeps_nothing(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    client = client_for(responses_proxy())
    response = client.responses.create(model=TRANSLATED, input="Forget this.", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


@pytest.mark.parametrize("stream", [False, True])
def test_native_upstream_gets_the_call_unchanged_but_for_the_model(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy], stream: bool
) -> None:
    client = client_for(responses_proxy())
    request: dict[str, Any] = {
        "model": NATIVE,
        "input": [{"role": "user", "content": "Hi there"}],
        "tools": [WEATHER_TOOL],
        "metadata": {"k": "v"},
        "store": True,
        "stream": stream,
    }
    if stream:
        events = list(client.responses.create(**request))
        assert events[-1].type == "response.completed"
        response = events[-1].response  # type: ignore[union-attr]
        assert [e.sequence_number for e in events] == list(range(len(events)))
    else:
        response = client.responses.create(**request)
    assert response.output_text == "native reply to: Hi there"
    sent = upstream.last()
    assert sent.path == "/v1/responses"
    assert sent.json == {**request, "model": "gpt-4o"}
    assert client.responses.retrieve(response.id).output_text == "native reply to: Hi there"
    follow_up = client.responses.create(
        model=NATIVE, input="And again", previous_response_id=response.id
    )
    assert upstream.last().json["previous_response_id"] == response.id  # the upstream's own
    assert follow_up.output_text == "native reply to: And again"


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"input": "hi"}, "model", "Missing required parameter 'model'"),
        ({"model": TRANSLATED}, "input", "Missing required parameter 'input'"),
        ({"model": TRANSLATED, "input": 5}, "input", "'input' must be a string"),
        ({"model": TRANSLATED, "input": [{"content": "x"}]}, "input[0]", "no 'type'"),
        (
            {"model": TRANSLATED, "input": [{"role": "robot", "content": "x"}]},
            "input[0].role",
            "must be one of",
        ),
        (
            {"model": TRANSLATED, "input": [{"type": "function_call_output", "output": "x"}]},
            "input[0].call_id",
            "call_id",
        ),
        ({"model": TRANSLATED, "input": "x", "stream": "yes"}, "stream", "true or false"),
        (
            {"model": TRANSLATED, "input": "x", "max_output_tokens": 0},
            "max_output_tokens",
            "positive",
        ),
        (
            {"model": TRANSLATED, "input": "x", "tools": [{"type": "web_search"}]},
            "tools[0]",
            "native_apis: [responses]",
        ),
        (
            {"model": TRANSLATED, "input": "x", "tools": [{"type": "function"}]},
            "tools[0].name",
            "'tools[0]' is a function tool without its 'name': send "
            '{"type": "function", "name": "get_weather", "parameters": {...}}.',
        ),
        (
            {"model": NATIVE, "input": "x", "tools": [{"type": "function"}]},
            "tools[0].name",
            "a function tool without its 'name'",
        ),
        (
            {
                "model": TRANSLATED,
                "input": "x",
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "tools[0].name",
            "(not under 'function', as chat completions have it)",
        ),
        (
            {"model": TRANSLATED, "input": "x", "tools": [{"type": "function", "name": 5}]},
            "tools[0].name",
            "'tools[0].name' must be the function's name, a non-empty string, got a number.",
        ),
        (
            {
                "model": TRANSLATED,
                "input": "x",
                "tools": [{"type": "function", "name": "f", "parameters": "{}"}],
            },
            "tools[0].parameters",
            "must be a JSON Schema object, got a string.",
        ),
        ({"model": TRANSLATED, "input": "x", "tools": [{"name": "f"}]}, "tools[0].type", "kind"),
        ({"model": TRANSLATED, "input": "x", "tools": ["f"]}, "tools[0]", "got a string."),
        (
            {
                "model": TRANSLATED,
                "input": [{"type": "function_call", "call_id": "c", "name": "f"}],
            },
            "input[0].arguments",
            "must be the arguments as a JSON string",
        ),
        (
            {
                "model": TRANSLATED,
                "input": [
                    {"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}
                ],
            },
            "input[0].content[0]",
            "'input_file' part",
        ),
        (  # what it refers to would be lost: the model would never see it
            {"model": TRANSLATED, "input": [{"type": "item_reference", "id": "msg_1"}]},
            "input[0]",
            "'item_reference' item",
        ),
        ({"model": TRANSLATED, "input": "x", "conversation": "conv_1"}, "conversation", "keeps"),
        ({"model": TRANSLATED, "input": "x", "prompt": {"id": "pmpt_1"}}, "prompt", "keeps"),
        (
            {"model": TRANSLATED, "input": "x", "previous_response_id": "resp_nope"},
            "previous_response_id",
            "No response with id 'resp_nope'",
        ),
    ],
)
def test_bad_bodies_get_openai_shaped_400s(
    upstream: ScriptedUpstream,
    responses_proxy: Callable[..., RunningProxy],
    body: dict[str, Any],
    param: str,
    says: str,
) -> None:
    with api(responses_proxy()) as http:
        response = http.post("/v1/responses", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert upstream.received == []


def test_a_function_tool_without_a_name_is_refused_for_that_through_the_sdk(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    client = client_for(responses_proxy())
    tools: Any = [WEATHER_TOOL, {"type": "function", "parameters": {"type": "object"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=TRANSLATED, input="Weather?", tools=tools)
    body: Any = caught.value.body
    assert body["param"] == "tools[1].name" and body["code"] == "missing_required_parameter"
    assert "function tool without its 'name'" in body["message"]
    assert "only function tools" not in body["message"]  # it is one
    assert upstream.received == []


def test_input_items_limit_is_a_whole_number_in_range(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    # "²" passed str.isdigit() and then failed int(): a 500 with a traceback in the log.
    proxy = responses_proxy()
    response = client_for(proxy).responses.create(model="echo", input="Hello!", user="alice")
    with api(proxy) as http:
        path = f"/v1/responses/{response.id}/input_items"
        assert http.get(path, params={"limit": "1"}).status_code == 200
        for limit in ("\u00b2", "99999999999999999999999999", "0", "101", "-1", "1.5"):
            refused = http.get(path, params={"limit": limit})
            assert refused.status_code == 400, (limit, refused.text)
            error = refused.json()["error"]
            assert (error["param"], error["type"]) == ("limit", "invalid_request_error")
            assert "from 1 to 100" in error["message"]


def test_the_readme_quickstart_answers_through_echo(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    client = client_for(responses_proxy())
    response = client.responses.create(model="echo", input="Hello!", user="alice")
    assert response.output_text.startswith("echo: received 1 message(s) (1 user).")
    assert "last user message: 'Hello!'" in response.output_text


def test_a_broken_translated_stream_ends_with_an_error_event_and_keeps_nothing(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    client = client_for(responses_proxy())
    upstream.script(Reply(cut_after=2))
    events = list(client.responses.create(model=TRANSLATED, input="Tell me a story", stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "error"
    assert "response.completed" not in [event.type for event in events]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(events[0].response.id)  # type: ignore[union-attr]


@pytest.mark.parametrize("model", [TRANSLATED, NATIVE])
def test_an_upstream_error_reaches_the_client_in_openai_shape(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy], model: str
) -> None:
    client = client_for(responses_proxy())
    error = {"message": "bad tool schema", "type": "invalid_request_error", "param": "tools"}
    upstream.script(Reply(status=400, error={**error, "code": None}))
    with pytest.raises(openai.BadRequestError, match="bad tool schema") as raised:
        client.responses.create(model=model, input="Hi")
    assert raised.value.param == "tools"


def test_input_tokens_are_counted_by_a_native_upstream_or_here(
    upstream: ScriptedUpstream, responses_proxy: Callable[..., RunningProxy]
) -> None:
    """client.responses.input_tokens.count() answered 405 'Method POST is not allowed' (it
    matched /v1/responses/{id})."""
    from tests.scripted_responses import COUNTED_TOKENS

    proxy = responses_proxy()
    client = client_for(proxy)
    first = client.responses.create(model=TRANSLATED, input="My name is Ada.", user="ada")
    sent = len(upstream.received)

    alone = client.responses.input_tokens.count(model=TRANSLATED, input="Who am I?")
    assert alone.object == "response.input_tokens" and 5 < alone.input_tokens < 40
    continued = client.responses.input_tokens.count(
        model=TRANSLATED,
        input="Who am I?",
        instructions="Answer in French.",
        previous_response_id=first.id,
        extra_headers={"X-Memento-User": "ada"},
    )
    # The earlier turn and the instructions count; nothing was asked of the chat upstream.
    assert continued.input_tokens > alone.input_tokens + 10
    assert len(upstream.received) == sent

    relayed = client.responses.input_tokens.count(model=NATIVE, input="Who am I?")
    assert relayed.input_tokens == COUNTED_TOKENS
    assert upstream.last().path == "/v1/responses/input_tokens"
    assert upstream.last().json["model"] == "gpt-4o"

    with pytest.raises(openai.BadRequestError, match="model"):
        client.responses.input_tokens.count(input="Who am I?")
    with pytest.raises(openai.BadRequestError, match="No response with id"):
        client.responses.input_tokens.count(
            model=TRANSLATED, input="And me?", previous_response_id=first.id
        )
