"""BM25 in process for hot scopes: the analyser, the scores, and the scope's copy kept in step.

The pure parts (`analyze`, `ScopeText`) are checked against a plain BM25 written out here; the
store's part through a real store: a cached scope answers full-text searches without LanceDB,
sees only its own records, loses erased and forgotten ones, and a scope over the cache's bound
is searched by LanceDB's full-text index.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from storage import EmbeddedStore
from storage.index_schema import IndexHit, IndexRow, ScopeRows
from storage.records import MemoryKind, MemoryStatus, NewMemory, Scope
from storage.scope_text import STOP_WORDS, ScopeText, analyze, stem
from storage.vector_cache import ScopeVectors, VectorCacheSettings


def test_analyze_folds_stems_and_drops_stop_words() -> None:
    assert analyze("When did Caroline go to the LGBTQ support groups?") == [
        "caroline",
        "go",
        "lgbtq",
        "support",
        "group",
    ]
    assert analyze("Café, CAFÉS and cafe_owner") == ["cafe", "cafe", "cafe", "owner"]
    assert analyze("x" * 41 + " kept") == ["kept"]
    # Inflections of a word meet; digits and dates stay as written.
    for forms in (["hoping", "hoped", "hopes"], ["running", "runs"], ["dates", "dated", "date"]):
        assert len({stem(form) for form in forms}) == 1, forms
    assert stem("hopping") != stem("hoping")
    assert analyze("7 May 2023") == ["7", "may", "2023"]
    assert not STOP_WORDS & set(analyze("the things that we were doing here"))


def _reference_bm25(docs: list[str], query: str) -> list[float]:
    """Okapi BM25 written out plainly (k1 = 1.2, b = 0.75)."""
    terms = [Counter(analyze(doc)) for doc in docs]
    mean = sum(sum(t.values()) for t in terms) / len(docs)
    scores = []
    for counts in terms:
        length = sum(counts.values())
        score = 0.0
        for term in dict.fromkeys(analyze(query)):
            found = sum(1 for other in terms if term in other)
            if not found or term not in counts:
                continue
            idf = math.log(1 + (len(docs) - found + 0.5) / (found + 0.5))
            tf = counts[term]
            score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / mean))
        scores.append(score)
    return scores


DOCS = [
    "Melanie painted a sunrise over the lake",
    "Caroline went to the LGBTQ support group in May 2023",
    "Caroline is researching adoption agencies",
    "The support group met again; Caroline spoke at the support group",
    "Melanie took her kids camping at the beach",
]


def test_scores_are_okapi_bm25_and_rank_the_rarer_term_first() -> None:
    text = ScopeText(capacity=2)  # grows past its first capacity
    for row, doc in enumerate(DOCS):
        text.set(row, doc)
    for query in ("support group", "Caroline adoption", "Melanie lake sunrise", "kids"):
        scores = text.scores(query)
        assert scores is not None
        assert scores.tolist() == pytest.approx(_reference_bm25(DOCS, query), rel=1e-5)
    scores = text.scores("Caroline adoption")
    assert scores is not None
    # "adoption" is in one document, "caroline" in three: the one with both is first.
    assert int(np.argmax(scores)) == 2
    assert text.scores("violin") is None
    assert text.scores("the and of") is None  # stop words only


def test_removed_and_changed_rows_leave_the_posting_lists_as_a_fresh_copy() -> None:
    rng = random.Random(7)
    words = ["harbour", "violin", "quince", "glacier", "tandem", "saffron", "support", "group"]
    scope = ScopeVectors(4, capacity=2)
    texts: dict[str, str] = {}
    for step in range(300):
        memory_id = f"m{rng.randrange(40)}"
        if rng.random() < 0.35:
            scope.remove(memory_id)
            texts.pop(memory_id, None)
            continue
        text = " ".join(rng.choices(words, k=rng.randrange(1, 7)))
        vector = np.asarray([1, step, 0, 0], dtype=np.float32)
        scope.upsert(IndexRow(memory_id, "t", "u", "fact", "active", None, text, vector))
        texts[memory_id] = text
    fresh = ScopeVectors(4)
    for memory_id in scope.ids:
        vector = np.asarray([1, 0, 0, 0], dtype=np.float32)
        fresh.upsert(
            IndexRow(memory_id, "t", "u", "fact", "active", None, texts[memory_id], vector)
        )
    for query in [*words, "violin glacier support"]:
        kept = scope.match(query, 100, kinds=None, statuses=[], now=0.0)
        loaded = fresh.match(query, 100, kinds=None, statuses=[], now=0.0)
        assert sorted((h.id, round(h.score, 4)) for h in kept) == sorted(
            (h.id, round(h.score, 4)) for h in loaded
        )


async def test_a_copy_made_in_one_step_answers_and_changes_as_one_grown_row_by_row() -> None:
    """A scope's copy is loaded with `ScopeVectors.of_rows`; outbox batches then change it
    row by row. Both steps must leave it as `upsert` alone would."""
    rng = random.Random(11)
    words = ["harbour", "violin", "quince", "glacier", "tandem", "saffron", "support", "group"]
    kinds, statuses = ["fact", "case", "preference"], ["active", "quarantined"]

    def row(memory_id: str) -> IndexRow:
        text = " ".join(rng.choices(words, k=rng.randrange(1, 9)))
        vector = np.asarray([rng.random() for _ in range(4)], dtype=np.float32)
        expires = rng.choice([None, 50.0, 500.0])
        kind, status = rng.choice(kinds), rng.choice(statuses)
        return IndexRow(memory_id, "t", "u", kind, status, expires, text, vector)

    rows = [row(f"m{i}") for i in range(150)]
    loaded = ScopeVectors.of_rows(4, ScopeRows.of(rows, 4), capacity=160)
    grown = ScopeVectors(4, capacity=2)
    for each in rows:
        grown.upsert(each)
    for step in range(200):  # then the same changes to both
        memory_id = f"m{rng.randrange(220)}"
        if rng.random() < 0.3:
            loaded.remove(memory_id)
            grown.remove(memory_id)
        else:
            changed = row(memory_id)
            loaded.upsert(changed)
            grown.upsert(changed)
        if step % 50:
            continue
        assert loaded.ids == grown.ids
        for query in [*words, "violin glacier support"]:
            assert await _answers(loaded, query) == await _answers(grown, query)
        assert loaded.text.nbytes == pytest.approx(grown.text.nbytes, rel=0.05)


async def _answers(scope: ScopeVectors, query: str) -> tuple[list[IndexHit], list[IndexHit]]:
    """What `scope` answers for `query`: its BM25 hits and its nearest rows to a vector."""
    kinds: list[MemoryKind] = ["fact", "case"]
    statuses: list[MemoryStatus] = ["active"]
    vector = np.asarray([0.5, 0.1, 0.7, 0.2], dtype=np.float32)
    return (
        scope.match(query, 20, kinds=kinds, statuses=statuses, now=100.0),
        await scope.search(vector, 20, kinds=kinds, statuses=statuses, now=100.0),
    )


def test_match_filters_like_the_vector_search() -> None:
    scope = ScopeVectors(4)
    vector = np.asarray([1, 0, 0, 0], dtype=np.float32)
    rows = [
        ("fact", "fact", "active", None),
        ("quarantined", "fact", "quarantined", None),
        ("lesson", "lesson", "active", None),
        ("expired", "fact", "active", 100.0),
    ]
    for memory_id, kind, status, expires in rows:
        scope.upsert(IndexRow(memory_id, "t", "u", kind, status, expires, "violin", vector))
    scope.upsert(IndexRow("other", "t", "u", "fact", "active", None, "harbour", vector))
    hits = scope.match("violin", 10, kinds=["fact"], statuses=["active"], now=200.0)
    assert [hit.id for hit in hits] == ["fact"]
    assert {h.id for h in scope.match("violin", 10, kinds=None, statuses=[], now=50.0)} == {
        "fact",
        "quarantined",
        "lesson",
        "expired",
    }


async def _text_search(store: EmbeddedStore, scope: Scope, text: str) -> list[str]:
    hits = await store.memories.search(scope, query_text=text, k=50, include_shared=True)
    return [hit.record.id for hit in hits]


async def test_cached_scopes_are_isolated_and_forget_erased_records(store: EmbeddedStore) -> None:
    ann, bob, other = Scope("acme", "ann"), Scope("acme", "bob"), Scope("globex", "ann")
    (mine,) = await store.memories.add(ann, [NewMemory(kind="fact", text="ann plays the violin")])
    (forgotten,) = await store.memories.add(ann, [NewMemory(kind="fact", text="violin lessons")])
    for scope in (bob, other):
        await store.memories.add(scope, [NewMemory(kind="fact", text=f"violin {scope}")] * 3)
    await store.memories.add(Scope("acme", None), [NewMemory(kind="fact", text="violin shop")])
    assert sorted(await _text_search(store, ann, "violin")) != []
    cache = store.index.vector_cache
    cached = cache.get("acme", "ann")
    assert cached is not None and sorted(cached.ids) == sorted([mine.id, forgotten.id])
    # Another user's or tenant's records neither show nor weigh in the scope's scores.
    alone = {h.id: h.score for h in cached.match("violin", 10, kinds=None, statuses=[], now=0)}
    found = set(await _text_search(store, ann, "violin"))
    shared = cache.get("acme", None)
    assert shared is not None and found == {mine.id, forgotten.id, *shared.ids}
    await store.memories.add(bob, [NewMemory(kind="fact", text="violin violin")] * 5)
    again = {h.id: h.score for h in cached.match("violin", 10, kinds=None, statuses=[], now=0)}
    assert again == alone

    await store.memories.delete(ann, forgotten.id, actor="test")
    assert [h.id for h in cached.match("lessons", 10, kinds=None, statuses=[], now=0)] == []
    assert await _text_search(store, ann, "lessons") == []
    assert len(await _text_search(store, bob, "violin")) == 9  # bob's 8 and the shared one
    bob_cached = cache.get("acme", "bob")
    assert bob_cached is not None and bob_cached.match("violin", 10, kinds=None, statuses=[], now=0)
    await store.memories.delete_user("acme", "bob", actor="test")
    assert len(bob_cached) == 0
    assert bob_cached.match("violin", 10, kinds=None, statuses=[], now=0) == []
    assert await _text_search(store, bob, "violin") == list(shared.ids)


async def test_a_scope_over_the_cache_bound_is_searched_by_the_index(store: EmbeddedStore) -> None:
    store.index.vector_cache.settings = VectorCacheSettings(max_rows=3)
    scope = Scope("acme", "big")
    texts = [f"glacier walk number {n}" for n in range(5)]
    added = await store.memories.add(scope, [NewMemory(kind="fact", text=t) for t in texts])
    found = await _text_search(store, scope, "glacier")
    assert store.index.vector_cache.get("acme", "big") is None
    assert sorted(found) == sorted(record.id for record in added)
    # A small scope beside it is still answered in process.
    (small,) = await store.memories.add(
        Scope("acme", "small"), [NewMemory(kind="fact", text="glacier")]
    )
    assert await _text_search(store, Scope("acme", "small"), "glacier") == [small.id]
    assert store.index.vector_cache.get("acme", "small") is not None


async def test_a_scope_load_outlives_the_search_that_gave_up_on_it(
    store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search cancelled by its deadline while its scope loads must not cancel the load: a
    scope slower to load than the deadline was loaded again, and given up on, by every search."""
    import asyncio

    scope = Scope("acme", "dana")
    texts = [f"Dana kept note {n} about the harbour, the boats and the tide." for n in range(600)]
    await store.memories.add(scope, [NewMemory(kind="fact", text=text) for text in texts])
    store.index.vector_cache.clear()  # as a process that has not searched it yet
    loading = asyncio.Event()
    read_rows = store.index.scope_rows

    async def slow_rows(tenant_id: str, user_id: str | None) -> ScopeRows:
        loading.set()
        await asyncio.sleep(0.2)  # a scope slower to load than the search's deadline
        return await read_rows(tenant_id, user_id)

    monkeypatch.setattr(store.index, "scope_rows", slow_rows)
    vector = (await store.memories.embedder.embed(["the tide at the harbour"]))[0]
    search = asyncio.ensure_future(
        store.memories.search(scope, query_text="tide harbour", query_vector=vector, k=5)
    )
    await loading.wait()
    search.cancel()  # what its deadline does
    with pytest.raises(asyncio.CancelledError):
        await search
    for _ in range(500):  # the load finishes on its own
        if store.index.vector_cache.get("acme", "dana") is not None:
            break
        await asyncio.sleep(0.01)
    cached = store.index.vector_cache.get("acme", "dana")
    assert cached is not None and len(cached) == 600
