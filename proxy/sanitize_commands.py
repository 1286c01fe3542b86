"""What `memento-proxy sanitize FILE.jsonl` and `memento-proxy quarantine …` do (registered,
with their arguments, in proxy/sanitize_cli.py, which imports this module only when one runs).

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
from proxy.routes.admin import parse_candidates, verdict_json
from proxy.routes.memory_fields import memory_json
from proxy.settings import Settings
from proxy.tenants import PolicyFileError, PolicyRegistry
from storage.records import Scope

BATCH = 500


def sanitizer_policy(args: argparse.Namespace, *, required: bool = True) -> SanitizerPolicy:
    """The tenant's sanitizer policy; the built-in defaults when no tenant is named, or when the
    tenant has no policy file and `required` is false (reviewing a data dir on another host)."""
    if not args.tenant:
        return SanitizerPolicy()
    settings = Settings.from_env(policies_dir=args.policies)
    problem = f"no policy for tenant {args.tenant!r} in {settings.policies_dir}"
    try:
        policy = PolicyRegistry.load(settings.policies_dir).get(args.tenant)
    except PolicyFileError as error:
        policy, problem = None, f"{problem} ({error})"
    if policy is not None:
        return policy.sanitizer
    if required:
        raise SystemExit(f"{problem}; pass --policies or check the tenant name")
    print(f"{problem}; using the default sanitizer thresholds", file=sys.stderr)
    return SanitizerPolicy()


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


async def _open_store(data_dir: str | None, *, lazy: bool = False) -> Any:
    """The data dir's store. `lazy`: a local embedder loads its model only if something needs
    a vector (listing and most reviews do not)."""
    from storage import open_store
    from storage.embedders import LocalEmbedder, load_embedder

    settings = Settings.from_env(data_dir=data_dir)
    spec = settings.embedder
    embedder = LocalEmbedder() if lazy and spec == "local" else await load_embedder(spec)
    return await open_store(settings.data_dir, embedder)


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    records = asyncio.run(_list(args))
    for record in records:
        print(json.dumps(record, ensure_ascii=False))
    print(f"{len(records)} quarantined", file=sys.stderr)
    return 0


async def _list(args: argparse.Namespace) -> list[dict[str, Any]]:
    store = await _open_store(args.data_dir, lazy=True)
    try:
        records = await store.list(
            Scope(args.tenant, args.user),
            kinds=["fact", "preference", "case"],
            statuses=["quarantined"],
            limit=args.limit,
            all_users=args.user is None,
        )
        policy = sanitizer_policy(args, required=False)
        records = await lessons.expire_quarantine(store, records, policy)
        return [memory_json(r) for r in records]
    finally:
        await store.close()


def cmd_quarantine_review(args: argparse.Namespace) -> int:
    policy = sanitizer_policy(args, required=False)
    try:
        record = asyncio.run(_review(args, policy))
    except lessons.ReviewError as error:
        print(str(error), file=sys.stderr)
        return 1
    print(json.dumps(record, ensure_ascii=False))
    return 0


async def _review(args: argparse.Namespace, policy: SanitizerPolicy) -> dict[str, Any]:
    store = await _open_store(args.data_dir, lazy=True)
    try:
        record = await lessons.review(
            store, args.tenant, args.memory_id, args.decision, policy, actor="cli", note=args.note
        )
        return memory_json(record)
    finally:
        await store.close()
