"""Warm-up: what the memory pipeline loads before it serves, so no request pays for it.

The embedding model (one per spec for the whole process), the tokenizers the routes use, every
route's context window (the first look-up imports litellm, which must not happen on the event
loop in the middle of a request), and the first encode and index query, which are slow.
"""

from __future__ import annotations

import asyncio

from proxy.memory.budget import context_window, encoding_name_for
from proxy.policy import ModelRoute
from proxy.policy_source import PolicySource
from storage.api import Embedder, MemoryStore
from storage.records import Scope

_EMBEDDERS: dict[str, Embedder] = {}
_WARM_SCOPE = Scope("memento-warm-up", "memento-warm-up")


async def shared_embedder(spec: str) -> Embedder:
    """One embedder per spec for the whole process: the model is loaded once, however many apps
    (tests, benchmarks) run in it. Embedders hold no per-app state."""
    from storage.embedders import load_embedder

    if spec not in _EMBEDDERS:
        _EMBEDDERS[spec] = await load_embedder(spec)
    return _EMBEDDERS[spec]


async def load_tokenizers(policies: PolicySource) -> None:
    """The encodings of the routes the policies name, in a thread (the pipeline runs this beside
    the store's opening). A route added later loads its own on its first call."""
    from proxy.tokens import load_encoding

    for name in sorted({encoding_name_for(route.model) for route in _routes(policies)}):
        await load_encoding(name)


async def warm_up(store: MemoryStore, policies: PolicySource) -> None:
    """Look up the context windows, and run the first index query."""
    await asyncio.to_thread(_warm_context_windows, policies)
    await store.search(_WARM_SCOPE, query_text="warm up", embed_query=True, k=1)


def _warm_context_windows(policies: PolicySource) -> None:
    for route in _routes(policies):
        if route.model != "echo":
            context_window(route)


def _routes(policies: PolicySource) -> list[ModelRoute]:
    """Every tenant's model routes (a source without `tenants()` has none to warm)."""
    tenants = getattr(policies, "tenants", None)
    policies_now = [policies.get(tenant) for tenant in (tenants() if callable(tenants) else [])]
    return [route for policy in policies_now if policy for route in policy.models.values()]
