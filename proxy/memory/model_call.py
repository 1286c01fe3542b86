"""How the memory stages ask a model: one caller type for extraction, consolidation and the judge.

A `CallModel` sends a chat-completion body to a model by name and returns the OpenAI-shaped
answer (read it with `proxy.messages.answer_text`). The name is one of the tenant's model aliases
or any litellm string. `TenantModels` is the one implementation: it reaches the model through the
proxy's own upstreams, with the tenant's routes, keys and limits, whether the write path, the memory
API or the CLI asks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from proxy.policy import ModelRoute, Policy
from proxy.upstreams.base import Target
from proxy.upstreams.registry import Upstreams

CallModel = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class TenantModels:
    """A tenant's models, called through the proxy's own upstreams (a `CallModel`)."""

    def __init__(self, upstreams: Upstreams, policy: Policy) -> None:
        self.upstreams = upstreams
        self.policy = policy

    async def __call__(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        route = self.policy.models.get(name) or ModelRoute(model=name)
        target = Target(name, route, self.policy.limits.connect_timeout_s)
        reply = await self.upstreams.for_route(route).chat(target, {**body, "model": name})
        parsed = reply.json()
        if not isinstance(parsed, dict):
            raise ValueError(f"model {name} answered with {type(parsed).__name__}, not an object")
        return parsed
