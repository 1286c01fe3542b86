"""Storage test fixtures: the real local embedder (loaded once), a store in a temp dir (its
source of truth in SQLite, then in a fresh PostgreSQL database: tests taking `store` run
against both), and the index's location: a folder, or a bucket of the test's own on the S3
server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from storage import EmbeddedStore
from storage.embedders import LocalEmbedder
from storage.index_location import IndexLocation
from storage.store import open_embedded_store
from tests.s3_server import S3Server


@pytest.fixture(scope="session")
def local_embedder() -> Iterator[LocalEmbedder]:
    """all-MiniLM-L6-v2 from the installed package; the model loads on first use."""
    embedder = LocalEmbedder()
    asyncio.run(embedder.load())
    yield embedder
    embedder.close()


# In the test's own event loop: a PostgreSQL store's pool and background tasks belong to the
# loop that opened it, and would hang a close run in another.
@pytest_asyncio.fixture(loop_scope="function")
async def store(
    tmp_path: Path, local_embedder: LocalEmbedder, database_url: str | None
) -> AsyncIterator[EmbeddedStore]:
    opened = await open_embedded_store(tmp_path / "data", local_embedder, database_url=database_url)
    yield opened
    await opened.close()


@pytest.fixture(params=["folder", "s3"])
def index_location(request: pytest.FixtureRequest, tmp_path: Path) -> IndexLocation:
    """Where a test's index lives: each test taking it runs once per kind of location."""
    if request.param == "folder":
        return IndexLocation.folder(tmp_path / "index")
    server: S3Server = request.getfixturevalue("s3_server")
    return server.location(server.new_bucket())
