"""`memento-proxy reindex`: rebuild the LanceDB index from the source of truth (the data
folder's SQLite, or PostgreSQL with MEMENTO_DATABASE_URL).

Safe while the proxy serves the same data folder: the new index is built beside the served one
and replaces it only once complete (the proxy follows at its next index write or search). Only
one rebuild runs at a time; a second one exits with status 1 and says so. Also repairs a damaged
or deleted index. A data folder without a database is refused (exit 3): there is nothing to
rebuild from, and a rebuild must not create an empty store where the proxy's data was expected.

It rebuilds the index where the data folder's index is: run it with the proxy's
MEMENTO_INDEX_URI (and AWS_* variables); another location is refused (exit 2), as a rebuild
there would leave the proxy's index behind.

Run it after switching embedders (MEMENTO_EMBEDDER): records made by another embedder are
re-embedded and the store remembers the new one. A proxy still running with the old embedder
reports the mismatch on /readyz; restart it with the new one.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from proxy.cli.arguments import JSON, Command, data_dir, option
from proxy.cli.common import CommandError, data_folder, print_result, settings_from_env


def cmd_reindex(args: argparse.Namespace) -> int:
    from proxy.cli.sanitize import database
    from storage.maintenance import ReindexRunningError

    folder = data_folder(args, *database())
    try:
        report = asyncio.run(_reindex(folder, args.embedder))
    except ReindexRunningError as exc:
        raise CommandError(str(exc)) from None
    return print_result(
        args,
        report,
        f"rebuilt the index at {report['index']} ({report['records']} memories from "
        f"{report['database']}; {report['reembedded']} re-embedded with {report['embedder']}), "
        f"generation {report['generation']}, in {report['seconds']:.1f} s",
    )


async def _reindex(folder: Path, embedder_spec: str | None) -> dict[str, Any]:
    from storage.embedders import load_embedder
    from storage.postgres.url import database_url
    from storage.store import open_embedded_store

    spec = embedder_spec or settings_from_env().embedder
    embedder = await load_embedder(spec)
    store = await open_embedded_store(
        folder,
        embedder,
        check_embedder=False,
        maintenance_interval_s=0,
        database_url=database_url(),
    )
    try:
        report = await store.maintenance.reindex()
    finally:
        await store.close()
    # Where the index and its source are, not just the folder: either may be elsewhere.
    where = {"index": store.index_location, "database": store.database}
    return {"data_dir": str(folder), **where, **report}


COMMAND = Command(
    "reindex",
    "rebuild the search index from the source of truth (re-embeds after an embedder change)",
    cmd_reindex,
    description=__doc__,
    options=(
        data_dir(),
        option(
            "--embedder",
            help="embedder to (re-)embed with: local or a litellm model (MEMENTO_EMBEDDER)",
        ),
        JSON,
    ),
)
