"""The Messages door's routes: Anthropic's `POST /v1/messages` and `/v1/messages/count_tokens`.

A Messages call is validated, its model resolved and its upstream chosen here (relayed when the
route's upstream serves Messages itself, translated through the route's chat upstream otherwise:
`proxy.upstreams.anthropic`); everything else (auth by `x-api-key` or Bearer, memory before and
after, streaming, spans) is the shared flow of `proxy.routes.flow`. Every error of these routes,
the shared flow's included, answers in Anthropic's shape (`proxy.doors.messages_errors`).

count_tokens counts the client's own request (system, turns, tools), never the memory block a
call would carry: offline with tiktoken in the route's encoding, or the upstream's own count when
it serves Messages natively.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.auth import authenticate
from proxy.doors.messages import MESSAGES
from proxy.doors.messages_errors import error_response
from proxy.errors import ProxyError, internal_error
from proxy.memory.budget import encoding_name_for, prompt_tokens
from proxy.policy import ModelRoute, Policy
from proxy.request_ids import request_id_of
from proxy.routes.flow import CallFlow, DoorCall, resolve
from proxy.routes.messages_validation import (
    check_translatable,
    messages_user_id,
    validate_messages,
)
from proxy.tracing import EndSpansAfter
from proxy.upstreams.anthropic import FORWARDED_HEADERS
from proxy.upstreams.base import Target, UpstreamReply, UpstreamStream
from proxy.upstreams.registry import Upstreams
from proxy.upstreams.routing import serves_natively
from proxy.validation import read_json_body

log = logging.getLogger("memento.proxy")

Handler = Callable[[Request], Awaitable[Response | EndSpansAfter]]


def count_input_tokens(body: dict[str, Any], route: ModelRoute) -> int:
    """The tokens of the client's request (system, turns, tools), counted with tiktoken in the
    route's encoding, as the memory budget counts them."""
    return prompt_tokens(MESSAGES.conversation(body), body, encoding_name_for(route.model))


class MessagesRoutes:
    """`POST /v1/messages` through the shared flow, and `POST /v1/messages/count_tokens`."""

    def __init__(self, flow: CallFlow, upstreams: Upstreams) -> None:
        self.flow = flow
        self.upstreams = upstreams

    async def create(self, request: Request) -> Response | EndSpansAfter:
        return await _in_anthropic_shape(request, self._create)

    async def _create(self, request: Request) -> Response | EndSpansAfter:
        return await self.flow.run(request, self.read_call, api=MESSAGES.name)

    async def read_call(self, policy: Policy, body: dict[str, Any], headers: Headers) -> DoorCall:
        alias = validate_messages(body)
        route = resolve(policy, alias)
        relayed = serves_natively(route, "messages")
        if not relayed:
            check_translatable(body, alias)
        forwarded = {name: headers[name] for name in FORWARDED_HEADERS if name in headers}
        transport = self.upstreams.messages

        async def send(target: Target, sent: dict[str, Any]) -> UpstreamReply:
            return await transport.complete(target, sent, forwarded)

        async def open_stream(target: Target, sent: dict[str, Any]) -> UpstreamStream:
            return await transport.stream(target, sent, forwarded)

        return DoorCall(
            body=body,
            alias=alias,
            route=route,
            door=MESSAGES,
            user_id=messages_user_id(body, headers),
            stream=bool(body.get("stream")),
            send=send,
            open_stream=open_stream,
            passthrough=relayed,
        )

    async def count_tokens(self, request: Request) -> Response | EndSpansAfter:
        return await _in_anthropic_shape(request, self._count_tokens)

    async def _count_tokens(self, request: Request) -> Response:
        policy = authenticate(request)
        body = await read_json_body(request, policy.limits.max_body_bytes)
        alias = validate_messages(body, counting=True)
        route = resolve(policy, alias)
        if serves_natively(route, "messages"):
            target = Target(alias, route, policy.limits.connect_timeout_s)
            reply = await self.upstreams.messages.count_tokens(target, body, request.headers)
            return Response(reply.body, reply.status, headers=reply.headers)
        tokens = await asyncio.to_thread(count_input_tokens, body, route)
        return JSONResponse({"input_tokens": tokens})


async def _in_anthropic_shape(request: Request, handle: Handler) -> Response | EndSpansAfter:
    """`handle`'s answer, its errors (the shared flow's too) in Anthropic's shape."""
    try:
        return await handle(request)
    except ProxyError as exc:
        return error_response(exc, request_id_of(request))
    except Exception:
        request_id = request_id_of(request)
        log.exception("unhandled error in request %s", request_id)
        return error_response(internal_error(request_id), request_id)
