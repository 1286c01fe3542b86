"""The embedded store: SQLite (truth) + LanceDB (derived index) + an embedder, in one folder
(the index may live on object storage instead: `storage.index_location`).

It is assembled from its parts, which callers use directly: `memories` (the `MemoryStore`, in
`storage.memories`), `requests` (the request log and feedback), `responses` (the Responses API's
stored answers), `queue` (the write queue and its admin view), and `index` (the derived index
kept in step with SQLite, `storage.index_sync`); maintenance and rebuilds are
`storage.maintenance`. The store itself only opens, starts, maintains and closes them: it
satisfies `storage.api.Store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
from pathlib import Path
from typing import Any

from storage.api import Embedder, HealthReporter
from storage.errors import SetupError
from storage.index import MemoryIndex
from storage.index_location import INDEX_DIR, IndexLocation
from storage.index_settings import MaintenanceSettings
from storage.index_sync import EMBEDDER_META, IndexSync, embedder_tag
from storage.locks import StoreLocks
from storage.maintenance import IndexMaintenance
from storage.memories import Memories
from storage.relational import META_INSERT
from storage.sqlite import Database
from storage.vector_cache import VectorCacheSettings

log = logging.getLogger("memento.storage")

DB_FILE = "memento.db"
# Where the index of this data folder is (`IndexLocation.recorded_as`): an index elsewhere
# may be stale, or not this folder's at all.
INDEX_LOCATION_META = "index_location"


class EmbedderMismatchError(SetupError):
    """The stored vectors were made by another embedder than the configured one."""


class IndexElsewhereError(SetupError):
    """The data folder's index is at another location than the configured one."""


class EmbeddedStore:
    """`Store` over one data folder: memories, requests and the write queue as parts."""

    def __init__(
        self,
        db: Database,
        index: IndexSync,
        locks: StoreLocks,
        *,
        maintenance_interval_s: float,
    ) -> None:
        self.data_dir = index.data_dir
        self.db = db
        self.embedder = index.embedder
        self.index = index
        self.memories = Memories(db.connection, index, index.embedder)
        self.requests = db.requests
        self.responses = db.responses
        self.queue = db.queue
        self.locks = locks
        self.maintenance = IndexMaintenance(index, db, interval_s=maintenance_interval_s)
        self.rebuilt: dict[str, Any] | None = None  # the rebuild's report, if opening rebuilt

    @property
    def database(self) -> str:
        return self.db.connection.description

    @property
    def index_location(self) -> str:
        return self.index.index.location.uri

    def attach_health(self, health: HealthReporter) -> None:
        """Report the index's problems and a full disk (and their recovery) to `health`."""
        self.db.attach_health(health)
        self.index.attach_health(health)

    async def secret(self, name: str) -> bytes:
        key = f"secret:{name}"
        connection = self.db.connection
        value = await connection.get_meta(key)
        if value is None:  # the first process to ask makes it; the others read that one
            async with connection.transaction() as db:
                await db.execute(META_INSERT, (key, secrets.token_hex(32)))
            value = await connection.get_meta(key)
        return bytes.fromhex(str(value))

    async def start(self) -> None:
        """Replay the outbox (changes committed but not yet indexed) and start maintenance."""
        await self.index.sync()
        self.maintenance.start()

    async def close(self) -> None:
        await self.maintenance.stop()
        await self.memories.stop_loading()
        try:
            await self.index.settle()
            await self.index.sync()
        finally:
            await self.db.close()


async def open_embedded_store(
    data_dir: str | Path,
    embedder: Embedder,
    *,
    check_embedder: bool = True,
    maintenance_interval_s: float = 30.0,
    maintenance: MaintenanceSettings | None = None,
    vector_cache: VectorCacheSettings | None = None,
    lease_s: float = 120.0,
    index_location: IndexLocation | None = None,
    move_index: bool = False,
    rebuild_index: bool = False,
    database_url: str | None = None,
) -> EmbeddedStore:
    """Open (creating, migrating, replaying the outbox) the store in `data_dir`: its source of
    truth in the PostgreSQL database at `database_url` when given, else in the folder's SQLite
    file; its index at `index_location` (default: MEMENTO_INDEX_URI, else the folder's
    `index/`).

    With `check_embedder`, a store whose vectors come from another embedder is refused with a
    message that says to run `memento-proxy reindex`; the reindex command passes False. An
    index configured elsewhere than where the folder's index was is refused, unless
    `move_index` (the proxy's start) has it rebuilt there from SQLite (what was there may be
    stale). A command run beside the proxy without its setting must not move it: its rebuild
    would switch the proxy to a generation the proxy's location does not have.
    `rebuild_index` rebuilds it whatever its state (rows were just copied in); a rebuild's
    report is the store's `rebuilt`.
    """
    folder = Path(data_dir)
    location = index_location or IndexLocation.from_env(folder)
    await asyncio.to_thread(location.check)  # a missing bucket: one line, before anything
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    db = await open_database(folder, database_url, lease_s=lease_s)
    try:
        if not embedder.dimensions:
            raise ValueError(f"embedder {embedder.model_id!r} does not know its dimensions yet")
        tag = embedder_tag(embedder)
        stored = await db.connection.get_meta(EMBEDDER_META)
        here = location.recorded_as(folder)
        recorded = await db.connection.get_meta(INDEX_LOCATION_META)
        moved = recorded is not None and recorded != here
        if moved and not move_index:
            raise index_elsewhere(folder, recorded or "", location)
        index = await MemoryIndex.open(
            location,
            embedder.dimensions,
            maintenance or MaintenanceSettings.from_env(),
            generation=await db.outbox.index_generation(),
        )
        if stored != tag:
            if stored is None or await db.memories.count_memories() == 0:
                await db.connection.set_meta(EMBEDDER_META, tag)
            elif check_embedder:
                raise embedder_mismatch(folder, stored.rsplit("|", 1)[0], embedder.model_id)
        await db.memories.fill_text_hashes()  # records older than the digest: once
        await db.outbox.fill_search_texts()  # and than their stored BM25 document
        locks = db.connection.locks
        sync = IndexSync(
            folder,
            db,
            index,
            embedder,
            locks,
            vector_cache=vector_cache or VectorCacheSettings.from_env(),
        )
        store = EmbeddedStore(db, sync, locks, maintenance_interval_s=maintenance_interval_s)
        if rebuild_index:
            store.rebuilt = await store.maintenance.reindex()
        elif (index.created or moved) and stored == tag and await db.memories.count_memories():
            # The index was lost, moved or is of an older layout; it is derived data, so
            # rebuild it from the source of truth.
            log.warning(
                "search index missing or outdated at %s; rebuilding it from %s",
                location,
                db.connection.description,
            )
            store.rebuilt = await store.maintenance.reindex()
        if recorded != here:
            await db.connection.set_meta(INDEX_LOCATION_META, here)
        await store.start()
    except BaseException:
        await db.close()
        raise
    return store


async def open_database(folder: Path, database_url: str | None, *, lease_s: float) -> Database:
    """The relational half: in PostgreSQL when a URL is given, else the folder's SQLite file.
    Either is migrated to this release's schema first."""
    if database_url is None:
        return await Database.open(folder / DB_FILE, lease_s=lease_s)
    from storage.postgres.connection import PostgresConnection

    return Database(await PostgresConnection.open(database_url), lease_s=lease_s)


def check_local_embedder(
    data_dir: Path, spec: str, stored: tuple[str | None, int] | None = None
) -> None:
    """Refuse, before anything loads, a store whose memories the other precision of the
    local model embedded (`spec` is MEMENTO_EMBEDDER; other embedders are checked when the
    store opens, once they are loaded and know their ids). `stored` is the embedder tag and
    the number of memories where the caller read them (PostgreSQL); else the data folder's
    SQLite file is read."""
    from storage.embedders import LOCAL_INT8_MODEL_ID, LOCAL_MODEL_ID, LOCAL_SPECS

    if spec not in LOCAL_SPECS:
        return
    if stored is None:
        stored = _sqlite_embedder(data_dir / DB_FILE)
    tag, count = stored
    wanted = LOCAL_INT8_MODEL_ID if LOCAL_SPECS[spec] == "int8" else LOCAL_MODEL_ID
    model = tag.rsplit("|", 1)[0] if tag else None
    if model in (LOCAL_MODEL_ID, LOCAL_INT8_MODEL_ID) and model != wanted and count:
        raise embedder_mismatch(data_dir, model, wanted)


def _sqlite_embedder(database: Path) -> tuple[str | None, int]:
    """The embedder tag and number of memories of a SQLite file (None, 0 if unreadable)."""
    if not database.is_file():
        return None, 0
    try:
        with contextlib.closing(sqlite3.connect(database)) as raw:
            query = "SELECT value FROM store_meta WHERE key = ?"
            row = raw.execute(query, (EMBEDDER_META,)).fetchone()
            count = raw.execute("SELECT count(*) FROM memories").fetchone()[0]
    except sqlite3.Error:
        return None, 0  # not a store this version can read: opening it says why
    return (row[0] if row else None), int(count)


def index_elsewhere(folder: Path, recorded: str, configured: IndexLocation) -> IndexElsewhereError:
    """The refusal of an index location other than the data folder's, saying how to name it."""
    own = recorded == INDEX_DIR
    where = folder / INDEX_DIR if own else recorded
    setting = "MEMENTO_INDEX_URI unset" if own else f"MEMENTO_INDEX_URI={recorded}"
    return IndexElsewhereError(
        f"the index of {folder} is at {where}, not {configured}: run with {setting} (to "
        "move the index, restart the proxy with the new setting: it rebuilds the index there)"
    )


def embedder_mismatch(data_dir: Path, stored: str, configured: str) -> EmbedderMismatchError:
    """The refusal of a data folder whose memories `stored` embedded, with both ways forward."""
    return EmbedderMismatchError(
        f"the memories in {data_dir} were embedded with {stored!r}, but the configured "
        f"embedder is {configured!r}. Run `memento-proxy reindex --data-dir {data_dir}` to "
        f"re-embed them, or set MEMENTO_EMBEDDER={_spec_of(stored)}."
    )


def _spec_of(model_id: str) -> str:
    """The MEMENTO_EMBEDDER value that configures the embedder with this model id."""
    from storage.embedders import LOCAL_INT8_MODEL_ID, LOCAL_MODEL_ID

    return {LOCAL_MODEL_ID: "local-fp32", LOCAL_INT8_MODEL_ID: "local"}.get(model_id, model_id)
