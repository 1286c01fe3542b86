"""Isolation property: no search, list or get ever returns another scope's record.

Hypothesis writes random records for several tenants and users (ids with quotes, JSON and SQL
metacharacters included) into one real store, then checks every read from every scope, and that
each scope still finds all of its own records (an empty answer would pass isolation trivially).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import EmbeddedStore
from storage.embedders import LocalEmbedder
from storage.records import MemoryRecord, NewMemory, Scope
from storage.store import open_embedded_store
from tests.postgres_server import PostgresServer

WORDS = ["alpine", "bakery", "cello", "dune", "ember", "fjord"]
# Awkward ids: quotes and separators must not let one scope's filter match another's.
IDS = ["a", "b", "a'b", 'a","b', "a\\", "' OR '1'='1", "ü", "a b"]

records_strategy = st.lists(
    st.tuples(
        st.sampled_from(IDS[:4]),  # tenant
        st.one_of(st.none(), st.sampled_from(IDS)),  # user (None: tenant-shared)
        st.sampled_from(["fact", "preference", "case", "lesson"]),
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def runner_and_store(
    tmp_path_factory: pytest.TempPathFactory,
    local_embedder: LocalEmbedder,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[asyncio.Runner, EmbeddedStore]]:
    """One store for every example, its source of truth in SQLite, then in PostgreSQL."""
    data: Path = tmp_path_factory.mktemp("isolation")
    url = None
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database()
    with asyncio.Runner() as runner:
        store = runner.run(open_embedded_store(data, local_embedder, database_url=url))
        yield runner, store
        runner.run(store.close())


def _allowed(scope: Scope, record: MemoryRecord, include_shared: bool) -> bool:
    users = {scope.user_id} | ({None} if include_shared else set())
    return record.tenant_id == scope.tenant_id and record.user_id in users


async def _check(store: EmbeddedStore, rows: list[tuple[str, str | None, str, list[str]]]) -> None:
    run = uuid.uuid4().hex[:8]  # each example gets its own tenants inside the shared store
    written: list[MemoryRecord] = []
    for tenant, user, kind, words in rows:
        scope = Scope(f"{run}{tenant}", user)
        memory = NewMemory(kind=kind, text=" ".join(words))  # type: ignore[arg-type]
        written.extend(await store.memories.add(scope, [memory]))
    scopes = {Scope(f"{run}{t}", u) for t, u, _, _ in rows} | {
        Scope(f"{run}{t}", u) for t in IDS[:4] for u in (None, "a", "a'b")
    }
    for scope in scopes:
        for include_shared in (False, True):
            for word in WORDS:
                vector = (await store.embedder.embed([word]))[0]
                hits = await store.memories.search(
                    scope,
                    query_text=word,
                    query_vector=vector,
                    k=50,
                    include_shared=include_shared,
                )
                assert all(_allowed(scope, hit.record, include_shared) for hit in hits)
                expected = {
                    r.id
                    for r in written
                    if _allowed(scope, r, include_shared) and word in r.text.split()
                }
                assert expected <= {hit.record.id for hit in hits if hit.bm25_rank is not None}
        listed = await store.memories.list(scope, limit=1000)
        assert {r.id for r in listed} == {r.id for r in written if _allowed(scope, r, False)}
        tenant_wide = await store.memories.list(scope, limit=1000, all_users=True)
        assert {r.id for r in tenant_wide} == {
            r.id for r in written if r.tenant_id == scope.tenant_id
        }
        for record in written:
            got = await store.memories.get(scope, record.id)
            assert (got is not None) == _allowed(scope, record, False)
        others = await store.memories.get_many(scope.tenant_id, [r.id for r in written])
        assert all(r.tenant_id == scope.tenant_id for r in others)
        vectors = await store.memories.vectors(scope.tenant_id, [r.id for r in written])
        assert set(vectors) == {r.id for r in written if r.tenant_id == scope.tenant_id}


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=records_strategy)
def test_no_read_crosses_scopes(
    runner_and_store: tuple[asyncio.Runner, EmbeddedStore],
    rows: list[tuple[str, str | None, str, list[str]]],
) -> None:
    runner, store = runner_and_store
    runner.run(_check(store, rows))
