"""Persistence for Memento Proxy: SQLite or PostgreSQL (source of truth) and LanceDB (derived
hybrid index).

The store is imported on first use: LanceDB takes seconds to import, and importing the record
types or the protocols (as `--version`, the policy tools and the proxy's modules do) needs none
of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.api import Embedder

if TYPE_CHECKING:
    from storage.spans import SpanTable
    from storage.store import EmbeddedStore, EmbedderMismatchError

__all__ = ["EmbeddedStore", "EmbedderMismatchError", "open_span_store", "open_store"]


async def open_store(
    data_dir: str | Path, embedder: Embedder, *, move_index: bool = False
) -> EmbeddedStore:
    """The store of `data_dir` (SQLite file + LanceDB tables), ready to use; its source of
    truth in PostgreSQL instead when the process has `MEMENTO_DATABASE_URL`.

    A `storage.api.Store`: its parts are `store.memories`, `store.requests`, `store.queue` and
    `store.maintenance`; `await store.close()` at shutdown. Schema migrations run and the
    index outbox is replayed before it returns. The index is at MEMENTO_INDEX_URI, else in
    the folder; if that is not where the folder's index was, `move_index` rebuilds it there,
    else it is refused (`IndexElsewhereError`): only the proxy moves it, not a command run
    beside it without the proxy's setting.
    """
    from storage.postgres.url import database_url
    from storage.store import open_embedded_store

    return await open_embedded_store(
        data_dir, embedder, move_index=move_index, database_url=database_url()
    )


async def open_span_store(data_dir: str | Path) -> SpanTable:
    """The span store `serve` keeps traces in: the PostgreSQL database when the process has
    `MEMENTO_DATABASE_URL` (every replica then shows every trace), else
    `<data_dir>/traces.db`."""
    from storage.postgres.url import database_url
    from storage.spans import TRACES_FILE, open_sqlite_spans

    url = database_url()
    if url is not None:
        from storage.postgres.spans import open_postgres_spans

        return await open_postgres_spans(url)
    return await open_sqlite_spans(Path(data_dir) / TRACES_FILE)


def __getattr__(name: str) -> Any:
    if name in ("EmbeddedStore", "EmbedderMismatchError"):
        from storage import store

        return getattr(store, name)
    raise AttributeError(f"module 'storage' has no attribute {name!r}")
