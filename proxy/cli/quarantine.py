"""`memento-proxy quarantine list|approve|reject`: review the quarantined memories of a data folder.

The folder is `--data-dir` (MEMENTO_DATA_DIR, default ./data: the one `serve` uses), which must
exist: reading creates nothing. A decision does what `POST /v1/memories/quarantine/{id}/approve`
or `/reject` does, lessons included. A table or text by default; `--json` prints the API's
shapes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from proxy.cli.arguments import Command, Group, data_dir, option, whole_number_in
from proxy.cli.common import (
    CommandError,
    data_folder,
    print_json,
    print_result,
    print_table,
    reasons_text,
    shorten,
    wants_json,
    when,
)
from proxy.cli.sanitize import database, open_store, sanitizer_policy, tenant_options
from proxy.memory import quarantine
from proxy.policy import SanitizerPolicy
from proxy.shapes import PageRequest, memory_json, page_json
from storage.api import MemoryStore
from storage.records import Scope

QUARANTINE = """\
Review the quarantined memories of a data folder (--data-dir, MEMENTO_DATA_DIR, default ./data:
the one `serve` uses), which must exist: reading creates nothing. A table or text by default;
--json prints the API's shapes."""


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    folder = data_folder(args, *database())
    page = PageRequest(limit=args.limit, after=None)
    listed = page_json(asyncio.run(_list(args, folder, page.fetch)), page)
    if wants_json(args):
        print_json(listed)  # the API's page, as `GET /v1/memories/quarantine` answers it
        return 0
    records = listed["data"]
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
    more = " (more: raise --limit to see them)" if listed["has_more"] else ""
    print(f"{len(records)} quarantined in {folder}{more}", file=sys.stderr)
    return 0


def _either(record: dict[str, Any], name: str, old_name: str) -> Any:
    """A field of the quarantine listing under its current name or the name it had."""
    return record.get(name, record.get(old_name))


async def _list(args: argparse.Namespace, folder: Path, limit: int) -> list[dict[str, Any]]:
    store = await open_store(folder, lazy=True)
    try:
        policy = await _reviewing_policy(args, store.memories)
        records = await store.memories.list(
            Scope(args.tenant, args.user),
            kinds=["fact", "preference", "case"],
            statuses=["quarantined"],
            limit=limit,
            all_users=args.user is None,
        )
        records = await quarantine.expire_quarantine(store.memories, records, policy)
        return [memory_json(r) for r in records]
    finally:
        await store.close()


def cmd_quarantine_review(args: argparse.Namespace) -> int:
    folder = data_folder(args, *database())
    try:
        record = asyncio.run(_review(args, folder))
    except quarantine.ReviewError as error:
        raise CommandError(str(error)) from None
    done = "approved" if args.decision == "approve" else "rejected"
    text = f"{done} {record['id']}: now {record['status']}  {shorten(record['text'], 60)}"
    return print_result(args, record, text)


async def _review(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    store = await open_store(folder, lazy=True)
    try:
        policy = await _reviewing_policy(args, store.memories)
        record = await quarantine.review(
            store.memories,
            args.tenant,
            args.memory_id,
            args.decision,
            policy,
            actor="cli",
            note=args.note,
        )
        return memory_json(record)
    finally:
        await store.close()


async def _reviewing_policy(args: argparse.Namespace, memories: MemoryStore) -> SanitizerPolicy:
    """The tenant's sanitizer policy. A tenant the data folder holds memories of may be reviewed
    without its policy file (a folder copied from another host): the built-in thresholds, said
    on stderr. A tenant known to neither is a mistyped name: exit 2, as `sanitize` says it."""
    stored = await memories.list(Scope(args.tenant, None), limit=1, all_users=True)
    return sanitizer_policy(args, required=not stored)


def _decision(decision: str) -> Command:
    return Command(
        decision,
        f"{decision} a quarantined memory",
        cmd_quarantine_review,
        options=(
            option("memory_id"),
            *tenant_options(required=True),
            data_dir(),
            option("--note", help="why (kept with the memory's reasons)"),
        ),
        defaults={"decision": decision},
    )


COMMAND = Group(
    "quarantine",
    "review quarantined memories (in a data folder)",
    description=QUARANTINE,
    actions=(
        Command(
            "list",
            "list quarantined memories",
            cmd_quarantine_list,
            options=(
                *tenant_options(required=True),
                data_dir(),
                option("--user", help="only this user's memories"),
                option(
                    "--limit", type=whole_number_in(1, 1000), default=100, help="at most this many"
                ),
            ),
        ),
        _decision("approve"),
        _decision("reject"),
    ),
)
