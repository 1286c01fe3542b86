"""`memento-proxy sanitize FILE.jsonl` and `memento-proxy quarantine list|approve|reject`.

`sanitize` is the shell twin of `POST /v1/memories/check`: one JSON object per input line
(`{"text": ..., "source": "user" | "assistant" | "tool" | "import", "kind"?: ..., "id"?: ...}`),
one verdict per output line, in order, nothing written. With `--tenant` the tenant's policy is
used; with `--data-dir` the tenant's stored memories and lessons join in (consensus, lessons),
exactly as on the write path. `quarantine` reviews quarantined memories in a data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from proxy.errors import ProxyError
from proxy.memory import lessons
from proxy.memory.candidates import Candidate
from proxy.memory.sanitize import Sanitizer
from proxy.policy import SanitizerPolicy
from proxy.routes.admin import parse_candidates, record_json, verdict_json
from proxy.settings import Settings
from proxy.tenants import PolicyRegistry
from storage.records import Scope

BATCH = 500


def register(commands: Any) -> None:
    """Add the `sanitize` and `quarantine` subcommands to the CLI's subparsers."""
    sanitize = commands.add_parser(
        "sanitize", help="dry-run the sanitizer on a JSONL file of candidate memories"
    )
    sanitize.add_argument(
        "file", help="JSONL file, one {text, source, kind?, id?} per line; - for stdin"
    )
    _common(sanitize, tenant_required=False)
    sanitize.add_argument("--user", help="the user the candidates belong to")
    sanitize.add_argument(
        "--data-dir",
        help="also compare with this data dir's memories and lessons (loads the embedder)",
    )
    sanitize.set_defaults(run=cmd_sanitize)

    quarantine = commands.add_parser("quarantine", help="review quarantined memories")
    actions = quarantine.add_subparsers(dest="quarantine_command", required=True)
    listing = actions.add_parser("list", help="list quarantined memories")
    _common(listing, tenant_required=True)
    listing.add_argument("--data-dir", help="data directory (MEMENTO_DATA_DIR, default ./data)")
    listing.add_argument("--user", help="only this user's memories")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(run=cmd_quarantine_list)
    for decision in ("approve", "reject"):
        action = actions.add_parser(decision, help=f"{decision} a quarantined memory")
        action.add_argument("memory_id")
        _common(action, tenant_required=True)
        action.add_argument("--data-dir", help="data directory (MEMENTO_DATA_DIR, default ./data)")
        action.add_argument("--note", help="why (kept with the memory's reasons)")
        action.set_defaults(run=cmd_quarantine_review, decision=decision)


def _common(parser: argparse.ArgumentParser, *, tenant_required: bool) -> None:
    parser.add_argument("--tenant", required=tenant_required, help="use this tenant's policy")
    parser.add_argument(
        "--policies", help="policies directory (MEMENTO_POLICIES, default ./policies)"
    )


def sanitizer_policy(args: argparse.Namespace) -> SanitizerPolicy:
    """The tenant's sanitizer policy, or the built-in defaults when no tenant is named."""
    if not args.tenant:
        return SanitizerPolicy()
    settings = Settings.from_env(policies_dir=args.policies)
    policy = PolicyRegistry.load(settings.policies_dir).get(args.tenant)
    if policy is None:
        raise SystemExit(
            f"no tenant {args.tenant!r} in {settings.policies_dir}; "
            "pass --policies or check the tenant name"
        )
    return policy.sanitizer


def read_candidates(lines: TextIO) -> Iterator[tuple[Any, Candidate]]:
    """(id, candidate) per non-blank line; a bad line stops with its number and the fix."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            _, _, [candidate] = parse_candidates({"candidates": [item]})
        except ValueError as error:
            raise SystemExit(f"line {number}: not valid JSON ({error})") from None
        except ProxyError as error:
            message = error.message.replace("candidates[0]", "the object")
            raise SystemExit(f"line {number}: {message}") from None
        yield item.get("id"), candidate


def cmd_sanitize(args: argparse.Namespace) -> int:
    policy = sanitizer_policy(args)
    if args.file == "-":
        rows = list(read_candidates(sys.stdin))
    else:
        with Path(args.file).open(encoding="utf-8") as handle:
            rows = list(read_candidates(handle))
    started = time.perf_counter()
    counts = asyncio.run(_sanitize(rows, policy, args, sys.stdout))
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    summary = ", ".join(f"{counts[v]} {v}" for v in ("accept", "quarantine", "reject"))
    print(f"{total} candidates in {elapsed:.2f} s: {summary}", file=sys.stderr)
    return 0


async def _sanitize(
    rows: list[tuple[Any, Candidate]],
    policy: SanitizerPolicy,
    args: argparse.Namespace,
    out: TextIO,
) -> Counter[str]:
    tenant = args.tenant or "cli"
    scope = Scope(tenant, args.user)
    store = await _open_store(args.data_dir) if args.data_dir else None
    counts: Counter[str] = Counter()
    try:
        sanitizer = Sanitizer(store)
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            verdicts = await sanitizer.assess(scope, [c for _, c in batch], policy, dry_run=True)
            for (row_id, _), verdict in zip(batch, verdicts, strict=True):
                counts[verdict.verdict] += 1
                line = verdict_json(verdict)
                if row_id is not None:
                    line = {"id": row_id, **line}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
    finally:
        if store is not None:
            await store.close()
    return counts


async def _open_store(data_dir: str | None) -> Any:
    from storage import open_store
    from storage.embedders import load_embedder

    settings = Settings.from_env(data_dir=data_dir)
    embedder = await load_embedder(os.environ.get("MEMENTO_EMBEDDER", "local"))
    return await open_store(settings.data_dir, embedder)


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    records = asyncio.run(_list(args))
    for record in records:
        print(json.dumps(record, ensure_ascii=False))
    print(f"{len(records)} quarantined", file=sys.stderr)
    return 0


async def _list(args: argparse.Namespace) -> list[dict[str, Any]]:
    store = await _open_store(args.data_dir)
    try:
        records = await store.list(
            Scope(args.tenant, args.user),
            kinds=["fact", "preference", "case"],
            statuses=["quarantined"],
            limit=args.limit,
            all_users=args.user is None,
        )
        return [record_json(r) for r in records]
    finally:
        await store.close()


def cmd_quarantine_review(args: argparse.Namespace) -> int:
    policy = sanitizer_policy(args)
    try:
        record = asyncio.run(_review(args, policy))
    except lessons.ReviewError as error:
        print(str(error), file=sys.stderr)
        return 1
    print(json.dumps(record, ensure_ascii=False))
    return 0


async def _review(args: argparse.Namespace, policy: SanitizerPolicy) -> dict[str, Any]:
    store = await _open_store(args.data_dir)
    try:
        record = await lessons.review(
            store, args.tenant, args.memory_id, args.decision, policy, actor="cli", note=args.note
        )
        return record_json(record)
    finally:
        await store.close()
