"""Checking a Messages request body, with messages that say what to fix.

Only what the proxy relies on (the model, the turns it reads for memory, `system`, `max_tokens`,
`metadata.user_id`) and the fields whose wrong type would come back as an obscure upstream error
are checked; everything else reaches the upstream as it came.
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


def _check_blocks(where: str, content: Any) -> None:
    """A `content` (or `system`): a string, or a list of blocks each naming its `type`."""
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _wrong(where, "a string or a list of content blocks", content)
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad_request(
                f"'{where}[{i}]' must be a content block with a 'type', e.g. "
                '{"type": "text", "text": "Hi"}.',
                param=f"{where}[{i}]",
            )


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
    for name, item, wanted in (("stop_sequences", str, "strings"), ("tools", dict, "objects")):
        value = body.get(name)
        if value is not None and not _is_list_of(value, item):
            raise _wrong(name, f"a list of {wanted}", value)


def _is_list_of(value: Any, item: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, item) for v in value)


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


def messages_user_id(body: dict[str, Any], headers: Headers) -> str | None:
    """Who a Messages call is for: `metadata.user_id` and the `X-Memento-User` header."""
    metadata = body.get("metadata")
    value = metadata.get("user_id") if isinstance(metadata, dict) else None
    return call_user_id(value, headers, param="metadata.user_id")
