"""Checking a Messages request body, with messages that say what to fix.

Only what the proxy relies on (the model, the turns it reads for memory, `system`, `max_tokens`,
`metadata.user_id`) and the fields whose wrong type would come back as an obscure upstream error
are checked; everything else reaches the upstream as it came.

Content blocks: every block names its `type`, and a block of one of Anthropic's types carries
the fields Anthropic requires of it (a text block's `text` string, a tool_use block's `id`,
`name` and `input` object…). A block type the proxy does not know is the upstream's to judge on
a relayed route (Anthropic adds types, some behind `anthropic-beta`). A translated route takes
only the blocks litellm's adapter turns into chat completions (`check_translatable`): it drops
any other silently, which would lose the turn, so such a call is refused instead.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers

from proxy.errors import ProxyError, bad_request
from proxy.validation import call_user_id, json_type

ROLES = ("user", "assistant")
_NUMBER_FIELDS = ("temperature", "top_p")
_OBJECT_FIELDS = ("metadata", "tool_choice", "thinking")


def _wrong(where: str, wanted: str, value: Any) -> ProxyError:
    return bad_request(f"'{where}' must be {wanted}, got {json_type(value)}.", param=where)


def _missing(name: str, example: str) -> ProxyError:
    return bad_request(f"Missing required field '{name}': {example}.", param=name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_TOOL_INPUT = 'an object (the tool\'s arguments, e.g. {"city": "Paris"})'
_SOURCE = 'an object such as {"type": "base64", "media_type": "image/png", "data": "…"}'
# The string fields Anthropic requires of each kind of image or document source.
_SOURCE_FIELDS = {
    "base64": ("media_type", "data"),
    "url": ("url",),
    "text": ("media_type", "data"),
    "file": ("file_id",),
}
# The fields Anthropic requires of each of its block types: name, JSON type, what to send.
_BLOCK_FIELDS: dict[str, tuple[tuple[str, type, str], ...]] = {
    "text": (("text", str, "a string"),),
    "image": (("source", dict, _SOURCE),),
    "document": (("source", dict, _SOURCE),),
    "search_result": (
        ("source", str, "a string"),
        ("title", str, "a string"),
        ("content", list, "a list of text blocks"),
    ),
    "thinking": (("thinking", str, "a string"), ("signature", str, "a string")),
    "redacted_thinking": (("data", str, "a string"),),
    "tool_use": (("id", str, "a string"), ("name", str, "a string"), ("input", dict, _TOOL_INPUT)),
    "server_tool_use": (
        ("id", str, "a string"),
        ("name", str, "a string"),
        ("input", dict, _TOOL_INPUT),
    ),
    "tool_result": (("tool_use_id", str, "the id of the tool_use block it answers"),),
    "container_upload": (("file_id", str, "a string"),),
    **{
        f"{tool}_tool_result": (("tool_use_id", str, "the id of the server_tool_use it answers"),)
        for tool in (
            "web_search",
            "web_fetch",
            "code_execution",
            "bash_code_execution",
            "text_editor_code_execution",
            "tool_search",
        )
    },
}


def _check_blocks(where: str, content: Any) -> None:
    """A `content` (or `system`): a string, or a list of blocks each naming its `type` and
    carrying the fields its type requires."""
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _wrong(where, "a string or a list of content blocks", content)
    for i, block in enumerate(content):
        at = f"{where}[{i}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad_request(
                f"'{at}' must be a content block with a 'type', e.g. "
                '{"type": "text", "text": "Hi"}, got '
                f"{json_type(block) if not isinstance(block, dict) else 'an object without one'}.",
                param=at,
            )
        kind = block["type"]
        for field, wanted, shape in _BLOCK_FIELDS.get(kind, ()):
            if field not in block:
                raise bad_request(
                    f"'{at}' is a {kind} block without its '{field}': send {shape}.",
                    param=f"{at}.{field}",
                )
            if not isinstance(block[field], wanted):
                raise _wrong(f"{at}.{field}", shape, block[field])
        if kind in ("image", "document"):
            _check_source(f"{at}.source", block["source"])
        if kind == "tool_result" and block.get("content") is not None:
            _check_blocks(f"{at}.content", block["content"])


def _check_source(at: str, source: dict[str, Any]) -> None:
    """An image's or document's `source` carries what its type requires (a translated route
    would drop one without it); a source type the proxy does not know is the upstream's."""
    kind = source.get("type")
    for field in _SOURCE_FIELDS.get(kind, ()) if isinstance(kind, str) else ():
        if not isinstance(source.get(field), str):
            if field not in source:
                raise bad_request(
                    f"'{at}' is a {kind} source without its '{field}': send a string.",
                    param=f"{at}.{field}",
                )
            raise _wrong(f"{at}.{field}", "a string", source[field])


def _check_turns(messages: Any) -> None:
    if not isinstance(messages, list):
        raise _wrong("messages", "a list of turns", messages)
    if not messages:
        raise bad_request(
            "'messages' must contain at least one turn, e.g. "
            '[{"role": "user", "content": "Hi"}].',
            param="messages",
        )
    for i, turn in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(turn, dict):
            raise _wrong(where, "an object with 'role' and 'content'", turn)
        if turn.get("role") not in ROLES:
            raise bad_request(
                f"'{where}.role' must be 'user' or 'assistant' (instructions go in the top-level "
                f"'system' field), got {turn.get('role')!r}.",
                param=f"{where}.role",
            )
        if "content" not in turn:
            raise _missing(f"{where}.content", "a string or a list of content blocks")
        _check_blocks(f"{where}.content", turn["content"])


def _check_fields(body: dict[str, Any]) -> None:
    if body.get("system") is not None:
        system = body["system"]
        _check_blocks("system", system)
        if isinstance(system, list) and any(b.get("type") != "text" for b in system):
            raise bad_request("'system' blocks must all be text blocks.", param="system")
    for name in _NUMBER_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise _wrong(name, "a number", value)
    if body.get("top_k") is not None and not _is_int(body["top_k"]):
        raise _wrong("top_k", "an integer", body["top_k"])
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _wrong("stream", "true or false", body["stream"])
    for name in _OBJECT_FIELDS:
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise _wrong(name, "an object", body[name])
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        raise _wrong("stop_sequences", "a list of strings", stops)
    _check_tools(body.get("tools"))


_TOOL = '{"name": "get_weather", "input_schema": {"type": "object", "properties": {...}}}'


def _check_tools(tools: Any) -> None:
    """`tools`: objects with a `name`; a custom tool (no `type`, or `custom`) with its
    `input_schema` object too (Anthropic's own tools, `web_search_20250305`…, have none)."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _wrong("tools", f"a list of tool objects such as {_TOOL}", tools)
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _wrong(where, f"a tool object such as {_TOOL}", tool)
        if tool.get("type") is not None and not isinstance(tool["type"], str):
            raise _wrong(
                f"{where}.type", '"custom", or one of Anthropic\'s tool types', tool["type"]
            )
        custom = tool.get("type") in (None, "custom")
        required = ("name", "input_schema") if custom else ("name",)
        for field in required:
            if field not in tool:
                raise bad_request(
                    f"'{where}' is a {'custom ' if custom else ''}tool without its '{field}': "
                    f"send a tool such as {_TOOL}.",
                    param=f"{where}.{field}",
                )
        if not isinstance(tool["name"], str) or not tool["name"]:
            raise _wrong(f"{where}.name", "a non-empty string", tool["name"])
        if custom and not isinstance(tool["input_schema"], dict):
            raise _wrong(f"{where}.input_schema", "a JSON Schema object", tool["input_schema"])
        if tool.get("description") is not None and not isinstance(tool["description"], str):
            raise _wrong(f"{where}.description", "a string", tool["description"])


def validate_messages(body: dict[str, Any], *, counting: bool = False) -> str:
    """Check a Messages request (a count_tokens one when `counting`: no `max_tokens`); returns
    the model alias."""
    if "model" not in body:
        raise _missing("model", "name one of the models this key may use (GET /v1/models)")
    model = body["model"]
    if not isinstance(model, str) or not model:
        raise _wrong("model", "a non-empty string", model)
    if "messages" not in body:
        raise _missing("messages", 'send a list such as [{"role": "user", "content": "Hi"}]')
    _check_turns(body["messages"])
    if not counting:
        if "max_tokens" not in body:
            raise _missing("max_tokens", "the most tokens the answer may take, e.g. 1024")
        if not _is_int(body["max_tokens"]) or body["max_tokens"] < 1:
            raise bad_request(
                f"'max_tokens' must be a positive integer, got {body['max_tokens']!r}.",
                param="max_tokens",
            )
    _check_fields(body)
    return model


# What litellm's adapter turns into chat completions (it drops any other block silently).
TRANSLATED_BLOCKS = {
    "user": ("text", "image", "document", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
}
_TRANSLATED_RESULT_BLOCKS = ("text", "image", "document", "tool_reference")
_TRANSLATED_SOURCES = ("base64", "url")


def check_translatable(body: dict[str, Any], alias: str) -> None:
    """Refuse what a translated call would lose: Anthropic's own tools (bash, computer, web
    search…), and a checked body's blocks that litellm's adapter does not turn into chat
    completions, for their turn's role (only upstreams that serve the Messages API take those)."""
    native = (
        f"Model '{alias}' is answered through chat completions; for other blocks its upstream "
        "would need to serve the Messages API itself (native_apis: [messages] in the tenant's "
        "policy)"
    )
    for i, tool in enumerate(body.get("tools") or []):
        if tool.get("type") not in (None, "custom"):  # the adapter would pass it on as it is
            raise bad_request(
                f"'tools[{i}]' is a {tool['type']!r} tool; model '{alias}' takes custom tools "
                f"({_TOOL}) only, being answered through chat completions: Anthropic's own "
                "tools need an upstream that serves the Messages API itself (native_apis: "
                "[messages] in the tenant's policy).",
                param=f"tools[{i}]",
            )
    for i, turn in enumerate(body["messages"]):
        role, content = turn["role"], turn["content"]
        allowed = TRANSLATED_BLOCKS[role]
        for j, block in enumerate(content if isinstance(content, list) else []):
            at = f"messages[{i}].content[{j}]"
            if block["type"] not in allowed:
                raise bad_request(
                    f"'{at}' is a {block['type']!r} block; {role} turns sent to model "
                    f"'{alias}' take {_listed(allowed)} blocks. {native}.",
                    param=at,
                )
            _check_translatable_source(at, block, native)
            results = block.get("content") if block["type"] == "tool_result" else None
            for k, part in enumerate(results if isinstance(results, list) else []):
                where = f"{at}.content[{k}]"
                if part["type"] not in _TRANSLATED_RESULT_BLOCKS:
                    raise bad_request(
                        f"'{where}' is a {part['type']!r} block; a tool_result sent to model "
                        f"'{alias}' holds {_listed(_TRANSLATED_RESULT_BLOCKS)} blocks. {native}.",
                        param=where,
                    )
                _check_translatable_source(where, part, native)


def _check_translatable_source(at: str, block: dict[str, Any], native: str) -> None:
    if block["type"] not in ("image", "document"):
        return
    kind = block["source"].get("type")
    if kind not in _TRANSLATED_SOURCES:
        raise bad_request(
            f"'{at}.source' is a {kind!r} source; chat completions take an {block['type']} "
            f"given as base64 data or a url. {native}.",
            param=f"{at}.source",
        )


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}"


def messages_user_id(body: dict[str, Any], headers: Headers) -> str | None:
    """Who a Messages call is for: `metadata.user_id` and the `X-Memento-User` header."""
    metadata = body.get("metadata")
    value = metadata.get("user_id") if isinstance(metadata, dict) else None
    return call_user_id(value, headers, param="metadata.user_id")
