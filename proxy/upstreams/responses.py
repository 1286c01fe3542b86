"""How a Responses API call reaches its model: relayed, or translated to chat completions.

A route whose upstream serves the Responses API itself (`routing.serves_natively`) gets the call
as it came, through the direct relay to `{api_base}/responses` (only the model name replaced),
and its answer unchanged. Any other route gets the chat-completions request the call translates
to (`responses_translate`), through the route's ordinary chat upstream (the relay for
OpenAI-compatible ones, litellm for the others), and the answer, streamed or not, is turned back
into the Responses API's shapes.

litellm has a Responses-to-chat bridge of its own, but its stream side consumes litellm's own
stream objects, not the server-sent events the relay hands back, so the translation is done
here once, on the door's own reading of the call, for every chat upstream alike.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from proxy.policy import ModelRoute
from proxy.upstreams.base import Target, Upstream, UpstreamReply, UpstreamStream
from proxy.upstreams.relay import OpenAICompatible
from proxy.upstreams.responses_events import ResponseEvents
from proxy.upstreams.responses_translate import ResponseDraft, chat_request, response_from_chat

# The conversation of a Responses body (the door's reading of it), for the translated request.
Conversation = Callable[[dict[str, Any]], list[dict[str, Any]]]


class ResponsesUpstream:
    """The Responses API over the relay (native upstreams) or any route's chat upstream."""

    def __init__(self, direct: OpenAICompatible, for_route: Callable[[ModelRoute], Upstream]):
        self.direct = direct
        self.for_route = for_route

    async def relay(self, target: Target, body: dict[str, Any]) -> UpstreamReply:
        return await self.direct.complete(target, "/responses", body)

    async def count_input_tokens(self, target: Target, body: dict[str, Any]) -> UpstreamReply:
        return await self.direct.complete(target, "/responses/input_tokens", body)

    async def relay_stream(self, target: Target, body: dict[str, Any]) -> UpstreamStream:
        return await self.direct.stream(target, "/responses", body)

    async def translate(
        self, target: Target, body: dict[str, Any], conversation: Conversation, draft: ResponseDraft
    ) -> UpstreamReply:
        """Answer `body` (as sent upstream) through the route's chat upstream, as the response
        object of `draft`."""
        chat = chat_request(body, conversation(body), stream=False)
        reply = await self.for_route(target.route).chat(target, chat)
        response = response_from_chat(reply.json(), draft)
        content = json.dumps(response, separators=(",", ":")).encode()
        return UpstreamReply(200, content, {**reply.headers, "content-type": "application/json"})

    async def translate_stream(
        self, target: Target, body: dict[str, Any], conversation: Conversation, draft: ResponseDraft
    ) -> UpstreamStream:
        """Stream `body`'s answer through the route's chat upstream as Responses events."""
        chat = chat_request(body, conversation(body), stream=True)
        opened = await self.for_route(target.route).chat_stream(target, chat)
        events = ResponseEvents(draft)

        async def chunks() -> AsyncIterator[bytes]:
            yield events.start()
            async for data in opened.chunks:
                out = events.feed(data)
                if out:
                    yield out
            yield events.finish()

        return UpstreamStream(chunks(), opened.close, opened.headers)
