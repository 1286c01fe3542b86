"""`memento-proxy memories …`: the memory API from the shell, against a running proxy.

Every command speaks to the proxy's `/v1/memories` API with a tenant key (`--key` or
MEMENTO_KEY) at `--url` (MEMENTO_URL, default http://127.0.0.1:4000), so the shell sees exactly
what an application sees and the tenant boundary holds.

    memento-proxy memories list --user alice [--kind fact] [--status active]
    memento-proxy memories search --user alice "what does she drink?"
    memento-proxy memories add --user alice --kind preference "Prefers green tea."
    memento-proxy memories get ID | delete ID
    memento-proxy memories forget-user alice
    memento-proxy memories export [--user alice] > alice.jsonl
    memento-proxy memories import alice.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:4000"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """`--url` and `--key`: the running proxy a command talks to, and the tenant key it uses."""
    parser.add_argument("--url", default=os.environ.get("MEMENTO_URL", DEFAULT_URL))
    parser.add_argument("--key", default=os.environ.get("MEMENTO_KEY"), help="tenant key")


def register(commands: Any) -> None:
    """Add the `memories` command to the CLI's subparsers."""
    memories = commands.add_parser("memories", help="list, search, add and delete memories")
    add_server_arguments(memories)
    sub = memories.add_subparsers(dest="memories_command", required=True, metavar="ACTION")

    listing = sub.add_parser("list", help="newest first")
    listing.add_argument("--user")
    listing.add_argument("--kind", choices=["fact", "preference", "case", "lesson"])
    listing.add_argument("--status")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(run=_list)

    search = sub.add_parser("search", help="rank as the hot path would, with scores")
    search.add_argument("--user", required=True)
    search.add_argument("--limit", type=int, default=10)
    search.add_argument("query")
    search.set_defaults(run=_search)

    add = sub.add_parser("add", help="store one memory (sanitized, source import)")
    add.add_argument("--user")
    add.add_argument("--kind", default="fact", choices=["fact", "preference", "case"])
    add.add_argument("text")
    add.set_defaults(run=_add)

    for name, run in (("get", _get), ("delete", _delete)):
        one = sub.add_parser(name, help=f"{name} one memory by id")
        one.add_argument("memory_id")
        one.set_defaults(run=run)

    forget = sub.add_parser("forget-user", help="erase every memory of one user")
    forget.add_argument("user")
    forget.set_defaults(run=_forget_user)

    export = sub.add_parser("export", help="JSONL to stdout")
    export.add_argument("--user")
    export.set_defaults(run=_export)

    load = sub.add_parser("import", help="JSONL file (or - for stdin), one memory per line")
    load.add_argument("file")
    load.set_defaults(run=_import)


def client(args: argparse.Namespace) -> httpx.Client:
    """An HTTP client for the proxy at `args.url`, with the tenant key `args.key`."""
    if not args.key:
        raise SystemExit(
            f"memento-proxy {args.command}: give the tenant key with --key or MEMENTO_KEY"
        )
    headers = {"Authorization": f"Bearer {args.key}"}
    return httpx.Client(base_url=args.url, headers=headers, timeout=60, trust_env=False)


def show(response: httpx.Response) -> int:
    """Print a reply's JSON (or its error on stderr); the command's exit status."""
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text}}
    if response.status_code >= 400:
        message = body.get("error", {}).get("message", response.text)
        print(f"error {response.status_code}: {message}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2, ensure_ascii=False))
    return 0


def _line(memory: dict[str, Any]) -> str:
    scores = memory.get("scores")
    score = f" score={scores['score']:+.3f}" if scores else ""
    user = memory.get("user_id") or "(shared)"
    return (
        f"{memory['id']}  {memory['kind']:<10} {memory['status']:<11} {user:<12} "
        f"q={memory['q']:+.2f} trust={memory['trust']:.2f}{score}  {memory['text']}"
    )


def _print_list(response: httpx.Response) -> int:
    if response.status_code >= 400:
        return show(response)
    for memory in response.json()["data"]:
        print(_line(memory))
    return 0


def _list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in vars(args).items() if k in ("user", "kind", "status") and v}
    with client(args) as http:
        return _print_list(http.get("/v1/memories", params={**params, "limit": args.limit}))


def _search(args: argparse.Namespace) -> int:
    body = {"user": args.user, "query": args.query, "limit": args.limit}
    with client(args) as http:
        return _print_list(http.post("/v1/memories/search", json=body))


def _add(args: argparse.Namespace) -> int:
    body = {"user": args.user, "kind": args.kind, "text": args.text}
    with client(args) as http:
        return show(http.post("/v1/memories", json=body))


def _get(args: argparse.Namespace) -> int:
    with client(args) as http:
        return show(http.get(f"/v1/memories/{args.memory_id}"))


def _delete(args: argparse.Namespace) -> int:
    with client(args) as http:
        return show(http.delete(f"/v1/memories/{args.memory_id}"))


def _forget_user(args: argparse.Namespace) -> int:
    with client(args) as http:
        # Any user id is one path segment: '/', '?', '#' and '%' included.
        return show(http.delete(f"/v1/users/{quote(args.user, safe='')}/memories"))


def _export(args: argparse.Namespace) -> int:
    params = {"user": args.user} if args.user else {}
    with client(args) as http, http.stream("GET", "/v1/memories/export", params=params) as reply:
        if reply.status_code >= 400:
            reply.read()
            return show(reply)
        for chunk in reply.iter_text():
            sys.stdout.write(chunk)
    return 0


def _import(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    with client(args) as http:
        return show(http.post("/v1/memories/import", content=data))
