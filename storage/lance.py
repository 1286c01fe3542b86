"""LanceDB itself, for `storage.index`: connecting (imported only then), listing tables, and
the scalar indexes every table gets.

Importing lancedb costs about a second and 75 MB, so it happens on the first connection, in a
thread, when the index is first used: a write, an erasure, or the search of a scope too large to
be held in process. A new data folder, a proxy whose tenants keep no memory, and a restarted
proxy that so far only searched hot scopes (in process) serve without it.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from storage.index_location import IndexLocation
from storage.index_schema import ids_in
from storage.index_settings import MaintenanceSettings

if TYPE_CHECKING:
    import lancedb


READ_CONSISTENCY_S = 0.5  # how stale a table handle may be, at most


async def connect(
    location: IndexLocation, settings: MaintenanceSettings
) -> tuple[lancedb.Session, lancedb.AsyncConnection]:
    """LanceDB's connection to `location`, with its own caches (a Session)."""
    first = "lancedb" not in sys.modules
    lancedb = await asyncio.to_thread(importlib.import_module, "lancedb")  # off the loop
    if first:
        # Its ~90k objects live as long as the process: out of the collector's generations (as
        # the proxy's start-up does with what it loaded), or every full collection walks them
        # (90 ms a pass on the development machine).
        gc.freeze()
    session = lancedb.Session(
        index_cache_size_bytes=settings.index_cache_bytes,
        metadata_cache_size_bytes=settings.metadata_cache_bytes,
    )
    # What is given here wins over what LanceDB reads from the environment by itself
    # (`storage.index_location` says why that is not left to it).
    db = await lancedb.connect_async(
        location.uri,
        session=session,
        storage_options=location.storage_options,
        # A table handle sees the commits of other processes (replicas, the reindex command)
        # at most this long after them; by default it would never see them.
        read_consistency_interval=timedelta(seconds=READ_CONSISTENCY_S),
    )
    return session, db


async def table_names(db: lancedb.AsyncConnection) -> list[str]:
    """Every table's name (the listing comes in pages)."""
    names: list[str] = []
    page_token: str | None = None
    while True:
        listing = await db.list_tables(page_token=page_token)
        names.extend(listing.tables)
        page_token = listing.page_token
        if not page_token:
            return names


async def ensure_scalar_indexes(table: Any) -> None:
    from lancedb.index import FTS, Bitmap, BTree

    existing = {config.name for config in await table.list_indices()}
    # No tenant_id index: a table holds one tenant. scope_key still names the tenant, so the
    # prefilter would hold even if a row ever landed in the wrong table.
    for column in ("scope_key", "status", "kind"):
        if f"{column}_idx" not in existing:
            await table.create_index(column, config=Bitmap())
    if "id_idx" not in existing:  # upserts and deletes look rows up by id
        await table.create_index("id", config=BTree())
    if "search_text_idx" not in existing:
        await table.create_index("search_text", config=FTS(with_position=False))


async def holds_any(table: Any, memory_ids: Sequence[str]) -> bool:
    """Whether `table` has a row for one of these ids (their B-tree answers)."""
    for where in ids_in(memory_ids):
        if await table.count_rows(where):
            return True
    return False
