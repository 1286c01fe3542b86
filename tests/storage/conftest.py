"""Storage test fixtures: the real local embedder (loaded once), a store in a temp dir."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storage import EmbeddedStore, open_store
from storage.embedders import LocalEmbedder


@pytest.fixture(scope="session")
def local_embedder() -> Iterator[LocalEmbedder]:
    """all-MiniLM-L6-v2 from the installed package; the model loads on first use."""
    embedder = LocalEmbedder()
    asyncio.run(embedder.load())
    yield embedder
    embedder.close()


@pytest.fixture
async def store(tmp_path: Path, local_embedder: LocalEmbedder) -> AsyncIterator[EmbeddedStore]:
    opened = await open_store(tmp_path / "data", local_embedder)
    yield opened
    await opened.close()
