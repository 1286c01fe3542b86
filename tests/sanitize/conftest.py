"""A real store (SQLite + LanceDB in a temp dir, local MiniLM embedder) for store-backed signals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storage import EmbeddedStore, open_store
from storage.embedders import LocalEmbedder


@pytest.fixture(scope="session")
def sanitizer_embedder() -> Iterator[LocalEmbedder]:
    embedder = LocalEmbedder()
    asyncio.run(embedder.load())
    yield embedder
    embedder.close()


@pytest.fixture
async def memory_store(
    tmp_path: Path, sanitizer_embedder: LocalEmbedder
) -> AsyncIterator[EmbeddedStore]:
    opened = await open_store(tmp_path / "data", sanitizer_embedder)
    yield opened
    await opened.close()
