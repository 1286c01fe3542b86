"""Warm-up: what the memory pipeline loads before it serves, so no request pays for it.

The embedding model (one per spec for the whole process), the tokenizers, every route's context
window (the first look-up imports litellm, which must not happen on the event loop in the middle
of a request), and the first encode and index query, which are slow.
"""

from __future__ import annotations

import asyncio

from proxy.memory.budget import context_window
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


async def warm_up(store: MemoryStore, policies: PolicySource) -> None:
    """Load the tokenizers and context windows, and run the first index query."""
    await asyncio.to_thread(_warm_tokenizers)
    await asyncio.to_thread(_warm_context_windows, policies)
    await store.search(_WARM_SCOPE, query_text="warm up", embed_query=True, k=1)


def _warm_tokenizers() -> None:
    from proxy.tokens import encoding

    for name in ("cl100k_base", "o200k_base"):
        encoding(name)


def _warm_context_windows(policies: PolicySource) -> None:
    """Look up every route's context window now (a source without `tenants()` has none to warm)."""
    tenants = getattr(policies, "tenants", None)
    for tenant in tenants() if callable(tenants) else []:
        policy = policies.get(tenant)
        for route in policy.models.values() if policy else []:
            if route.model != "echo":
                context_window(route)
