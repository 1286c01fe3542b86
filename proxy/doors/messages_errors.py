"""Errors in Anthropic's shape, so the anthropic SDKs raise their own exception classes.

`{"type": "error", "error": {"type", "message"}, "request_id"}` with Anthropic's statuses: 4xx
keep theirs (400 `invalid_request_error`, 401 `authentication_error`, 403 `permission_error`, 404
`not_found_error`, 413 `request_too_large`, 429 `rate_limit_error`, any other 4xx
`invalid_request_error`); of the 5xx, the "retry later" ones (503: memory fail-closed, an index
being rebuilt, an overloaded upstream; 529) are 529 `overloaded_error`, every other 500
`api_error`. The message is the proxy's own, which says what to fix. A stream that breaks after
it began ends with an `error` event of the same shape.
"""

from __future__ import annotations

import json

from starlette.responses import Response

from proxy.errors import ProxyError

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_RETRY_LATER = (503, 529)


def anthropic_status(status: int) -> tuple[int, str]:
    """The status and error type Anthropic's API would answer in place of `status`."""
    if status < 500:
        return status, ERROR_TYPES.get(status, "invalid_request_error")
    return (529, "overloaded_error") if status in _RETRY_LATER else (500, "api_error")


def error_body(error_type: str, message: str, request_id: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


def error_response(exc: ProxyError, request_id: str | None) -> Response:
    """A `ProxyError` as Anthropic would answer it (its headers, such as retry-after, kept)."""
    status, error_type = anthropic_status(exc.status)
    return Response(
        json.dumps(error_body(error_type, exc.message, request_id)),
        status_code=status,
        media_type="application/json",
        headers=exc.headers,
    )


def error_event(message: str, error_type: str = "api_error") -> bytes:
    """The `error` event that ends a stream which broke after it began."""
    data = json.dumps(error_body(error_type, message), separators=(",", ":"))
    return f"event: error\ndata: {data}\n\n".encode()
