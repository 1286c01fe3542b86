"""Checking a chat completion's content parts: which part types each role may send, and the
field each part must have, with messages that say what to fix (the rest of the body's shape is
`proxy.validation.validate_chat`'s).

The rule is OpenAI's: a user message's parts are text, image_url, input_audio and file; an
assistant's text and refusal; a system, developer or tool message's (or a legacy function
message's) text only. A part the proxy let through unchecked would reach the upstream as a turn
with no text (the memory stages read only `text` parts) or as an obscure upstream error.
"""

from __future__ import annotations

from typing import Any

from proxy.errors import bad_request
from proxy.validation import json_type

PART_TYPES: dict[str, tuple[str, ...]] = {
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "system": ("text",),
    "developer": ("text",),
    "tool": ("text",),
    "function": ("text",),
}
# The one field each part type must carry, what it must be, and an example of it.
_FIELDS: dict[str, tuple[str, type, str]] = {
    "text": ("text", str, "a string"),
    "refusal": ("refusal", str, "a string"),
    "image_url": ("image_url", dict, 'an object such as {"url": "https://…"}'),
    "input_audio": ("input_audio", dict, 'an object such as {"data": "<base64>", "format": "wav"}'),
    "file": ("file", dict, 'an object such as {"file_id": "file-…"}'),
}


def check_content_parts(body: dict[str, Any]) -> None:
    """Check the content parts of every message of a body `validate_chat` passed."""
    for i, message in enumerate(body["messages"]):
        if isinstance(message.get("content"), list):
            _check_parts(f"messages[{i}].content", message["role"], message["content"])


def _check_parts(where: str, role: str, parts: list[Any]) -> None:
    allowed = PART_TYPES[role]
    listed = ", ".join(allowed[:-1]) + f" or {allowed[-1]}" if len(allowed) > 1 else allowed[0]
    example = '{"type": "text", "text": "Hi"}'
    a_role = f"an {role}" if role == "assistant" else f"a {role}"
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise bad_request(
                f"'{at}' must be a content part object such as {example}, got {json_type(part)}.",
                param=at,
                code="invalid_type",
            )
        kind = part.get("type")
        if kind not in allowed:
            sent = "has no 'type'" if kind is None else f"is a {kind!r} part"
            raise bad_request(
                f"'{at}' {sent}; {a_role} message's content parts are {listed}, e.g. {example}.",
                param=at,
                code="invalid_value",
            )
        field, wanted, shape = _FIELDS[kind]
        if field not in part:
            raise bad_request(
                f"'{at}' is a {kind} part without its '{field}': send {shape}.",
                param=f"{at}.{field}",
                code="missing_required_parameter",
            )
        if not isinstance(part[field], wanted):
            raise bad_request(
                f"'{at}.{field}' must be {shape}, got {json_type(part[field])}.",
                param=f"{at}.{field}",
                code="invalid_type",
            )
