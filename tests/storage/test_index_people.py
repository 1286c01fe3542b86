"""Index text: a turn is found by who says it, not by whom it addresses."""

from __future__ import annotations

import pytest

from storage import EmbeddedStore
from storage.index_people import speaker_terms, without_addressees
from storage.records import NewMemory, Scope

SCOPE = Scope("acme", "conversation")


@pytest.mark.parametrize(
    ("text", "indexed"),
    [
        ("Caroline: Thanks, Melanie! This necklace is special.", "Caroline: Thanks, ! This"),
        ("Melanie: Wow, Caroline, that's great!", "Melanie: Wow, , that's great!"),
        ("Caroline: Hey Mel! A lot's happened.", "Caroline: Hey ! A lot's happened."),
        ("Melanie: Caroline, so glad you got the support!", "Melanie: , so glad you got"),
        # Names the turn is about stay, as do sentence openers that are no names.
        ("Melanie: I took the kids to see Charlotte's Web.", "Charlotte's Web."),
        ("Caroline: Honestly, Sweden was home. Yesterday, I went.", "Honestly, Sweden was home."),
    ],
)
def test_names_that_only_address_the_listener_are_not_indexed(text: str, indexed: str) -> None:
    assert indexed in without_addressees(text)


def test_the_speaker_is_said_once_more() -> None:
    assert speaker_terms("Melanie: Yes, it was amazing!") == ["Melanie"]
    assert speaker_terms("The user lives in Porto.") == []
    assert speaker_terms("Note: the boiler is serviced in May.") == []


async def _bm25(store: EmbeddedStore, query: str) -> list[str]:
    hits = await store.memories.search(SCOPE, query_text=query, k=5)
    ranked = sorted((h for h in hits if h.bm25_rank is not None), key=lambda h: h.bm25_rank or 0)
    return [hit.record.text for hit in ranked]


async def test_bm25_ranks_the_named_speakers_turns_before_turns_addressed_to_them(
    store: EmbeddedStore,
) -> None:
    """ "Melanie's kids" matches Melanie's own turn ahead of a shorter one that only thanks
    her (which, indexed as written, BM25 would rank first)."""
    mine = "Melanie: The kids loved the dinosaur exhibit at the museum last weekend, so much fun."
    thanks = "Caroline: Thanks, Melanie! The kids loved the museum too."
    await store.memories.add(SCOPE, [NewMemory(kind="fact", text=t) for t in (thanks, mine)])
    assert await _bm25(store, "What do Melanie's kids like at the museum?") == [mine, thanks]
    listed = await store.memories.list(SCOPE)  # what is shown is the text as written
    assert sorted(m.text for m in listed) == sorted([mine, thanks])
