"""A store's named secrets: random, made once, the same on every opening and for every process
sharing the store (the UI signs its sessions with one)."""

from __future__ import annotations

from storage import EmbeddedStore
from storage.embedders import LocalEmbedder
from storage.store import open_embedded_store
from tests.postgres_server import BOTH_DATABASES

pytestmark = BOTH_DATABASES


async def test_a_secret_is_made_once_and_kept(
    store: EmbeddedStore, local_embedder: LocalEmbedder, database_url: str | None
) -> None:
    first = await store.secret("ui-session")
    assert len(first) == 32
    assert await store.secret("ui-session") == first
    assert await store.secret("another") != first
    # Another process's view of the same store.
    second = await open_embedded_store(store.data_dir, local_embedder, database_url=database_url)
    try:
        assert await second.secret("ui-session") == first
    finally:
        await second.close()
