"""Errors as OpenAI-shaped values: `{"error": {"message", "type", "param", "code"}}`.

Every failure a client can see is a `ProxyError`; the app's exception handlers turn it (and any
unexpected exception) into this shape, so SDKs raise their own exception classes and no stack
trace ever leaves the process.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.responses import Response

ErrorType = str  # "invalid_request_error", "authentication_error", "rate_limit_error", …


class ProxyError(Exception):
    """A failure with the HTTP status and the OpenAI error fields a client should see."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: ErrorType = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_response(self) -> Response:
        return Response(
            json.dumps(self.body()),
            status_code=self.status,
            media_type="application/json",
            headers=self.headers,
        )


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ProxyError:
    return ProxyError(400, message, param=param, code=code)


def unavailable(message: str, *, code: str, status: int = 503) -> ProxyError:
    """A part this proxy process does not run (memory, tracing, a job queue): the server's
    state, not the request, is what to fix."""
    return ProxyError(status, message, type="api_error", code=code)


def unauthorized(message: str) -> ProxyError:
    return ProxyError(401, message, type="authentication_error", code="invalid_api_key")


def model_not_found(alias: str, allowed: list[str]) -> ProxyError:
    listed = ", ".join(sorted(allowed)) or "none"
    return ProxyError(
        404,
        f"The model '{alias}' does not exist or this key may not use it. "
        f"Models available to this key: {listed}.",
        param="model",
        code="model_not_found",
    )


def internal_error(request_id: str) -> ProxyError:
    return ProxyError(
        500,
        f"The proxy failed unexpectedly; the server log has the details under request id "
        f"{request_id}.",
        type="api_error",
        code="internal_error",
    )


def insufficient_storage() -> ProxyError:
    """A write the server could not keep (its disk is full): nothing was written."""
    return ProxyError(
        507,
        "The proxy's storage is full, so this write was not made. Nothing was written; retry "
        "once the operator has freed space (GET /readyz says when writes work again).",
        type="api_error",
        code="insufficient_storage",
    )


def database_unavailable() -> ProxyError:
    """A call the proxy's database could not serve: it cannot be reached right now."""
    return ProxyError(
        503,
        "The proxy's database cannot be reached right now, so this was neither read nor "
        "written; retry in a few seconds (GET /readyz says when it is back).",
        type="api_error",
        code="database_unavailable",
        headers={"retry-after": "5"},
    )


def index_unavailable() -> ProxyError:
    """A memory search the derived index could not answer while it is rebuilt."""
    return ProxyError(
        503,
        "The memory search index failed and is being rebuilt from the database; retry in a few "
        "seconds (GET /readyz says when it is back). Chats go on meanwhile, without memory.",
        type="api_error",
        code="index_unavailable",
        headers={"retry-after": "5"},
    )
