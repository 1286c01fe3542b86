"""Request ids: the proxy's own id of every call, and the client's correlation id beside it.

Every response carries `x-request-id`, the proxy's unique id of the call, which the request log,
feedback and traces use. A client's own id (`x-client-request-id`, else `x-request-id`) is kept as
a correlation id, echoed back in `x-client-request-id` and searchable, but never used as ours.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.errors import internal_error

log = logging.getLogger("memento.proxy")

# What a client may send as its own id: echoed back and searchable, never used as ours.
CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
CLIENT_REQUEST_ID_HEADERS = (b"x-client-request-id", b"x-request-id")


def request_id_of(request: Request) -> str:
    """The proxy's own id of this call (`x-request-id` on the response): unique, ours."""
    rid: str = request.scope["state"]["request_id"]
    return rid


def client_request_id_of(request: Request) -> str | None:
    """The client's correlation id of this call, if it sent a sane one."""
    cid: str | None = request.scope["state"].get("client_request_id")
    return cid


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def client_request_id_from(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The client's own id for the call: `x-client-request-id`, else `x-request-id` (what many
    clients send), when it is 1-128 characters of letters, digits and `._:-`; else None."""
    sent = dict(headers)
    for name in CLIENT_REQUEST_ID_HEADERS:
        given = sent.get(name, b"").decode("latin-1")
        if CLIENT_REQUEST_ID.match(given):
            return given
    return None


class RequestIdMiddleware:
    """Gives every request the proxy's own unique id and puts it on every response
    (`x-request-id`); keeps a client's id as a correlation id, echoed in
    `x-client-request-id`; turns any unexpected exception into an OpenAI-shaped 500 carrying
    the proxy's id.

    A client's id is never the request's id: two calls may send the same one (a reused id, two
    users of one app), and the request log, feedback and traces must never merge them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        client_id = client_request_id_from(scope["headers"])
        state = scope.setdefault("state", {})
        state["request_id"], state["client_request_id"] = request_id, client_id
        headers = [(b"x-request-id", request_id.encode())]
        if client_id is not None:
            headers.append((b"x-client-request-id", client_id.encode()))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            if not started:
                await internal_error(request_id).to_response()(scope, receive, send_with_id)
