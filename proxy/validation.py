"""Reading and checking request bodies, with messages that say what to fix.

Only the shape the proxy itself relies on is checked, plus the common OpenAI fields whose wrong
type would otherwise come back as an obscure upstream error. Everything else is the upstream's to
judge and reaches it unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from proxy.errors import ProxyError, bad_request

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}

_NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_INTEGER_FIELDS = ("n", "max_tokens", "max_completion_tokens", "seed", "top_logprobs")
_BOOL_FIELDS = ("stream", "logprobs", "parallel_tool_calls", "store")
_OBJECT_FIELDS = ("stream_options", "response_format", "metadata", "logit_bias")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw request body, read as it arrives and refused (413) as soon as it passes `limit`
    bytes: a chunked upload larger than the limit is never held in memory whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, refusing bodies over `limit` bytes (413)."""
    raw = await read_body(request, limit)
    if not raw.strip():
        raise bad_request(
            "The request body is empty. Send a JSON object, e.g. "
            '{"model": "...", "messages": [{"role": "user", "content": "Hi"}]}.'
        )
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise bad_request(
            f"The request body is not valid JSON ({exc}). Send a JSON object with "
            "Content-Type: application/json."
        ) from None
    if not isinstance(body, dict):
        raise bad_request(
            f"The request body must be a JSON object, not a JSON {type(body).__name__}."
        )
    return body


def _too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"The request body exceeds this tenant's limit of {limit} bytes. Send fewer or shorter "
        "messages, or raise limits.max_body_bytes in the tenant's policy.",
        code="request_too_large",
    )


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _expect(body: dict[str, Any], name: str, ok: bool, wanted: str) -> None:
    if not ok:
        raise bad_request(
            f"'{name}' must be {wanted}, got {_type_name(body[name])}.",
            param=name,
            code="invalid_type",
        )


def _check_common_fields(body: dict[str, Any]) -> None:
    for name in _NUMBER_FIELDS:
        if body.get(name) is not None:
            value = body[name]
            _expect(
                body,
                name,
                isinstance(value, int | float) and not isinstance(value, bool),
                "a number",
            )
    for name in _INTEGER_FIELDS:
        if body.get(name) is not None:
            value = body[name]
            _expect(
                body, name, isinstance(value, int) and not isinstance(value, bool), "an integer"
            )
    for name in _BOOL_FIELDS:
        if body.get(name) is not None:
            _expect(body, name, isinstance(body[name], bool), "true or false")
    for name in _OBJECT_FIELDS:
        if body.get(name) is not None:
            _expect(body, name, isinstance(body[name], dict), "an object")
    if body.get("user") is not None:
        _expect(body, "user", isinstance(body["user"], str), "a string")
    if body.get("stop") is not None:
        stop = body["stop"]
        _expect(
            body,
            "stop",
            isinstance(stop, str)
            or (isinstance(stop, list) and all(isinstance(s, str) for s in stop)),
            "a string or a list of strings",
        )
    if body.get("tools") is not None:
        tools = body["tools"]
        _expect(
            body,
            "tools",
            isinstance(tools, list) and all(isinstance(t, dict) for t in tools),
            "a list of tool objects",
        )


def _check_model(body: dict[str, Any]) -> str:
    if "model" not in body:
        raise bad_request(
            "Missing required parameter 'model': name one of the models this key may use "
            "(GET /v1/models lists them).",
            param="model",
            code="missing_required_parameter",
        )
    _expect(
        body, "model", isinstance(body["model"], str) and body["model"] != "", "a non-empty string"
    )
    model: str = body["model"]
    return model


def validate_chat(body: dict[str, Any]) -> str:
    """Check a chat completion request; returns the model alias."""
    model = _check_model(body)
    if "messages" not in body:
        raise bad_request(
            "Missing required parameter 'messages': send a list such as "
            '[{"role": "user", "content": "Hi"}].',
            param="messages",
            code="missing_required_parameter",
        )
    messages = body["messages"]
    _expect(body, "messages", isinstance(messages, list), "a list of message objects")
    if not messages:
        raise bad_request(
            "'messages' must contain at least one message.", param="messages", code="empty_array"
        )
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(
                f"'{where}' must be an object with 'role' and 'content', got "
                f"{_type_name(message)}.",
                param=where,
                code="invalid_type",
            )
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(
                f"'{where}.role' must be one of {', '.join(sorted(ROLES))}, got {role!r}.",
                param=f"{where}.role",
                code="invalid_value",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(
                f"'{where}.content' must be a string or a list of content parts, got "
                f"{_type_name(content)}.",
                param=f"{where}.content",
                code="invalid_type",
            )
    _check_common_fields(body)
    return model


def validate_embeddings(body: dict[str, Any]) -> str:
    """Check an embeddings request; returns the model alias."""
    model = _check_model(body)
    if "input" not in body:
        raise bad_request(
            "Missing required parameter 'input': send a string or a list of strings to embed.",
            param="input",
            code="missing_required_parameter",
        )
    value = body["input"]
    _expect(
        body, "input", isinstance(value, str | list) and value != [], "a string or a non-empty list"
    )
    return model
