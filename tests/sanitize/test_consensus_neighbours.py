"""Consensus asks the store for a candidate's k nearest memories; it never lists the scope.

The store here is the real one, seen through `WatchedMemories`, which passes every call on and
notes the reads a check makes: what it costs must follow k, not the size of the scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from proxy.memory.candidates import Candidate
from proxy.memory.sanitize import NEIGHBOURS, Sanitizer
from proxy.policy import RateLimits, SanitizerPolicy
from storage import EmbeddedStore
from storage.api import MemoryStore
from storage.records import NewMemory, Scope

ALICE = Scope("acme", "alice")
OLD_SCAN_LIMIT = 5000  # the sanitizer used to list this many memories and read their vectors


class WatchedMemories:
    """The store's memories, with the sizes of the reads made through them."""

    def __init__(self, inner: MemoryStore) -> None:
        self._inner = inner
        self.memory_list_limits: list[int] = []  # lists of facts, preferences or cases
        self.vectors_read = 0
        self.nearest_k: list[int] = []
        self.nearest_kinds: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def list(self, scope: Scope, **options: Any) -> Any:
        if options.get("kinds") != ["lesson"]:  # the tenant's lessons: bounded, and cached
            self.memory_list_limits.append(options.get("limit", 100))
        return await self._inner.list(scope, **options)

    async def vectors(self, tenant_id: str, memory_ids: Sequence[str]) -> Any:
        self.vectors_read += len(memory_ids)
        return await self._inner.vectors(tenant_id, memory_ids)

    async def nearest(self, scope: Scope, vectors: Sequence[Sequence[float]], **kw: Any) -> Any:
        self.nearest_k.append(kw["k"])
        self.nearest_kinds.append(list(kw["kinds"]))
        return await self._inner.nearest(scope, vectors, **kw)


async def test_consensus_in_a_scope_past_the_old_scan_limit_reads_k_neighbours(
    memory_store: EmbeddedStore,
) -> None:
    filler = np.random.default_rng(5).normal(size=(OLD_SCAN_LIMIT + 500, 384)).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    for start in range(0, len(filler), 1000):
        chunk = filler[start : start + 1000]
        await memory_store.memories.add(
            ALICE,
            [NewMemory("fact", f"Filler memory number {start + i}.") for i in range(len(chunk))],
            vectors=chunk.tolist(),
        )
    await memory_store.memories.add(
        ALICE, [NewMemory("fact", "My favourite colour is blue.", trust=0.8)]
    )
    watched = WatchedMemories(memory_store.memories)
    sanitizer = Sanitizer(cast(MemoryStore, watched))
    # The filler was all written today: no daily limit, so that only consensus speaks.
    policy = SanitizerPolicy(rate=RateLimits(per_day=0))

    [verdict] = await sanitizer.assess(
        ALICE,
        [Candidate("fact", "My favourite colour is green.", "assistant")],
        policy,
        dry_run=True,
    )

    assert verdict.verdict == "quarantine"
    assert any(r.signal == "consensus" and r.delta < 0 for r in verdict.reasons)
    assert watched.nearest_k == [NEIGHBOURS * 2]
    assert watched.vectors_read == 0
    assert watched.memory_list_limits == [1]  # whether the scope holds any memory at all


async def test_a_facts_neighbours_are_facts_however_many_cases_lie_nearer(
    memory_store: EmbeddedStore,
) -> None:
    """Each family is searched on its own: forty cases nearer to the candidate than the fact it
    contradicts do not hide that fact, and a case in the same batch is compared with cases."""
    rng = np.random.default_rng(7)
    candidate = rng.normal(size=384).astype(np.float32)
    candidate /= np.linalg.norm(candidate)

    def near(scale: float) -> list[float]:
        vector = candidate + rng.normal(scale=scale, size=384).astype(np.float32)
        return list(vector / np.linalg.norm(vector))

    cases = [NewMemory("case", f"Plan trip number {n}.", trust=0.8) for n in range(40)]
    await memory_store.memories.add(ALICE, cases, vectors=[near(0.002) for _ in cases])
    fact = NewMemory("fact", "My favourite colour is blue.", trust=0.8)
    await memory_store.memories.add(ALICE, [fact], vectors=[near(0.02)])
    watched = WatchedMemories(memory_store.memories)
    policy = SanitizerPolicy(rate=RateLimits(per_day=0))

    verdicts = await Sanitizer(cast(MemoryStore, watched)).assess(
        ALICE,
        [
            Candidate("fact", "My favourite colour is green.", "assistant"),
            Candidate("case", "Plan a trip to the favourite colour museum.", "assistant"),
        ],
        policy,
        dry_run=True,
        vectors=[list(candidate), list(candidate)],
    )

    assert any(r.signal == "consensus" and r.delta < 0 for r in verdicts[0].reasons)
    assert sorted(watched.nearest_kinds) == [["case"], ["fact", "preference"]]
