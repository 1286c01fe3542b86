"""`memento-proxy sanitize FILE.jsonl` and `memento-proxy quarantine list|approve|reject`.

`sanitize` is the shell twin of `POST /v1/memories/check`: one JSON object per input line
(`{"text": ..., "source": "user" | "assistant" | "tool" | "import", "kind"?: ..., "id"?: ...}`),
one verdict per candidate, in order, nothing written. With `--tenant` the tenant's policy is
used; with `--data-dir` the tenant's stored memories and lessons join in (consensus, lessons),
exactly as on the write path. `quarantine` reviews the quarantined memories of a data folder
(`--data-dir`, MEMENTO_DATA_DIR, default ./data), which must exist: reading creates nothing.
Output is a table or readable text; `--json` prints one JSON document instead.

Only the arguments live here; the work (proxy/sanitize_commands.py) is imported when a command
runs, so `memento-proxy --version` does not pay for loading the storage stack.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

from proxy.cli_common import add_data_dir_option, add_json_option

SANITIZE = """\
Dry-run the sanitizer, as POST /v1/memories/check does: one JSON object per input line
({"text": ..., "source": "user" | "assistant" | "tool" | "import", "kind"?: ..., "id"?: ...}),
one verdict per candidate, in order; nothing is written. --tenant uses the tenant's policy;
--data-dir adds the tenant's stored memories and lessons (consensus, lessons), as on the write
path. A table by default; --json prints {"object": "list", "data": [verdict, ...]}."""

QUARANTINE = """\
Review the quarantined memories of a data folder (--data-dir, MEMENTO_DATA_DIR, default ./data:
the one `serve` uses), which must exist: reading creates nothing. A table or text by default;
--json prints the API's shapes."""


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        command: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module("proxy.sanitize_commands"), name
        )
        return command(args)

    return run


def register(commands: Any) -> None:
    """Add the `sanitize` and `quarantine` subcommands to the CLI's subparsers."""
    sanitize = commands.add_parser(
        "sanitize",
        help="dry-run the sanitizer on a JSONL file of candidate memories",
        description=SANITIZE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sanitize.add_argument(
        "file", help="JSONL file, one {text, source, kind?, id?} per line; - for stdin"
    )
    _common(sanitize, tenant_required=False)
    sanitize.add_argument("--user", help="the user the candidates belong to")
    add_data_dir_option(
        sanitize, "also compare with this data folder's memories and lessons (loads the embedder)"
    )
    sanitize.set_defaults(run=_lazy("cmd_sanitize"))

    quarantine = commands.add_parser(
        "quarantine",
        help="review quarantined memories (in a data folder)",
        description=QUARANTINE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = quarantine.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list quarantined memories")
    _common(listing, tenant_required=True)
    add_data_dir_option(listing)
    listing.add_argument("--user", help="only this user's memories")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    listing.set_defaults(run=_lazy("cmd_quarantine_list"))
    for decision in ("approve", "reject"):
        action = actions.add_parser(decision, help=f"{decision} a quarantined memory")
        action.add_argument("memory_id")
        _common(action, tenant_required=True)
        add_data_dir_option(action)
        action.add_argument("--note", help="why (kept with the memory's reasons)")
        action.set_defaults(run=_lazy("cmd_quarantine_review"), decision=decision)


def _common(parser: argparse.ArgumentParser, *, tenant_required: bool) -> None:
    parser.add_argument("--tenant", required=tenant_required, help="use this tenant's policy")
    parser.add_argument(
        "--policies", help="policies directory (MEMENTO_POLICIES, default ./policies)"
    )
    add_json_option(parser)
