"""`memento-proxy reindex`: rebuild the LanceDB index from SQLite, the source of truth.

Safe while the proxy serves the same data folder: the new index is built beside the served one
and replaces it only once complete (the proxy follows at its next index write or search). Only
one rebuild runs at a time; a second one exits with status 1 and says so. Also repairs a damaged
or deleted index.

Run it after switching embedders (MEMENTO_EMBEDDER): records made by another embedder are
re-embedded and the store remembers the new one. A proxy still running with the old embedder
reports the mismatch on /readyz; restart it with the new one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from proxy.settings import Settings


def register(commands: Any) -> None:
    """Add the `reindex` subcommand to the CLI's subparsers."""
    reindex = commands.add_parser(
        "reindex",
        help="rebuild the search index from SQLite (re-embeds after an embedder change)",
        description=__doc__,
    )
    reindex.add_argument("--data-dir", help="data directory (MEMENTO_DATA_DIR, default ./data)")
    reindex.add_argument(
        "--embedder",
        help="embedder to (re-)embed with: local or a litellm model (MEMENTO_EMBEDDER)",
    )
    reindex.set_defaults(run=cmd_reindex)


def cmd_reindex(args: argparse.Namespace) -> int:
    from storage.store import ReindexRunningError

    try:
        report = asyncio.run(_reindex(args.data_dir, args.embedder))
    except ReindexRunningError as exc:
        print(f"memento-proxy reindex: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


async def _reindex(data_dir: str | None, embedder_spec: str | None) -> dict[str, Any]:
    from storage.embedders import load_embedder
    from storage.store import open_embedded_store

    settings = Settings.from_env(data_dir=data_dir)
    spec = embedder_spec or settings.embedder
    embedder = await load_embedder(spec)
    store = await open_embedded_store(
        settings.data_dir, embedder, check_embedder=False, maintenance_interval_s=0
    )
    try:
        report = await store.reindex()
    finally:
        await store.close()
    return {"data_dir": str(settings.data_dir), **report}
