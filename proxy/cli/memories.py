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

An import goes to the proxy in parts of at most 1 MiB, smaller ones if the tenant's
`limits.max_body_bytes` refuses that (the API takes a body of 4 MiB by default, which an export of
a few thousand memories passes), each imported whole or not at all. Should one be refused, the
parts before it stay imported; importing the file again is safe, as lines already imported are
skipped.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, deque
from typing import Any

from proxy.cli.arguments import (
    JSON,
    SERVER,
    Command,
    Group,
    Option,
    Run,
    option,
    whole_number_in,
)
from proxy.cli.client import ProxyClient, ProxyRefused, path_segment
from proxy.cli.common import (
    CommandError,
    print_fields,
    print_json,
    print_result,
    print_table,
    read_input,
    reasons_text,
    shorten,
    wants_json,
    when,
)
from proxy.shapes import CLIENT_KINDS
from storage.records import MEMORY_KINDS, MEMORY_STATUSES

IMPORT_PART_BYTES = 1 << 20  # the most of a file one import request carries


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
    reply = ProxyClient(args).call("GET", "/v1/memories", params={**params, "limit": args.limit})
    return _print_list(reply, args, "no memories")


def _search(args: argparse.Namespace) -> int:
    body = {"user": args.user, "query": args.query, "limit": args.limit}
    reply = ProxyClient(args).call("POST", "/v1/memories/search", json=body)
    return _print_list(reply, args, "nothing found")


def _add(args: argparse.Namespace) -> int:
    body = {"user": args.user, "kind": args.kind, "text": args.text}
    return _print_memory(ProxyClient(args).call("POST", "/v1/memories", json=body), args)


def _get(args: argparse.Namespace) -> int:
    memory = ProxyClient(args).call(
        "GET", f"/v1/memories/{path_segment(args.memory_id, 'memory id')}"
    )
    return _print_memory(memory, args)


def _delete(args: argparse.Namespace) -> int:
    reply = ProxyClient(args).call(
        "DELETE", f"/v1/memories/{path_segment(args.memory_id, 'memory id')}"
    )
    return print_result(args, reply, f"deleted {reply.get('id', args.memory_id)}")


def _forget_user(args: argparse.Namespace) -> int:
    reply = ProxyClient(args).call(
        "DELETE", f"/v1/users/{path_segment(args.user, 'user')}/memories"
    )
    count = reply.get("deleted")
    text = f"deleted {count} {'memory' if count == 1 else 'memories'} of user {args.user}"
    return print_result(args, reply, text)


def _export(args: argparse.Namespace) -> int:
    params = {"user": args.user} if args.user else {}
    ProxyClient(args).each_line("/v1/memories/export", print, params)
    return 0


def _import(args: argparse.Namespace) -> int:
    client = ProxyClient(args)
    outcomes: list[dict[str, Any]] = []
    parts = deque(import_parts(read_input(args.file)))
    while parts:
        before, part = parts.popleft()
        try:
            outcome = client.call("POST", "/v1/memories/import", data=part)
        except ProxyRefused as error:
            halves = import_parts(part, len(part) // 2)
            if error.http_status == 413 and len(halves) > 1:
                # Past the tenant's limits.max_body_bytes: nothing was read, send it in halves.
                parts.extendleft(reversed([(before + n, half) for n, half in halves]))
                continue
            raise _refused_part(error, before, outcomes) from None
        for skipped in outcome.get("skipped_lines") or []:
            skipped["line"] = skipped.get("line", 0) + before  # of the file, not of the part
        outcomes.append(outcome)
    if wants_json(args):
        print_json(outcomes[0] if len(outcomes) == 1 else {"object": "list", "data": outcomes})
        return 0
    statuses: Counter[str] = Counter()
    for outcome in outcomes:
        statuses.update(outcome.get("statuses") or {})
    listed = ", ".join(f"{n} {status}" for status, n in statuses.items())
    print(
        f"imported {sum(o.get('imported', 0) for o in outcomes)} of "
        f"{sum(o.get('lines', 0) for o in outcomes)} lines"
        + (f" ({listed})" if listed else "")
        + f", skipped {sum(o.get('skipped', 0) for o in outcomes)}; "
        + ("import " if len(outcomes) == 1 else "imports ")
        + ", ".join(str(o.get("id")) for o in outcomes)
    )
    for outcome in outcomes:
        for skipped in outcome.get("skipped_lines") or []:
            print(f"  line {skipped.get('line')}: skipped, {skipped.get('reason')}")
    return 0


def import_parts(data: bytes, limit: int = IMPORT_PART_BYTES) -> list[tuple[int, bytes]]:
    """`data` cut at line ends into parts of at most `limit` bytes (a longer line is a part of
    its own), each with the number of lines of the file before it."""
    lines = data.split(b"\n")
    ends = [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    parts: list[tuple[int, bytes]] = []
    first, size = 0, 0
    for number, line in enumerate(ends):
        if number > first and size + len(line) > limit:
            parts.append((first, b"".join(ends[first:number])))
            first, size = number, 0
        size += len(line)
    parts.append((first, b"".join(ends[first:])))
    return parts


def _refused_part(error: CommandError, before: int, done: list[dict[str, Any]]) -> CommandError:
    """The refusal of the part after `before` lines, its line numbers the file's, saying what
    the parts before it imported."""
    message = re.sub(
        r"\bLine (\d+)", lambda m: f"Line {int(m[1]) + before}", error.message, count=1
    )
    if done:
        imported = sum(o.get("imported", 0) for o in done)
        message += (
            f" (the file went in parts: lines 1-{before} were imported before it, {imported} "
            "memories; import the file again once it is fixed: lines already imported are "
            "skipped)"
        )
    return CommandError(message, error.status)


def _action(name: str, run: Run, summary: str, *options: Option, json: bool = True) -> Command:
    """An action of `memories`: it takes --url and --key (and --json, unless it prints JSONL)."""
    shared = (*SERVER, JSON) if json else SERVER
    return Command(name, summary, run, options=(*shared, *options), description=summary)


COMMAND = Group(
    "memories",
    "list, search, add and delete memories (through a running proxy)",
    description=__doc__,
    options=SERVER,
    actions=(
        _action(
            "list",
            _list,
            "newest first",
            option("--user", help="only this user's memories (default: every user's)"),
            option("--kind", choices=MEMORY_KINDS),
            option("--status", choices=MEMORY_STATUSES),
            option(
                "--limit", type=whole_number_in(1, 1000), default=50, help="at most this many (50)"
            ),
        ),
        _action(
            "search",
            _search,
            "rank as the chat path would, with scores",
            option("--user", required=True),
            option(
                "--limit", type=whole_number_in(1, 200), default=10, help="at most this many (10)"
            ),
            option("query"),
        ),
        _action(
            "add",
            _add,
            "store one memory (sanitized first, with source import)",
            option("--user", help="whose memory (default: shared by the tenant)"),
            option("--kind", required=True, choices=CLIENT_KINDS),  # lessons: the sanitizer's
            option("text"),
        ),
        _action("get", _get, "show one memory by id", option("memory_id")),
        _action("delete", _delete, "delete one memory by id", option("memory_id")),
        _action("forget-user", _forget_user, "erase every memory of one user", option("user")),
        _action("export", _export, "every memory as JSONL on stdout", option("--user"), json=False),
        _action(
            "import", _import, "a JSONL file (- for stdin), one memory per line", option("file")
        ),
    ),
)
