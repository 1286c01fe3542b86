"""The chat-completions door's routes: `/v1/chat/completions` and `/v1/embeddings`.

A chat call is validated, its model resolved and its upstream chosen here; everything else (auth,
memory before and after, the upstream call, streaming, spans) is the shared flow of
`proxy.routes.flow`.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import authenticate
from proxy.doors.chat import CHAT
from proxy.policy import Policy
from proxy.routes.chat_validation import check_content_parts
from proxy.routes.flow import CallFlow, DoorCall, resolve
from proxy.tracing import EndSpansAfter
from proxy.upstreams.base import Target
from proxy.upstreams.registry import Upstreams
from proxy.upstreams.routing import is_passthrough
from proxy.validation import chat_user_id, read_json_body, validate_chat, validate_embeddings


class ChatRoutes:
    """`POST /v1/chat/completions` through the shared flow, and `POST /v1/embeddings`."""

    def __init__(self, flow: CallFlow, upstreams: Upstreams) -> None:
        self.flow = flow
        self.upstreams = upstreams

    async def chat(self, request: Request) -> Response | EndSpansAfter:
        return await self.flow.run(request, self.read_chat, api=CHAT.name)

    async def read_chat(self, policy: Policy, body: dict[str, Any], headers: Headers) -> DoorCall:
        alias = validate_chat(body)
        check_content_parts(body)
        route = resolve(policy, alias)
        upstream = self.upstreams.for_route(route)
        return DoorCall(
            body=body,
            alias=alias,
            route=route,
            door=CHAT,
            user_id=chat_user_id(body, headers),
            stream=bool(body.get("stream")),
            send=upstream.chat,
            open_stream=upstream.chat_stream,
            passthrough=is_passthrough(route),
        )

    async def embeddings(self, request: Request) -> Response:
        policy = authenticate(request)
        body = await read_json_body(request, policy.limits.max_body_bytes)
        alias = validate_embeddings(body)
        route = resolve(policy, alias)
        target = Target(alias, route, policy.limits.connect_timeout_s)
        reply = await self.upstreams.for_route(route).embeddings(target, body)
        return Response(reply.body, reply.status, headers=reply.headers)
