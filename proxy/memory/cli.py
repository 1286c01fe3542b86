"""`memento-proxy memories …`: the memory API from the shell, against a running proxy.

Every action speaks to the proxy's `/v1/memories` API with a tenant key (`--key` or MEMENTO_KEY)
at `--url` (MEMENTO_URL, else http://MEMENTO_HOST:MEMENTO_PORT), so the shell sees exactly what an
application sees and the tenant boundary holds. Both options go before or after the action.
Output is a table or readable text; `--json` prints the API's reply instead.

    memento-proxy memories list --user alice [--kind fact] [--status active]
    memento-proxy memories search --user alice "what does she drink?"
    memento-proxy memories add --user alice --kind preference "Prefers green tea."
    memento-proxy memories get ID | delete ID
    memento-proxy memories forget-user alice
    memento-proxy memories export [--user alice] > alice.jsonl    # JSONL, the import format
    memento-proxy memories import alice.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from proxy.cli_common import (
    ProxyClient,
    add_json_option,
    add_server_options,
    print_fields,
    print_json,
    print_table,
    read_input,
    reasons_text,
    shorten,
    wants_json,
    when,
)
from proxy.shapes import CLIENT_KINDS
from storage.records import MEMORY_KINDS, MEMORY_STATUSES

Action = Callable[[argparse.Namespace], int]


def register(commands: Any) -> None:
    """Add the `memories` command to the CLI's subparsers."""
    memories = commands.add_parser(
        "memories",
        help="list, search, add and delete memories (through a running proxy)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_server_options(memories)
    sub = memories.add_subparsers(dest="memories_command", required=True, metavar="ACTION")

    def action(
        name: str, run: Action, summary: str, *, json: bool = True
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=summary)
        add_server_options(parser)
        if json:
            add_json_option(parser)
        parser.set_defaults(run=run)
        return parser

    listing = action("list", _list, "newest first")
    listing.add_argument("--user", help="only this user's memories (default: every user's)")
    listing.add_argument("--kind", choices=MEMORY_KINDS)
    listing.add_argument("--status", choices=MEMORY_STATUSES)
    listing.add_argument("--limit", type=int, default=50, help="at most this many (50)")

    search = action("search", _search, "rank as the chat path would, with scores")
    search.add_argument("--user", required=True)
    search.add_argument("--limit", type=int, default=10, help="at most this many (10)")
    search.add_argument("query")

    add = action("add", _add, "store one memory (sanitized first, with source import)")
    add.add_argument("--user", help="whose memory (default: shared by the tenant)")
    add.add_argument("--kind", required=True, choices=CLIENT_KINDS)  # lessons: the sanitizer's
    add.add_argument("text")

    one = action("get", _get, "show one memory by id")
    one.add_argument("memory_id")
    gone = action("delete", _delete, "delete one memory by id")
    gone.add_argument("memory_id")

    forget = action("forget-user", _forget_user, "erase every memory of one user")
    forget.add_argument("user")

    export = action("export", _export, "every memory as JSONL on stdout", json=False)
    export.add_argument("--user")

    load = action("import", _import, "a JSONL file (- for stdin), one memory per line")
    load.add_argument("file")


def memory_rows(memories: list[dict[str, Any]]) -> None:
    """Memories as a table: full ids (for get and delete), then what a person scans for."""
    scored = any("scores" in memory for memory in memories)
    headings = ["ID", "KIND", "STATUS", "USER", "TRUST", *(["SCORE"] if scored else [])]
    rows = []
    for memory in memories:
        row = [
            memory.get("id"),
            memory.get("kind"),
            memory.get("status"),
            memory.get("user_id") or "(shared)",
            memory.get("trust"),
        ]
        if scored:
            row.append((memory.get("scores") or {}).get("score"))
        rows.append([*row, shorten(str(memory.get("text", "")))])
    print_table([*headings, "TEXT"], rows)


def _print_list(reply: dict[str, Any], args: argparse.Namespace, empty: str) -> int:
    if wants_json(args):
        print_json(reply)
        return 0
    data = reply.get("data") or []
    if not data:
        print(empty, file=sys.stderr)
        return 0
    memory_rows(data)
    if reply.get("has_more"):
        print("(more: raise --limit to see them)", file=sys.stderr)
    return 0


def _print_memory(memory: dict[str, Any], args: argparse.Namespace) -> int:
    if wants_json(args):
        print_json(memory)
        return 0
    print_fields(
        [
            ("id", memory.get("id")),
            ("kind", memory.get("kind")),
            ("status", memory.get("status")),
            ("user", memory.get("user_id") or "(shared by the tenant)"),
            ("source", memory.get("source_role")),
            ("trust", memory.get("trust")),
            ("reasons", reasons_text(memory.get("trust_reasons"))),
            ("created", when(memory.get("created_at"))),
            ("version", memory.get("version")),
            ("text", memory.get("text")),
        ]
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in vars(args).items() if k in ("user", "kind", "status") and v}
    with ProxyClient(args) as api:
        reply = api.call("GET", "/v1/memories", params={**params, "limit": args.limit})
    return _print_list(reply, args, "no memories")


def _search(args: argparse.Namespace) -> int:
    body = {"user": args.user, "query": args.query, "limit": args.limit}
    with ProxyClient(args) as api:
        reply = api.call("POST", "/v1/memories/search", json=body)
    return _print_list(reply, args, "nothing found")


def _add(args: argparse.Namespace) -> int:
    body = {"user": args.user, "kind": args.kind, "text": args.text}
    with ProxyClient(args) as api:
        return _print_memory(api.call("POST", "/v1/memories", json=body), args)


def _get(args: argparse.Namespace) -> int:
    with ProxyClient(args) as api:
        return _print_memory(api.call("GET", f"/v1/memories/{_segment(args.memory_id)}"), args)


def _delete(args: argparse.Namespace) -> int:
    with ProxyClient(args) as api:
        reply = api.call("DELETE", f"/v1/memories/{_segment(args.memory_id)}")
    if wants_json(args):
        print_json(reply)
    else:
        print(f"deleted {reply.get('id', args.memory_id)}")
    return 0


def _forget_user(args: argparse.Namespace) -> int:
    with ProxyClient(args) as api:
        reply = api.call("DELETE", f"/v1/users/{_segment(args.user)}/memories")
    if wants_json(args):
        print_json(reply)
    else:
        count = reply.get("deleted")
        print(f"deleted {count} {'memory' if count == 1 else 'memories'} of user {args.user}")
    return 0


def _export(args: argparse.Namespace) -> int:
    params = {"user": args.user} if args.user else {}
    with ProxyClient(args) as api, api.lines("/v1/memories/export", params=params) as lines:
        for line in lines:
            print(line)
    return 0


def _import(args: argparse.Namespace) -> int:
    data = read_input(args.file)
    with ProxyClient(args) as api:
        outcome = api.call("POST", "/v1/memories/import", content=data)
    if wants_json(args):
        print_json(outcome)
        return 0
    statuses = ", ".join(f"{n} {status}" for status, n in (outcome.get("statuses") or {}).items())
    print(
        f"imported {outcome.get('imported', 0)} of {outcome.get('lines', 0)} lines"
        + (f" ({statuses})" if statuses else "")
        + f", skipped {outcome.get('skipped', 0)}; import {outcome.get('id')}"
    )
    for skipped in outcome.get("skipped_lines") or []:
        print(f"  line {skipped.get('line')}: skipped, {skipped.get('reason')}")
    return 0


def _segment(value: str) -> str:
    """Any id is one path segment: '/', '?', '#' and '%' included."""
    return quote(value, safe="")
