"""Reading and checking request bodies, with messages that say what to fix.

Only the shape the proxy itself relies on is checked, plus the common OpenAI fields whose wrong
type would otherwise come back as an obscure upstream error. Everything else is the upstream's to
judge and reaches it unchanged.

Every JSON body is also held to what any later stage can handle: at most `MAX_JSON_DEPTH` nested
objects and arrays, and text that is valid Unicode (JSON's `\\ud800` escapes can spell lone
surrogates, which no UTF-8 encoder accepts: they would fail later, in storage or in tracing).

User ids follow one rule everywhere (`user_id`): at most `MAX_USER_ID_CHARS` characters, never
blank, surrounding whitespace ignored. On chat the body's `user` and the `X-Memento-User` header
name the same user when both are given; a conflict is refused rather than resolved silently.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request

from proxy.errors import ProxyError, bad_request
from storage.numbers import parse_whole_number

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}

_NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_INTEGER_FIELDS = ("n", "max_tokens", "max_completion_tokens", "seed", "top_logprobs")
_BOOL_FIELDS = ("stream", "logprobs", "parallel_tool_calls", "store")
_OBJECT_FIELDS = ("stream_options", "response_format", "metadata", "logit_bias")

MAX_JSON_DEPTH = 64  # nested objects and arrays; real requests use well under ten
MAX_USER_ID_CHARS = 256
MAX_CHOICES = 128  # `n`: OpenAI's own upper bound
USER_HEADER = "x-memento-user"
SESSION_HEADER = "x-memento-session"


async def read_body(request: Request, limit: int) -> bytes:
    """The raw request body, read as it arrives and refused (413) as soon as it passes `limit`
    bytes: a chunked upload larger than the limit is never held in memory whole."""
    # A declared length that is no whole number ("²", 30 digits) is not trusted either way:
    # what arrives is counted below.
    declared = parse_whole_number(request.headers.get("content-length") or "")
    if declared is not None and declared > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


CHAT_EXAMPLE = '{"model": "...", "messages": [{"role": "user", "content": "Hi"}]}'


async def read_json_body(
    request: Request, limit: int, *, example: str = CHAT_EXAMPLE
) -> dict[str, Any]:
    """The request body as a JSON object, refusing bodies over `limit` bytes (413); an empty
    body is told to send one like `example` (the route's own)."""
    raw = await read_body(request, limit)
    if not raw.strip():
        raise bad_request(f"The request body is empty. Send a JSON object, e.g. {example}.")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise bad_request(f"The request body must be a JSON object, not {json_type(body)}.")
    return body


def parse_json(
    raw: bytes | str,
    *,
    what: str = "The request body",
    hint: str = "Send a JSON object with Content-Type: application/json.",
) -> Any:
    """A JSON document held to `MAX_JSON_DEPTH`, valid Unicode and finite numbers (JSON has no
    NaN or Infinity, and a literal such as 1e999 would become one); 400 otherwise. `what` names
    the document in messages, `hint` says how to send valid JSON."""
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise _too_deep(what, "") from None
    except ValueError as exc:
        raise bad_request(f"{what} is not valid JSON ({exc}). {hint}") from None
    try:
        _check_tree(value, 1)
    except _BadTree as bad:
        where = "".join(reversed(bad.path))
        if bad.too_deep:
            raise _too_deep(what, where) from None
        raise bad_request(
            f"{what} has text that is not valid Unicode at {where.lstrip('.') or 'its top level'}: "
            "a lone surrogate (an unpaired \\ud800-\\udfff escape or byte sequence). Send "
            "text as UTF-8, with surrogate escapes only in high-low pairs.",
            param=where.lstrip(".") or None,
            code="invalid_unicode",
        ) from None
    return value


class _BadTree(Exception):
    """Where in a JSON value it breaks a rule (path built on the way out), and which rule."""

    def __init__(self, too_deep: bool) -> None:
        self.too_deep = too_deep
        self.path: list[str] = []


def _check_text(text: str) -> None:
    if not text.isascii():  # constant time; only non-ASCII text can hold a surrogate
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _BadTree(too_deep=False) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise ValueError(f"{literal} is too large for a number")
    return number


def _check_tree(value: Any, depth: int) -> None:
    """Walk the strings and containers of a parsed JSON value (numbers cost one type check)."""
    if type(value) is str:
        _check_text(value)
        return
    if type(value) is not dict and type(value) is not list:
        return
    if depth > MAX_JSON_DEPTH:
        raise _BadTree(too_deep=True)
    pairs = value.items() if type(value) is dict else enumerate(value)
    key: str | int = ""
    try:
        for key, item in pairs:
            if type(key) is str:
                _check_text(key)
            kind = type(item)
            if kind is str:
                _check_text(item)
            elif kind is dict or kind is list:
                _check_tree(item, depth + 1)
    except _BadTree as bad:
        if isinstance(key, int):
            bad.path.append(f"[{key}]")
        else:
            bad.path.append(f".{key}" if key.isidentifier() else f"[{json.dumps(key)}]")
        raise


def _too_deep(what: str, where: str) -> ProxyError:
    at = f" (at {where.lstrip('.')})" if where else ""
    return bad_request(
        f"{what} nests JSON objects and arrays more than {MAX_JSON_DEPTH} levels "
        f"deep{at}. Flatten the structure.",
        code="json_too_deep",
    )


def _too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"The request body exceeds this tenant's limit of {limit} bytes. Send fewer or shorter "
        "messages, or raise limits.max_body_bytes in the tenant's policy.",
        code="request_too_large",
    )


def json_type(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words, for messages that say what was sent: null,
    a boolean, a number, a string, an array, an object (never Python's names: NoneType, list)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _expect(body: dict[str, Any], name: str, ok: bool, wanted: str) -> None:
    if not ok:
        raise bad_request(
            f"'{name}' must be {wanted}, got {json_type(body[name])}.",
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
    n = body.get("n")
    if n is not None and not 1 <= n <= MAX_CHOICES:
        raise bad_request(
            f"'n' must be from 1 to {MAX_CHOICES} (choices to generate), got {n}.",
            param="n",
            code="invalid_value",
        )
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


def check_model(body: dict[str, Any]) -> str:
    """The body's `model`: present and a non-empty string (every door's first check)."""
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
    model = check_model(body)
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
                f"'{where}' must be an object with 'role' and 'content', got {json_type(message)}.",
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
                f"{json_type(content)}.",
                param=f"{where}.content",
                code="invalid_type",
            )
    _check_common_fields(body)
    return model


def validate_embeddings(body: dict[str, Any]) -> str:
    """Check an embeddings request; returns the model alias."""
    model = check_model(body)
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


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def user_id(value: Any, *, param: str = "user", what: str = "user") -> str | None:
    """A user id given as `param` (None when absent): a string of at most
    `MAX_USER_ID_CHARS` characters with something other than whitespace, which it is stripped
    of. The one rule for every route that scopes, stores or erases memories by user (and for
    session ids, `what="session"`, so their errors speak of sessions)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(
            f"'{param}' must be a string (a {what} id), got {json_type(value)}.",
            param=param,
            code="invalid_type",
        )
    user = value.strip()
    if not user:
        raise bad_request(
            f"'{param}' is blank. Send a {what} id, or leave it out for a call without a {what}.",
            param=param,
            code=f"invalid_{what}",
        )
    if len(user) > MAX_USER_ID_CHARS:
        raise bad_request(
            f"'{param}' is {len(user)} characters long; {what} ids have at most "
            f"{MAX_USER_ID_CHARS}.",
            param=param,
            code=f"invalid_{what}",
        )
    if _CONTROL.search(user):
        raise bad_request(
            f"'{param}' contains a control character (such as NUL or a line break); {what} ids "
            "are printable text.",
            param=param,
            code=f"invalid_{what}",
        )
    return user


def chat_user_id(body: dict[str, Any], headers: Headers) -> str | None:
    """Who a chat call is for: the body's `user` and the `X-Memento-User` header."""
    return call_user_id(body.get("user"), headers, param="user")


def call_user_id(value: Any, headers: Headers, *, param: str) -> str | None:
    """Who a call is for: the user id its door's own field carries (`value`, from the body
    field `param`) and the `X-Memento-User` header, which must agree when both are given (each
    held to `user_id`'s rule)."""
    from_body = user_id(value, param=param)
    from_header = user_id(_id_header(headers, USER_HEADER, "user"), param=USER_HEADER)
    if from_body is not None and from_header is not None and from_body != from_header:
        raise bad_request(
            f"The body's '{param}' ({from_body!r}) and the X-Memento-User header "
            f"({from_header!r}) name different users. Send one of them, or the same id in both.",
            param=param,
            code="conflicting_user",
        )
    return from_body if from_body is not None else from_header


def chat_session_id(headers: Headers) -> str | None:
    """The conversation a chat call belongs to (`X-Memento-Session`), held to the same rule as
    user ids: it is stored with every memory the call writes."""
    raw = _id_header(headers, SESSION_HEADER, "session")
    return user_id(raw, param=SESSION_HEADER, what="session")


def _id_header(headers: Headers, name: str, what: str) -> str | None:
    """The one value of id header `name` as the UTF-8 text the client sent (Starlette decodes
    headers as Latin-1), None when absent; sent twice, or not UTF-8, it is a 400."""
    values = headers.getlist(name)
    if len(values) > 1:
        shown = "-".join(part.capitalize() for part in name.split("-"))  # X-Memento-User
        raise bad_request(
            f"Send {shown} once: the request has it more than once.",
            param=name,
            code=f"invalid_{what}",
        )
    if not values:
        return None
    try:
        return values[0].encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(
            f"The {name} header is not valid UTF-8. Send the id as UTF-8 text.",
            param=name,
            code="invalid_unicode",
        ) from None
