"""What `memento-proxy sanitize FILE.jsonl` and `memento-proxy quarantine …` do (registered,
with their arguments, in proxy/sanitize_cli.py, which imports this module only when one runs).

`sanitize` is the shell twin of `POST /v1/memories/check`: one JSON object per input line
(`{"text": ..., "source": "user" | "assistant" | "tool" | "import", "kind"?: ..., "id"?: ...}`),
one verdict per candidate, in order, nothing written. With `--tenant` the tenant's policy is
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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from proxy.cli_common import (
    EXIT_USAGE,
    CommandError,
    data_folder,
    print_json,
    print_table,
    read_input,
    reasons_text,
    settings_from_env,
    shorten,
    wants_json,
    when,
)
from proxy.errors import ProxyError
from proxy.memory import quarantine
from proxy.memory.candidates import Candidate
from proxy.memory.sanitize import Sanitizer
from proxy.policy import SanitizerPolicy
from proxy.routes.admin import parse_candidates, verdict_json
from proxy.routes.memory_fields import memory_json
from proxy.tenants import PolicyFileError, PolicyRegistry
from storage.records import Scope
from storage.store import DB_FILE

BATCH = 500


def sanitizer_policy(args: argparse.Namespace, *, required: bool = True) -> SanitizerPolicy:
    """The tenant's sanitizer policy; the built-in defaults when no tenant is named, or when the
    tenant has no policy file and `required` is false (reviewing a data dir on another host)."""
    if not args.tenant:
        return SanitizerPolicy()
    settings = settings_from_env(policies_dir=args.policies)
    problem = f"no policy for tenant {args.tenant!r} in {settings.policies_dir}"
    try:
        policy = PolicyRegistry.load(settings.policies_dir).get(args.tenant)
    except PolicyFileError as error:
        policy, problem = None, f"{problem} ({error})"
    if policy is not None:
        return policy.sanitizer
    if required:
        raise CommandError(f"{problem}; pass --policies or check the tenant name", EXIT_USAGE)
    print(f"{problem}; using the default sanitizer thresholds", file=sys.stderr)
    return SanitizerPolicy()


def read_candidates(lines: Iterable[str]) -> Iterator[tuple[Any, Candidate]]:
    """(id, candidate) per non-blank line; a bad line stops with its number and the fix."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            _, _, [candidate] = parse_candidates({"candidates": [item]})
        except ValueError as error:
            raise CommandError(f"line {number}: not valid JSON ({error})") from None
        except ProxyError as error:
            message = error.message.replace("candidates[0]", "the object")
            raise CommandError(f"line {number}: {message}") from None
        yield item.get("id"), candidate


def cmd_sanitize(args: argparse.Namespace) -> int:
    policy = sanitizer_policy(args)
    try:
        text = read_input(args.file).decode("utf-8")
    except UnicodeDecodeError as error:
        raise CommandError(f"{args.file} is not UTF-8 text ({error.reason})") from None
    rows = list(read_candidates(text.splitlines()))
    given = getattr(args, "data_dir", None)
    folder = data_folder(args, DB_FILE) if given else None
    started = time.perf_counter()
    verdicts = asyncio.run(_sanitize(rows, policy, args, folder))
    elapsed = time.perf_counter() - started
    counts = Counter(verdict["verdict"] for verdict in verdicts)
    if wants_json(args):
        print_json({"object": "list", "data": verdicts})
    else:
        print_table(
            ["ID", "VERDICT", "TRUST", "REASONS", "TEXT"],
            [
                [
                    verdict.get("id", number),
                    verdict["verdict"],
                    verdict["trust"],
                    shorten(reasons_text(verdict.get("reasons")), 60),
                    shorten(verdict["text"], 60),
                ]
                for number, verdict in enumerate(verdicts, start=1)
            ],
        )
    summary = ", ".join(f"{counts[v]} {v}" for v in ("accept", "quarantine", "reject"))
    print(f"{len(verdicts)} candidates in {elapsed:.2f} s: {summary}", file=sys.stderr)
    return 0


async def _sanitize(
    rows: list[tuple[Any, Candidate]],
    policy: SanitizerPolicy,
    args: argparse.Namespace,
    folder: Path | None,
) -> list[dict[str, Any]]:
    tenant = args.tenant or "cli"
    scope = Scope(tenant, args.user)
    store = await _open_store(folder) if folder is not None else None
    results: list[dict[str, Any]] = []
    try:
        sanitizer = Sanitizer(store)
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            verdicts = await sanitizer.assess(scope, [c for _, c in batch], policy, dry_run=True)
            for (row_id, _), verdict in zip(batch, verdicts, strict=True):
                line = verdict_json(verdict)
                results.append(line if row_id is None else {"id": row_id, **line})
    finally:
        if store is not None:
            await store.close()
    return results


async def _open_store(folder: Path, *, lazy: bool = False) -> Any:
    """The data folder's store (which `data_folder` found). `lazy`: a local embedder loads its
    model only if something needs a vector (listing and most reviews do not)."""
    from storage import open_store
    from storage.embedders import LocalEmbedder, load_embedder

    spec = settings_from_env().embedder
    embedder = LocalEmbedder() if lazy and spec == "local" else await load_embedder(spec)
    return await open_store(folder, embedder)


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    folder = data_folder(args, DB_FILE)
    records = asyncio.run(_list(args, folder))
    if wants_json(args):
        print_json({"object": "list", "data": records})
        return 0
    if records:
        print_table(
            ["ID", "KIND", "USER", "SOURCE", "TRUST", "CREATED", "REASONS", "TEXT"],
            [
                [
                    record["id"],
                    record["kind"],
                    _either(record, "user_id", "user") or "(shared)",
                    _either(record, "source_role", "source"),
                    record["trust"],
                    when(record.get("created_at")),
                    shorten(reasons_text(_either(record, "trust_reasons", "reasons")), 50),
                    shorten(record["text"], 60),
                ]
                for record in records
            ],
        )
    print(f"{len(records)} quarantined in {folder}", file=sys.stderr)
    return 0


def _either(record: dict[str, Any], name: str, old_name: str) -> Any:
    """A field of the quarantine listing under its current name or the name it had."""
    return record.get(name, record.get(old_name))


async def _list(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    store = await _open_store(folder, lazy=True)
    try:
        records = await store.list(
            Scope(args.tenant, args.user),
            kinds=["fact", "preference", "case"],
            statuses=["quarantined"],
            limit=args.limit,
            all_users=args.user is None,
        )
        policy = sanitizer_policy(args, required=False)
        records = await quarantine.expire_quarantine(store, records, policy)
        return [memory_json(r) for r in records]
    finally:
        await store.close()


def cmd_quarantine_review(args: argparse.Namespace) -> int:
    folder = data_folder(args, DB_FILE)
    policy = sanitizer_policy(args, required=False)
    try:
        record = asyncio.run(_review(args, policy, folder))
    except quarantine.ReviewError as error:
        raise CommandError(str(error)) from None
    if wants_json(args):
        print_json(record)
    else:
        done = "approved" if args.decision == "approve" else "rejected"
        print(f"{done} {record['id']}: now {record['status']}  {shorten(record['text'], 60)}")
    return 0


async def _review(
    args: argparse.Namespace, policy: SanitizerPolicy, folder: Path
) -> dict[str, Any]:
    store = await _open_store(folder, lazy=True)
    try:
        record = await quarantine.review(
            store, args.tenant, args.memory_id, args.decision, policy, actor="cli", note=args.note
        )
        return memory_json(record)
    finally:
        await store.close()
