"""Upstream failures as what the client should see, in OpenAI's error shape.

A failure that describes the request or the provider's capacity keeps its status and the
provider's own message; one that is not the client's doing (refused server credentials, a 5xx, no
answer, an answer that is not the API's) becomes 502 or 504 with `type: upstream_error`; a route
the server's configuration makes impossible is 500 `upstream_misconfigured`, for the operator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from proxy.errors import ProxyError
from proxy.upstreams.base import relayed_headers

# How much of an unexpected upstream body an error message quotes.
QUOTED_BYTES = 200
# "litellm.RateLimitError: RateLimitError: OpenAIException - slow down" → "slow down", and
# "litellm.ContextWindowExceededError: litellm.BadRequestError: AnthropicError - {…}" → "{…}"
_LITELLM_PREFIXES = re.compile(r"^(?:(?:litellm\.)?\w*(?:Error|Exception)(?::|\s+-)\s*)*")


def _upstream_failure(
    status: int, message: str, code: str, headers: Mapping[str, str] | None = None
) -> ProxyError:
    """A failure that is the upstream's, not the client's (`type: upstream_error`)."""
    return ProxyError(status, message, type="upstream_error", code=code, headers=headers)


def misconfigured(alias: str, problem: str) -> ProxyError:
    """A call the server's own configuration makes impossible: not the client's doing, and
    only the operator can fix it."""
    return ProxyError(
        500,
        f"The server's route for model '{alias}' is misconfigured: {problem}. The operator must "
        "fix it (`memento-proxy policy check` lists such problems).",
        type="server_error",
        code="upstream_misconfigured",
    )


def upstream_error(
    alias: str, status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> ProxyError:
    """Map an upstream failure to what the client should see.

    Statuses that describe the request or the upstream's capacity (400, 404, 409, 413, 422, 429,
    503, and 529, Anthropic's "overloaded") are kept, with the upstream's message (a 429's as
    "upstream rate limit: …", since the limit is the provider's, not this proxy's); the upstream
    refusing the server's credentials (401/403) and other 5xx are 502, since neither is the
    client's doing.
    """
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or f"HTTP {status}")
        err_type, param, code = error.get("type"), error.get("param"), error.get("code")
    else:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        message, err_type, param, code = (text[:500] or f"HTTP {status}"), None, None, None
    relayed = relayed_headers(headers or {})
    if status in (401, 403):
        return _upstream_failure(
            502,
            f"The upstream for model '{alias}' refused the server's provider credentials "
            f"(HTTP {status}: {message}). The operator must check the api_key in the policy.",
            "upstream_auth_failed",
        )
    if status in (400, 404, 409, 413, 422, 429, 503, 529):
        default_type = "rate_limit_error" if status == 429 else "invalid_request_error"
        if status in (503, 529):
            default_type = "api_error"
        if status == 429:
            message = f"upstream rate limit: {message}"
        return ProxyError(
            status,
            message,
            type=str(err_type or default_type),
            param=None if param is None else str(param),
            code=None if code is None else str(code),
            headers=relayed,
        )
    return _upstream_failure(
        502,
        f"The upstream for model '{alias}' failed (HTTP {status}): {message}",
        "upstream_error",
        relayed,
    )


def unexpected_content(
    alias: str, status: int, content_type: str | None, expected: str, content: bytes
) -> ProxyError:
    """A success status whose body is not the API's (an HTML login or error page from a
    gateway in front of the model, say): relaying it would hand the client something no
    OpenAI SDK can parse, so it is the upstream's failure."""
    got = content_type or "no content-type"
    quoted = content[:QUOTED_BYTES].decode("utf-8", "replace").strip()
    began = f" It began: {quoted!r}" if quoted else ""
    return _upstream_failure(
        502,
        f"The upstream for model '{alias}' answered HTTP {status} with {got} instead "
        f"of {expected}; check the route's api_base.{began}",
        "upstream_bad_response",
    )


def unparsable_body(alias: str, status: int, content: bytes) -> ProxyError:
    """A success status whose body is not a JSON object, whatever its content-type said: no
    SDK can read it as an answer, so it is the upstream's failure, as for `unexpected_content`."""
    quoted = content[:QUOTED_BYTES].decode("utf-8", "replace").strip()
    return _upstream_failure(
        502,
        f"The upstream for model '{alias}' answered HTTP {status} with a body that is not a "
        f"JSON object; check the route's api_base. It began: {quoted!r}",
        "upstream_bad_response",
    )


def unreachable(alias: str, exc: Exception, detail: str | None = None) -> ProxyError:
    """The upstream did not answer; `detail` says why (default: the exception)."""
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "Timeout":
        return _upstream_failure(
            504,
            f"The upstream for model '{alias}' did not answer in time ({type(exc).__name__}).",
            "upstream_timeout",
        )
    return _upstream_failure(
        502,
        f"The upstream for model '{alias}' could not be reached "
        f"({detail or f'{type(exc).__name__}: {exc}'}).",
        "upstream_unreachable",
    )


def stream_broken(alias: str, exc: Exception) -> ProxyError:
    """An upstream failure after the stream began: sent as a final SSE `error` event, which the
    openai SDKs raise as APIError (the HTTP status has already gone out as 200)."""
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "Timeout":
        message = f"The upstream for model '{alias}' stopped sending mid-stream (timed out)."
        return _upstream_failure(504, message, "upstream_timeout")
    return _upstream_failure(
        502,
        f"The upstream for model '{alias}' broke off the stream ({type(exc).__name__}). "
        "The answer is incomplete; retry the request.",
        "upstream_stream_broken",
    )


def provider_error(exc: Exception) -> dict[str, Any]:
    """The upstream's error object behind a litellm exception: its own fields when it sent
    OpenAI's error shape, or Anthropic's (`{"type": "error", "error": {…}}`, which litellm
    passes on as the text of its message); its text when it sent other text; else litellm's
    message without litellm's prefixes."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return _error_fields(body)
    if isinstance(body, str) and body.strip():
        text = body.strip()
    else:
        text = str(getattr(exc, "message", None) or exc)
        text = _LITELLM_PREFIXES.sub("", text, count=1).strip()
    quoted = _quoted_error(text)
    if quoted is not None:
        return quoted
    return {"message": text[:QUOTED_BYTES] or type(exc).__name__}


def _quoted_error(text: str) -> dict[str, Any] | None:
    """The error object of an error document quoted whole in `text`, or None."""
    if not text.startswith("{"):
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
        return _error_fields(error)
    return None


def _error_fields(error: dict[str, Any]) -> dict[str, Any]:
    fields = ("message", "type", "param", "code")
    return {name: error[name] for name in fields if isinstance(error.get(name), str)}
