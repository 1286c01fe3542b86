"""`memento-proxy serve`: run the proxy with the settings of the environment and these options."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from proxy.cli.arguments import Command, option
from proxy.cli.common import EXIT_USAGE, create_data_folder, print_problems, settings_from_env
from proxy.tenants import PolicyFileError
from storage.errors import whole_number


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.server import configure_logging, serve
    from proxy.tenants import PolicyRegistry, refused_keys
    from storage.postgres.url import database_url

    settings = settings_from_env(
        host=args.host,
        port=args.port,
        policies_dir=args.policies,
        data_dir=args.data_dir,
        processes=args.processes,
    )
    configure_logging(settings)
    check_storage_settings(settings.data_dir, settings.embedder)
    try:  # read again by each serving process; here to answer a mistake before serving
        PolicyRegistry.load(settings.policies_dir, refused_keys=refused_keys(settings.host))
    except PolicyFileError as exc:
        print_problems(exc)
        return EXIT_USAGE
    create_data_folder(settings.data_dir)
    if database_url() is None:
        asyncio.run(_open_sqlite_files(settings.data_dir))
    return serve(settings)


def check_storage_settings(data_dir: Path, embedder: str) -> None:
    """What would otherwise fail in the middle of start-up, under a traceback: the storage
    settings, the embedder's name (MEMENTO_EMBEDDER), the index's location
    (MEMENTO_INDEX_URI: its bucket exists and answers), a data folder written by the other
    precision of the local model (the upgrade to the int8 default), and a PostgreSQL database
    (MEMENTO_DATABASE_URL) that cannot be reached or is newer than this release; its pending
    schema steps are applied here, under the migration lock. Raises `SetupError`, reported as
    one line. (The data folder's SQLite files are opened once the folder exists.)"""
    from storage.embedders import check_embedder_spec, embed_threads
    from storage.index_location import IndexLocation
    from storage.index_settings import MaintenanceSettings
    from storage.postgres.url import database_url
    from storage.store import check_local_embedder
    from storage.vector_cache import VectorCacheSettings

    VectorCacheSettings.from_env()
    MaintenanceSettings.from_env()
    embed_threads()
    whole_number("MEMENTO_DATABASE_POOL_SIZE", 10)
    check_embedder_spec(embedder)  # as `reindex --embedder` does, not in the app's start-up
    IndexLocation.from_env(data_dir).check()
    url = database_url()
    if url is None:
        check_local_embedder(data_dir, embedder)
        return
    from storage.index_sync import EMBEDDER_META
    from storage.postgres.connection import meta_and_memories, migrate_database

    asyncio.run(migrate_database(url))
    check_local_embedder(data_dir, embedder, asyncio.run(meta_and_memories(url, EMBEDDER_META)))


async def _open_sqlite_files(data_dir: Path) -> None:
    """Open (creating or migrating) the folder's database and span store, as each serving
    process will: a SetupError for a file that is newer than this release or not SQLite."""
    from storage import open_span_store
    from storage.sqlite import Database
    from storage.store import DB_FILE

    await (await Database.open(data_dir / DB_FILE)).close()
    await (await open_span_store(data_dir)).close()


COMMAND = Command(
    "serve",
    "run the proxy",
    cmd_serve,
    options=(
        option("--host", help="address to bind (MEMENTO_HOST, default 127.0.0.1)"),
        option("--port", type=int, help="port (MEMENTO_PORT, default 4000)"),
        option("--policies", help="policies directory (MEMENTO_POLICIES)"),
        option("--data-dir", help="data directory (MEMENTO_DATA_DIR)"),
        option(
            "--processes",
            type=int,
            help="serving processes sharing the port (MEMENTO_PROCESSES, default 1)",
        ),
    ),
)
