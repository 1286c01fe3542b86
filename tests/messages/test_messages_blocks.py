"""The Messages door's content blocks and tools, through the anthropic SDK and the real proxy:
a block or tool without what Anthropic requires of it is a 400 naming it; a relayed route takes
every block Anthropic does; a translated route refuses, rather than drops, what chat
completions cannot carry."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.harness import RunningProxy
from tests.messages.conftest import NATIVE, TRANSLATED, client_for
from tests.scripted_upstream import ScriptedUpstream

ASKED = {"role": "user", "content": "Weather in Paris?"}
CALLED = {
    "role": "assistant",
    "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"c": "P"}}],
}
WEATHER_TOOL = {"name": "weather", "input_schema": {"type": "object"}}
URL = {"type": "url"}
PDF = {"type": "base64", "media_type": "application/pdf"}


def _refused(proxy: RunningProxy, model: str, **body: Any) -> str:
    """The message of the 400 the call with `body` gets."""
    with pytest.raises(anthropic.BadRequestError) as caught:
        client_for(proxy).messages.create(model=model, max_tokens=16, **body)
    error: Any = caught.value.body
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    message: str = error["error"]["message"]
    return message


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED, "echo"])
@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "'messages[0].content[0].text' must be a string, got a number.",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "'messages[0].content[0]' is a text block without its 'text': send a string.",
        ),
        (
            {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]},
            "'messages[0].content[0]' must be a content block with a 'type'",
        ),
        (  # a translated route would drop the image without a word
            {"messages": [{"role": "user", "content": [{"type": "image", "source": URL}]}]},
            "'messages[0].content[0].source' is a url source without its 'url': send a string.",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": PDF}]}]},
            "'messages[0].content[0].source' is a base64 source without its 'data'",
        ),
        (
            {
                "messages": [
                    ASKED,
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": "t", "name": "weather", "input": "{}"}
                        ],
                    },
                ]
            },
            "'messages[1].content[0].input' must be an object (the tool's arguments, e.g. "
            '{"city": "Paris"}), got a string.',
        ),
        (
            {
                "messages": [
                    ASKED,
                    CALLED,
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "toolu_1",
                                "content": [{"type": "text", "text": None}],
                            }
                        ],
                    },
                ]
            },
            "'messages[2].content[0].content[0].text' must be a string, got null.",
        ),
        (
            {"messages": [ASKED], "tools": [{"name": "weather"}]},
            "'tools[0]' is a custom tool without its 'input_schema'",
        ),
        (
            {"messages": [ASKED], "tools": [WEATHER_TOOL, "weather"]},
            "'tools[1]' must be a tool object such as",
        ),
        (
            {"messages": [ASKED], "tools": [{"input_schema": {"type": "object"}}]},
            "'tools[0]' is a custom tool without its 'name'",
        ),
        (
            {"messages": [ASKED], "tools": [{"name": "weather", "input_schema": "object"}]},
            "'tools[0].input_schema' must be a JSON Schema object, got a string.",
        ),
    ],
)
def test_a_block_or_tool_missing_what_anthropic_requires_is_a_400_naming_it(
    upstream: ScriptedUpstream,
    messages_proxy: RunningProxy,
    model: str,
    body: dict[str, Any],
    says: str,
) -> None:
    assert says in _refused(messages_proxy, model, **body)
    assert upstream.received == []


@pytest.mark.parametrize(
    ("turns", "says"),
    [
        (
            [{"role": "user", "content": [{"type": "banana"}]}],
            "'messages[0].content[0]' is a 'banana' block; user turns sent to model '{model}' "
            "take text, image, document and tool_result blocks. Model '{model}' is answered "
            "through chat completions; for other blocks its upstream would need to serve the "
            "Messages API itself (native_apis: [messages] in the tenant's policy).",
        ),
        (
            [
                ASKED,
                {
                    "role": "assistant",
                    "content": [
                        {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}
                    ],
                },
            ],
            "'messages[1].content[0]' is a 'server_tool_use' block; assistant turns sent to "
            "model '{model}' take text, tool_use, thinking and redacted_thinking blocks.",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "search_result", "source": "s", "title": "t", "content": []}
                    ],
                }
            ],
            "is a 'search_result' block",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                }
            ],
            "'messages[0].content[0].source' is a 'file' source; chat completions take an image "
            "given as base64 data or a url.",
        ),
    ],
)
@pytest.mark.parametrize("model", [TRANSLATED, "echo"])
def test_a_translated_route_refuses_blocks_chat_completions_cannot_carry(
    upstream: ScriptedUpstream,
    messages_proxy: RunningProxy,
    model: str,
    turns: list[Any],
    says: str,
) -> None:
    assert says.format(model=model) in _refused(messages_proxy, model, messages=turns)
    assert upstream.received == []


def test_a_relayed_route_takes_every_block_anthropic_does(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy
) -> None:
    turns: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Summarise these."},
                {"type": "search_result", "source": "https://x.test", "title": "X", "content": []},
                {"type": "document", "source": {"type": "text", "data": "hi", "media_type": "t"}},
                {"type": "container_upload", "file_id": "file_1"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}},
                {"type": "web_search_tool_result", "tool_use_id": "srv_1", "content": []},
                {"type": "text", "text": "Searched."},
            ],
        },
        {"role": "user", "content": [{"type": "newer_block_type", "anything": 1}]},
    ]
    tools: list[Any] = [WEATHER_TOOL, {"type": "web_search_20250305", "name": "web_search"}]
    client_for(messages_proxy).messages.create(
        model=NATIVE, max_tokens=16, messages=turns, tools=tools
    )
    sent = upstream.last().json
    assert (sent["messages"], sent["tools"]) == (turns, tools)  # an upstream's to judge


def test_a_translated_route_takes_every_block_it_translates(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy
) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf"}}
    pdf["source"]["data"] = "JVBERi0="
    turns: list[Any] = [
        {"role": "user", "content": [{"type": "text", "text": "Weather here?"}, image, pdf]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Ask the tool.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "xyz"},
                *CALLED["content"],  # type: ignore[misc]
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "sunny"}, image],
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    client_for(messages_proxy).messages.create(
        model=TRANSLATED, max_tokens=16, messages=turns, tools=[WEATHER_TOOL]
    )
    sent = upstream.last().json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert [part["type"] for part in sent[0]["content"]] == ["text", "image_url", "file"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "weather"


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "bash_20250124", "name": "bash"},  # would reach chat completions as it is
        {"type": "computer_20250124", "name": "computer", "display_width_px": 1024},
        {"type": "web_search_20250305", "name": "web_search"},
    ],
)
def test_a_translated_route_refuses_anthropics_own_tools(
    upstream: ScriptedUpstream, messages_proxy: RunningProxy, tool: dict[str, Any]
) -> None:
    says = _refused(messages_proxy, TRANSLATED, messages=[ASKED], tools=[WEATHER_TOOL, tool])
    assert says.startswith(f"'tools[1]' is a {tool['type']!r} tool; model '{TRANSLATED}' takes")
    assert upstream.received == []
