"""`memento-proxy migrate-from-sqlite DATA_DIR`: move an embedded deployment's data into
PostgreSQL (MEMENTO_DATABASE_URL) and its index to MEMENTO_INDEX_URI, without loss.

Stop the proxy serving DATA_DIR first. Its SQLite database is brought to this release's schema,
then every row is copied into the PostgreSQL database, which must be new and empty (it is
migrated first). The index is then rebuilt from PostgreSQL where MEMENTO_INDEX_URI says (else in
DATA_DIR/index), from the vectors copied: nothing is re-embedded. Each table is counted in
SQLite and in PostgreSQL, and the counts are printed; any difference fails the command (exit
1). The SQLite file is left as it was: keep it until the new deployment has served a while.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from proxy.cli.arguments import JSON, Command, option
from proxy.cli.common import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    print_result,
    settings_from_env,
)


def cmd_migrate_from_sqlite(args: argparse.Namespace) -> int:
    from storage.postgres.url import DATABASE_URL_SETTING, database_url
    from storage.store import DB_FILE

    url = database_url()
    if url is None:
        raise CommandError(
            f"set {DATABASE_URL_SETTING} to the new PostgreSQL database to migrate into",
            EXIT_USAGE,
        )
    database = Path(args.source) / DB_FILE
    if not database.is_file():
        raise CommandError(
            f"no {DB_FILE} in {Path(args.source).absolute()}: nothing to migrate",
            EXIT_UNREACHABLE,
        )
    report = asyncio.run(_migrate(Path(args.source), url, args.embedder))
    lines = [f"{'table':<16} {'SQLite':>10} {'PostgreSQL':>10}"]
    lines += [f"{t:<16} {s:>10} {p:>10}" for t, (s, p) in report["tables"].items()]
    summary = (
        f"index rebuilt at {report['index']} ({report['indexed']} memories from "
        f"{report['database']}), generation {report['generation']}"
    )
    status = print_result(args, report, "\n".join([*lines, summary]))
    if report["differences"]:
        raise CommandError(f"counts differ for {', '.join(report['differences'])}")
    return status


async def _migrate(folder: Path, url: str, embedder_spec: str | None) -> dict[str, Any]:
    from storage.embedders import load_embedder
    from storage.index_location import IndexLocation
    from storage.postgres.from_sqlite import copy_from_sqlite
    from storage.sqlite import Database
    from storage.store import DB_FILE, open_embedded_store

    source = await Database.open(folder / DB_FILE)  # to this release's schema, if older
    await source.close()
    tables = await copy_from_sqlite(folder / DB_FILE, url)
    embedder = await load_embedder(embedder_spec or settings_from_env().embedder)
    location = IndexLocation.from_env(folder)
    store = await open_embedded_store(
        folder,
        embedder,
        maintenance_interval_s=0,
        database_url=url,
        index_location=location,
        move_index=True,
        rebuild_index=True,  # from the rows just copied, before the location is recorded
    )
    rebuilt = store.rebuilt
    await store.close()
    assert rebuilt is not None
    return {
        "database": store.database,  # the copy the index was rebuilt from, not the SQLite file
        "tables": {name: list(counts) for name, counts in tables.items()},
        "differences": [name for name, (before, after) in tables.items() if before != after],
        "index": location.recorded_as(folder),
        "indexed": rebuilt["records"],
        "generation": rebuilt["generation"],
    }


COMMAND = Command(
    "migrate-from-sqlite",
    "move a data folder's memories into PostgreSQL (MEMENTO_DATABASE_URL) and its index",
    cmd_migrate_from_sqlite,
    description=__doc__,
    options=(
        option("source", metavar="DATA_DIR", help="the data folder `serve` used"),
        option("--embedder", help="the embedder the memories were made with (MEMENTO_EMBEDDER)"),
        JSON,
    ),
)
