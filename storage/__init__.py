"""Persistence for Memento Proxy: SQLite (source of truth) and LanceDB (derived hybrid index)."""

from __future__ import annotations

from pathlib import Path

from storage.api import Embedder
from storage.store import EmbeddedStore, EmbedderMismatchError, open_embedded_store

__all__ = ["EmbeddedStore", "EmbedderMismatchError", "open_store"]


async def open_store(data_dir: str | Path, embedder: Embedder) -> EmbeddedStore:
    """The embedded store in `data_dir` (SQLite file + LanceDB tables), ready to use.

    One object implements MemoryStore, RequestStore and WriteQueue; `await store.close()` at
    shutdown. Schema migrations run and the index outbox is replayed before it returns.
    """
    return await open_embedded_store(data_dir, embedder)
