"""The second retrieval round, on the real store: it recalls what the best hits point to."""

from __future__ import annotations

from pathlib import Path

from proxy.memory.recall import search_guarded, second_round
from proxy.memory.retrieve import rank_candidates
from proxy.policy import MemoryPolicy
from storage import open_store
from storage.embedders import LocalEmbedder
from storage.records import NewMemory, Scope

SCOPE = Scope("acme", "ines")
QUERY = "What does my daughter do each week?"
NAMED = "My daughter is called Lena."
LESSONS = "Lena has violin lessons on Tuesdays."
DISTRACTORS = [
    *(f"My daughter's favourite {thing} is blue." for thing in ("cup", "coat", "bike", "kite")),
    *(f"My daughter's {room} is painted yellow." for room in ("bedroom", "playroom", "desk")),
    *(f"Each week my daughter's {day} class starts at nine." for day in ("art", "swim", "math")),
    "My son is called Tom.",
    "Tom plays football on Saturdays.",
]


async def test_the_second_round_recalls_what_the_seeds_name(tmp_path: Path) -> None:
    """Five per retriever miss "Lena has violin lessons"; seeded by "My daughter is called
    Lena." the second round finds it (by the name) and adds relevance to it."""
    store = await open_store(tmp_path, LocalEmbedder())
    try:
        await store.memories.add(
            SCOPE, [NewMemory(kind="fact", text=t) for t in [NAMED, LESSONS, *DISTRACTORS]]
        )
        policy = MemoryPolicy.model_validate({"retrieval": {"k1": 5}})
        hits, _ = await search_guarded(store.memories, SCOPE, QUERY, policy, k=5)
        assert LESSONS not in {hit.record.text for hit in hits}
        seed = next(
            item for item in rank_candidates(hits, policy).ranked if item.record.text == NAMED
        )
        merged, extra, dropped = await second_round(
            store.memories, SCOPE, QUERY, hits, [(seed.record, seed.vector)], policy
        )
        lessons = next(hit for hit in merged if hit.record.text == LESSONS)
        assert extra[lessons.record.id] > 0 and dropped == []
        assert lessons.bm25_rank is None and lessons.cosine is None  # not found by the query

    finally:
        await store.close()
