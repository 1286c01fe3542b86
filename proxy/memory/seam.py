"""Where the memory pipeline meets the chat route.

The route authenticates, validates and resolves the model, then asks the hooks to prepare the
call (retrieve, budget, inject) and, once the upstream has answered and before the client has the
whole answer, hands them the finished exchange to queue durably (extract, sanitize, consolidate
and write run later, off the request path).
`NoMemory` is the pass-through used when memory is disabled. The app starts the hooks before
serving and closes them after the last request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol

from proxy.doors.base import Door
from proxy.memory.query import MemoryAccess
from proxy.policy import ModelRoute, Policy

# Why retrieval gave up on a call: its deadline ran out, the process was too busy to start it
# within the queue time, or the store or index failed.
Skipped = Literal["deadline", "busy", "error"]


class MemoryUnavailable(Exception):
    """Memory failed and the tenant's policy says fail-closed: the call must not go through."""


@dataclass
class CallContext:
    """One model call as the route sees it, after auth and validation, whichever door it came
    through: the stages read the body only through the door."""

    request_id: str
    policy: Policy
    model_alias: str
    route: ModelRoute
    body: dict[str, Any]  # the parsed request body exactly as the client sent it
    user_id: str | None
    session_id: str | None
    mode_header: str | None  # X-Memento-Mode as sent, validated by the hooks
    stream: bool
    door: Door  # the client API the call came through
    trace_id: str | None = None  # hex ids of the request's root span, for linking later work
    span_id: str | None = None
    client_request_id: str | None = None  # the client's own id: a correlation id, not ours

    @cached_property
    def conversation(self) -> list[dict[str, Any]]:
        """The call's conversation as chat-completions messages, read once through the door."""
        return self.door.conversation(self.body)


@dataclass(frozen=True)
class InjectedMemory:
    """A memory the call's prompt carried; its text is cut from the answer before learning."""

    id: str | None  # None only in a queued job from an older version that lacked it
    text: str


@dataclass
class CallState:
    """What the hooks keep from `before_call` for `after_call` of the same call."""

    access: MemoryAccess | None = None  # None: the hooks never looked at this call
    injected: list[InjectedMemory] = field(default_factory=list)
    logged: asyncio.Task[None] | None = None  # the request log being written


@dataclass
class PreparedCall:
    """What to send upstream, plus state the hooks want back after the response."""

    body: dict[str, Any]
    injected_count: int = 0
    # The user's earlier exchanges still being learned when retrieval ran (the wait ran out).
    unlearned_writes: int = 0
    # Why the call went on without memory it should have read (fail-open), if it did.
    memory_skipped: Skipped | None = None
    changed: bool = False  # False: the route may relay the client's original bytes
    state: CallState = field(default_factory=CallState)


class MemoryHooks(Protocol):
    async def start(self) -> None:
        """Get ready to serve (open storage, load models, start workers): before the first call."""
        ...

    async def aclose(self) -> None:
        """Finish queued work (bounded) and release what `start` opened: after the last call."""
        ...

    async def before_call(self, ctx: CallContext) -> PreparedCall:
        """Retrieve, budget and inject. Raises MemoryUnavailable only when fail-closed."""
        ...

    async def after_call(
        self, ctx: CallContext, prepared: PreparedCall, response: dict[str, Any]
    ) -> None:
        """Queue the finished exchange (a chat.completion-shaped dict, streamed ones assembled;
        one with an `error` key, such as a stream that broke, is not learned from).

        Called before the client has the complete answer (a stream's final event is held until
        this returns), so an answered exchange is never lost: enqueue durably and return.
        """
        ...


class NoMemory:
    """Pass-through hooks: nothing retrieved, nothing learned."""

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def before_call(self, ctx: CallContext) -> PreparedCall:
        return PreparedCall(body=ctx.body)

    async def after_call(
        self, ctx: CallContext, prepared: PreparedCall, response: dict[str, Any]
    ) -> None:
        return None
