"""Checking a Responses API request body, with messages that say what to fix.

Only what the proxy itself reads is checked (the model, the input items, the fields it echoes or
translates), plus the common fields whose wrong type would otherwise come back as an obscure
upstream error. A call translated to chat completions must also be one chat can express: function
tools only, and input items of the kinds that have a chat shape.
"""

from __future__ import annotations

from typing import Any

from proxy.doors.responses import TEXT_PARTS, item_type
from proxy.errors import ProxyError, bad_request
from proxy.validation import check_model, json_type

_ROLES = ("user", "assistant", "system", "developer")
_ITEM_TYPES = ("message", "function_call", "function_call_output")
# Items chat has no shape for that a translated call may still carry (they are left out): a
# model's reasoning, which a client hands back with the output it came with. An item_reference
# is refused, not skipped: the item it names would silently never reach the model.
_SKIPPED_ITEM_TYPES = ("reasoning",)
# Fields naming what OpenAI keeps server-side, and what a translated call sends instead.
_OPENAI_STATE = {
    "conversation": "send the turns as 'input', or continue with 'previous_response_id'",
    "prompt": "send the prompt's text as 'instructions'",
}
_CHECKS: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("instructions", str, "a string"),
    ("previous_response_id", str, "a string (the id of an earlier response)"),
    ("store", bool, "true or false"),
    ("stream", bool, "true or false"),
    ("parallel_tool_calls", bool, "true or false"),
    ("metadata", dict, "an object of string values"),
    ("text", dict, 'an object such as {"format": {"type": "text"}}'),
    ("reasoning", dict, 'an object such as {"effort": "low"}'),
    ("tool_choice", (str, dict), '"auto", "none", "required" or a tool object'),
    ("temperature", (int, float), "a number"),
    ("top_p", (int, float), "a number"),
)


_FUNCTION_TOOL = '{"type": "function", "name": "get_weather", "parameters": {...}}'
_FUNCTION_FIELDS: tuple[tuple[str, type, str], ...] = (
    ("parameters", dict, "a JSON Schema object"),
    ("description", str, "a string"),
    ("strict", bool, "true or false"),
)


def _has_type(value: Any, kind: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # an int to Python, never a number to JSON
        return kind is bool
    return isinstance(value, kind)


def _wrong(name: str, value: Any, wanted: str) -> ProxyError:
    return bad_request(
        f"'{name}' must be {wanted}, got {json_type(value)}.", param=name, code="invalid_type"
    )


def validate_responses(body: dict[str, Any]) -> str:
    """Check a `POST /v1/responses` body; returns the model alias."""
    model = check_model(body)
    for name, kind, wanted in _CHECKS:
        value = body.get(name)
        if value is not None and not _has_type(value, kind):
            raise _wrong(name, value, wanted)
    tokens = body.get("max_output_tokens")
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1
    ):
        raise bad_request(
            f"'max_output_tokens' must be a positive integer, got {tokens!r}.",
            param="max_output_tokens",
            code="invalid_value",
        )
    _check_input(body)
    _check_tools(body.get("tools"))
    return model


def _check_tools(tools: Any) -> None:
    """`tools`: objects naming their `type`; a function tool with its `name`, and its other
    fields of the right types."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _wrong("tools", tools, "a list of tool objects")
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _wrong(where, tool, f"a tool object such as {_FUNCTION_TOOL}")
        if not isinstance(tool.get("type"), str):
            raise bad_request(
                f"'{where}.type' must say what kind of tool it is (\"function\", or a hosted "
                f'tool such as "web_search"), got {json_type(tool.get("type"))}.',
                param=f"{where}.type",
                code="missing_required_parameter" if "type" not in tool else "invalid_type",
            )
        if tool["type"] == "function":
            _check_function_tool(tool, where)


def _check_function_tool(tool: dict[str, Any], where: str) -> None:
    if "name" not in tool:
        nested = (
            " (not under 'function', as chat completions have it)" if "function" in tool else ""
        )
        raise bad_request(
            f"'{where}' is a function tool without its 'name': send {_FUNCTION_TOOL}{nested}.",
            param=f"{where}.name",
            code="missing_required_parameter",
        )
    if not isinstance(tool["name"], str) or not tool["name"]:
        raise _wrong(f"{where}.name", tool["name"], "the function's name, a non-empty string")
    for field, kind, wanted in _FUNCTION_FIELDS:
        if tool.get(field) is not None and not _has_type(tool[field], kind):
            raise _wrong(f"{where}.{field}", tool[field], wanted)


def _check_input(body: dict[str, Any]) -> None:
    if "input" not in body:
        raise bad_request(
            "Missing required parameter 'input': send a string, or a list of input items such "
            'as [{"role": "user", "content": "Hi"}].',
            param="input",
            code="missing_required_parameter",
        )
    value = body["input"]
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise bad_request(
            f"'input' must be a string or a non-empty list of input items, got "
            f"{json_type(value) if value != [] else 'an empty array'}.",
            param="input",
            code="invalid_type",
        )
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _wrong(where, item, 'an input item such as {"role": "user", "content": "Hi"}')
        kind = item_type(item)
        if kind == "message":
            _check_message(item, where)
        elif kind in ("function_call", "function_call_output"):
            _check_call_item(item, where, kind)
        elif kind is None:
            raise bad_request(
                f"'{where}' has no 'type' and no 'role': send a message "
                '{"role": "user", "content": "..."} or an item with its "type".',
                param=where,
                code="invalid_value",
            )


def _check_message(item: dict[str, Any], where: str) -> None:
    role = item.get("role")
    if role not in _ROLES:
        raise bad_request(
            f"'{where}.role' must be one of {', '.join(_ROLES)}, got {role!r}.",
            param=f"{where}.role",
            code="invalid_value",
        )
    content = item.get("content")
    if not isinstance(content, str | list):
        raise _wrong(f"{where}.content", content, "a string or a list of content parts")
    for j, part in enumerate(content if isinstance(content, list) else []):
        _check_part(part, f"{where}.content[{j}]")


def _check_part(part: Any, where: str) -> None:
    """A content part says its type; a text part carries its text (what memory reads)."""
    if not isinstance(part, dict):
        raise _wrong(where, part, 'a content part such as {"type": "input_text", "text": "Hi"}')
    kind = part.get("type")
    if not isinstance(kind, str):
        raise bad_request(
            f"'{where}.type' must say what kind of part it is (\"input_text\", "
            f'"input_image"…), got {json_type(kind) if "type" in part else "nothing"}.',
            param=f"{where}.type",
            code="missing_required_parameter" if "type" not in part else "invalid_type",
        )
    if kind in TEXT_PARTS and "text" not in part:
        raise bad_request(
            f"'{where}' is a {kind!r} part without its 'text': send a string.",
            param=f"{where}.text",
            code="missing_required_parameter",
        )
    if kind in TEXT_PARTS and not isinstance(part["text"], str):
        raise _wrong(f"{where}.text", part["text"], "a string")


def _check_call_item(item: dict[str, Any], where: str, kind: str) -> None:
    if not isinstance(item.get("call_id"), str) or not item["call_id"]:
        raise bad_request(
            f"'{where}.call_id' must be the id of the function call ({kind} items need it).",
            param=f"{where}.call_id",
            code="missing_required_parameter",
        )
    if kind == "function_call" and not isinstance(item.get("name"), str):
        raise _wrong(f"{where}.name", item.get("name"), "the function's name")
    if kind == "function_call" and not isinstance(item.get("arguments"), str):
        raise _wrong(
            f"{where}.arguments", item.get("arguments"), 'the arguments as a JSON string, e.g. "{}"'
        )
    if kind == "function_call_output" and not isinstance(item.get("output"), str | list):
        raise _wrong(f"{where}.output", item.get("output"), "the function's output as a string")


def check_translatable(body: dict[str, Any], alias: str) -> None:
    """Refuse what a chat-completions upstream cannot be asked: hosted tools, and input items
    without a chat shape (only upstreams that serve the Responses API take those)."""
    native = (
        f"Model '{alias}' is answered through chat completions; its upstream would need to serve "
        "the Responses API itself (native_apis: [responses] in the tenant's policy)"
    )
    for name, instead in _OPENAI_STATE.items():
        if body.get(name) is not None:
            raise bad_request(
                f"'{name}' names what OpenAI keeps, which a chat-completions upstream cannot "
                f"read: {instead}. {native}.",
                param=name,
                code="unsupported_parameter",
            )
    for i, tool in enumerate(body.get("tools") or []):
        if tool["type"] != "function":  # validate_responses checked the function tools' fields
            raise bad_request(
                f"'tools[{i}]' is a {tool['type']!r} tool; only function tools "
                f'({{"type": "function", "name": ...}}) can be used here. {native}.',
                param=f"tools[{i}]",
                code="unsupported_tool",
            )
    items = body["input"] if isinstance(body.get("input"), list) else []
    for i, item in enumerate(items):
        kind = item_type(item)
        if kind not in _ITEM_TYPES and kind not in _SKIPPED_ITEM_TYPES:
            raise bad_request(
                f"'input[{i}]' is a {kind!r} item, which has no chat-completions shape. {native}.",
                param=f"input[{i}]",
                code="unsupported_input_item",
            )
        content = item.get("content") if kind == "message" else None
        for j, part in enumerate(content if isinstance(content, list) else []):
            if not _translatable_part(part):
                what = f"a {part.get('type')!r} part" if isinstance(part, dict) else json_type(part)
                raise bad_request(
                    f"'input[{i}].content[{j}]' is {what}; chat completions take text "
                    f"parts and images given by image_url. {native}.",
                    param=f"input[{i}].content[{j}]",
                    code="unsupported_content_part",
                )


def _translatable_part(part: Any) -> bool:
    if not isinstance(part, dict):
        return False
    if part.get("type") == "input_image":
        return isinstance(part.get("image_url"), str)
    return part.get("type") in TEXT_PARTS
