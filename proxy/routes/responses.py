"""The Responses door's routes: `POST /v1/responses` and the stored responses.

A call is validated, its model resolved and its upstream chosen here (relayed to an upstream that
serves the Responses API natively, translated to chat completions for any other); the conversation
it continues (`previous_response_id`) is read from the store and handed to the door, and the
answer is kept for the next call (`proxy.routes.responses_state`). Everything else (auth, memory
before and after, the upstream call, streaming, spans) is the shared flow of `proxy.routes.flow`.
`GET` and `DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items` read the store;
`POST /v1/responses/input_tokens` counts a request's input, as its native upstream or tiktoken does.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.app_state import store_of
from proxy.auth import authenticate
from proxy.doors.responses import ResponsesDoor, items_as_messages
from proxy.errors import bad_request, unavailable
from proxy.memory.budget import encoding_name_for, prompt_tokens
from proxy.policy import Policy
from proxy.routes.flow import CallFlow, DoorCall, OpenStream, Send, resolve
from proxy.routes.responses_state import ResponseKeeper, history_items, kept, not_found
from proxy.routes.responses_validation import check_translatable, validate_responses
from proxy.tracing import EndSpansAfter
from proxy.upstreams.base import Target
from proxy.upstreams.registry import Upstreams
from proxy.upstreams.responses_translate import ResponseDraft
from proxy.upstreams.routing import serves_natively
from proxy.validation import call_user_id, read_json_body
from storage.api import ResponseStore
from storage.numbers import parse_whole_number
from storage.records import StoredResponse

MAX_ITEMS_PAGE = 100
COUNT_EXAMPLE = '{"model": "...", "input": "Hello!"}'


class ResponsesRoutes:
    """`POST /v1/responses` through the shared flow, and the stored responses."""

    def __init__(self, flow: CallFlow, upstreams: Upstreams) -> None:
        self.flow = flow
        self.upstreams = upstreams

    def routes(self) -> list[Route]:
        return [
            Route("/v1/responses", self.create, methods=["POST"]),
            Route("/v1/responses/input_tokens", self.input_tokens, methods=["POST"]),
            Route("/v1/responses/{id}", self.retrieve, methods=["GET"]),
            Route("/v1/responses/{id}", self.delete, methods=["DELETE"]),
            Route("/v1/responses/{id}/input_items", self.input_items, methods=["GET"]),
        ]

    async def create(self, request: Request) -> Response | EndSpansAfter:
        store = store_of(request)
        responses = store.responses if store else None
        return await self.flow.run(request, partial(self.read, responses), api=ResponsesDoor.name)

    async def read(
        self,
        responses: ResponseStore | None,
        policy: Policy,
        body: dict[str, Any],
        headers: Headers,
    ) -> DoorCall:
        alias = validate_responses(body)
        route = resolve(policy, alias)
        native = serves_natively(route, "responses")
        if not native:
            check_translatable(body, alias)
        user = call_user_id(body.get("user"), headers, param="user")
        previous = await _previous(responses, policy.tenant, user, body, required=not native)
        history = history_items(previous)
        door = ResponsesDoor(items_as_messages(history))
        upstream = self.upstreams.responses
        send: Send
        open_stream: OpenStream
        if native:
            send, open_stream = upstream.relay, upstream.relay_stream
        else:
            draft = ResponseDraft(body)
            send = partial(upstream.translate, conversation=door.conversation, draft=draft)
            open_stream = partial(
                upstream.translate_stream, conversation=door.conversation, draft=draft
            )
        if responses is not None and body.get("store") is not False:
            keeper = ResponseKeeper(responses, policy.tenant, user, body, history, native)
            send, open_stream = keeper.sending(send), keeper.streaming(open_stream)
        return DoorCall(
            body=body,
            alias=alias,
            route=route,
            door=door,
            user_id=user,
            stream=bool(body.get("stream")),
            send=send,
            open_stream=open_stream,
            passthrough=native,
        )

    async def input_tokens(self, request: Request) -> Response:
        """`POST /v1/responses/input_tokens`: what the request's input takes, counted by a
        native upstream, else here with tiktoken in the route's encoding (the conversation it
        continues included; never the memory block a call would add). The body is read as a
        call's would be, its previous_response_id checked alike."""
        policy = authenticate(request)
        body = await read_json_body(request, policy.limits.max_body_bytes, example=COUNT_EXAMPLE)
        store = store_of(request)
        call = await self.read(store.responses if store else None, policy, body, request.headers)
        if call.passthrough:
            target = Target(call.alias, call.route, policy.limits.connect_timeout_s)
            reply = await self.upstreams.responses.count_input_tokens(target, body)
            return Response(reply.body, reply.status, headers=reply.headers)
        conversation = call.door.conversation(body)
        encoding = encoding_name_for(call.route.model)
        tokens = await asyncio.to_thread(prompt_tokens, conversation, body, encoding)
        return JSONResponse({"object": "response.input_tokens", "input_tokens": tokens})

    async def retrieve(self, request: Request) -> Response:
        stored = await _stored(request)
        return JSONResponse(stored.response)

    async def delete(self, request: Request) -> Response:
        policy = authenticate(request)
        response_id = request.path_params["id"]
        await kept(policy.tenant, response_id)
        if not await _responses_of(request).delete_response(policy.tenant, response_id):
            raise not_found(response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def input_items(self, request: Request) -> Response:
        """The stored context of a response, newest first unless `order=asc`, a page of
        `limit` items (at most 100) after the item `after`."""
        stored = await _stored(request)
        params = request.query_params
        order = params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request(f"'order' must be asc or desc, got {order!r}.", param="order")
        limit_text = params.get("limit", "20")
        limit = parse_whole_number(limit_text, 1, MAX_ITEMS_PAGE)
        if limit is None:
            raise bad_request(
                f"'limit' must be an integer from 1 to {MAX_ITEMS_PAGE}, got {limit_text!r}.",
                param="limit",
            )
        items = stored.input_items if order == "asc" else stored.input_items[::-1]
        after = params.get("after")
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise bad_request(f"No input item '{after}' in this response.", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0].get("id") if page else None,
                "last_id": page[-1].get("id") if page else None,
                "has_more": len(items) > len(page),
            }
        )


async def _previous(
    responses: ResponseStore | None,
    tenant: str,
    user: str | None,
    body: dict[str, Any],
    *,
    required: bool,
) -> StoredResponse | None:
    """The stored response the call continues, if it names one. Translated calls need it; a
    native upstream keeps its own, so one the proxy does not have is left to it. One the proxy
    keeps for another user, or another tenant, is refused either way: the upstream, asked with
    the same provider key for every user (and maybe every tenant), would continue it."""
    previous_id = body.get("previous_response_id")
    if previous_id is None:
        return None
    if responses is None:
        if not required:
            return None
        raise unavailable(
            "'previous_response_id' needs the proxy's store, and memory (which owns it) is not "
            "running on this proxy; send the whole conversation as 'input' instead.",
            code="store_unavailable",
        )
    await kept(tenant, previous_id)
    stored = await responses.get_response(tenant, previous_id)
    if stored is None and not required:
        # Another tenant's, asked of an upstream the tenants may share a provider key with.
        if await responses.held_by_another_tenant(tenant, previous_id):
            raise not_found(previous_id, param="previous_response_id")
        return None
    if stored is None or stored.user_id != user:
        raise not_found(previous_id, param="previous_response_id")
    return stored


def _responses_of(request: Request) -> ResponseStore:
    store = store_of(request)
    if store is None:
        raise unavailable(
            "Stored responses live in the memory store, which is not running on this proxy; "
            "start it with a data directory.",
            code="store_unavailable",
        )
    return store.responses


async def _stored(request: Request) -> StoredResponse:
    policy = authenticate(request)
    response_id = request.path_params["id"]
    await kept(policy.tenant, response_id)
    stored = await _responses_of(request).get_response(policy.tenant, response_id)
    if stored is None:
        raise not_found(response_id)
    return stored
