"""`memento-proxy migrate`: bring the database to this release's schema, then exit.

With MEMENTO_DATABASE_URL, the PostgreSQL database there: the pending schema steps are applied
under an advisory lock, so replicas or a migration job started at once migrate it once (the
others wait for it and find nothing to do). Without it, the data folder's SQLite file (created
if missing, as `serve` would). A database of a newer release is refused, untouched, with both
versions named (exit 2); so is a database that cannot be reached. `serve` applies the same steps
under the same lock when it starts: running `migrate` first only makes it a step of its own.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from proxy.cli.arguments import JSON, Command, data_dir
from proxy.cli.common import create_data_folder, print_result, settings_from_env


def cmd_migrate(args: argparse.Namespace) -> int:
    from storage.postgres.url import database_url, redacted

    url = database_url()
    if url is not None:
        from storage.postgres.connection import migrate_database

        version = asyncio.run(migrate_database(url))
        where = f"postgresql: {redacted(url)}"
    else:
        from storage.store import DB_FILE

        folder = settings_from_env(data_dir=getattr(args, "data_dir", None)).data_dir
        create_data_folder(folder)
        path = folder / DB_FILE
        version = asyncio.run(_migrate_sqlite(path))
        where = f"sqlite: {path}"
    report: dict[str, Any] = {"database": where, "schema_version": version}
    return print_result(args, report, f"{where}: schema version {version}")


async def _migrate_sqlite(path: Any) -> int:
    from storage.sqlite import Database
    from storage.sqlite.migrations import SCHEMA_VERSION

    await (await Database.open(path)).close()
    return SCHEMA_VERSION


COMMAND = Command(
    "migrate",
    "apply pending schema steps to the database (PostgreSQL or the data folder's SQLite)",
    cmd_migrate,
    description=__doc__,
    options=(data_dir("data folder whose SQLite is migrated without MEMENTO_DATABASE_URL"), JSON),
)
