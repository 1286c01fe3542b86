"""`Upstreams`: which transport reaches each route, and the connection pool they share."""

from __future__ import annotations

from proxy.policy import ModelRoute
from proxy.settings import Settings
from proxy.upstreams.anthropic import AnthropicMessages
from proxy.upstreams.base import Upstream
from proxy.upstreams.echo import EchoUpstream
from proxy.upstreams.relay import OpenAICompatible
from proxy.upstreams.responses import ResponsesUpstream
from proxy.upstreams.routing import is_passthrough
from proxy.upstreams.translated import LiteLLMUpstream


class Upstreams:
    """Picks how each route is reached, and owns the shared connection pool."""

    def __init__(self, settings: Settings) -> None:
        self.direct = OpenAICompatible(
            settings.upstream_max_connections, settings.upstream_keepalive_s
        )
        self.translated = LiteLLMUpstream()
        self.echo = EchoUpstream()
        self.responses = ResponsesUpstream(self.direct, self.for_route)  # the Responses door
        self.messages = AnthropicMessages(self.direct, self.for_route)

    def for_route(self, route: ModelRoute) -> Upstream:
        if route.model == "echo":
            return self.echo
        return self.direct if is_passthrough(route) else self.translated

    async def aclose(self) -> None:
        await self.direct.aclose()
