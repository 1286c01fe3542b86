"""`memento-proxy sanitize FILE.jsonl`: dry-run the sanitizer, as `POST /v1/memories/check` does.

One JSON object per input line (`{"text": ..., "source": "user" | "assistant" | "tool" |
"import", "kind"?: ..., "id"?: ...}`), one verdict per candidate, in order, nothing written.
With `--tenant` the tenant's policy is used; with `--data-dir` the tenant's stored memories and
lessons join in (consensus, lessons), exactly as on the write path. A table by default; `--json`
prints `{"object": "list", "data": [verdict, ...]}`.

The storage stack (LanceDB) is imported only when a data folder is opened, so that
`memento-proxy --version` does not pay for loading it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from proxy.cli.arguments import JSON, Command, Option, data_dir, option
from proxy.cli.common import (
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
)
from proxy.errors import ProxyError
from proxy.memory.candidates import Candidate
from proxy.memory.model_call import TenantModels
from proxy.memory.sanitize import Sanitizer
from proxy.policy import Policy, SanitizerPolicy
from proxy.shapes import parse_candidates, verdict_json
from proxy.tenants import PolicyFileError, PolicyRegistry
from proxy.upstreams.registry import Upstreams
from storage.api import Store
from storage.records import Scope

SANITIZE = """\
Dry-run the sanitizer, as POST /v1/memories/check does: one JSON object per input line
({"text": ..., "source": "user" | "assistant" | "tool" | "import", "kind"?: ..., "id"?: ...}),
one verdict per candidate, in order; nothing is written. --tenant uses the tenant's policy;
--data-dir adds the tenant's stored memories and lessons (consensus, lessons), as on the write
path. A table by default; --json prints {"object": "list", "data": [verdict, ...]}."""

BATCH = 500


def tenant_policy(args: argparse.Namespace, *, required: bool = True) -> Policy | None:
    """The tenant's whole policy; None when no tenant is named, or when the tenant has no policy
    file and `required` is false (reviewing a data folder whose memories name the tenant, on a
    host without its policy files: `memento-proxy quarantine`)."""
    if not args.tenant:
        return None
    settings = settings_from_env(policies_dir=args.policies)
    problem = f"no policy for tenant {args.tenant!r} in {settings.policies_dir}"
    try:
        policy = PolicyRegistry.load(settings.policies_dir).get(args.tenant)
    except PolicyFileError as error:
        policy, problem = None, f"{problem} ({error})"
    if policy is not None:
        return policy
    if required:
        raise CommandError(f"{problem}; pass --policies or check the tenant name", EXIT_USAGE)
    print(f"{problem}; using the default sanitizer thresholds", file=sys.stderr)
    return None


def sanitizer_policy(args: argparse.Namespace, *, required: bool = True) -> SanitizerPolicy:
    """The tenant's sanitizer policy, or the built-in defaults (see `tenant_policy`)."""
    policy = tenant_policy(args, required=required)
    return policy.sanitizer if policy is not None else SanitizerPolicy()


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
            raise CommandError(f"line {number}: {_as_a_line(error.message)}") from None
        yield item.get("id"), candidate


def _as_a_line(message: str) -> str:
    """The check endpoint's message about `candidates[0]` as said of one input line:
    "candidates[0].source must be …" reads "'source' must be …"."""
    message = re.sub(r"candidates\[0\]\.(\w+)", r"'\1'", message)
    return message.replace("candidates[0]", "the line")


def cmd_sanitize(args: argparse.Namespace) -> int:
    policy = tenant_policy(args)
    try:
        text = read_input(args.file).decode("utf-8-sig")  # a byte order mark is not text
    except UnicodeDecodeError as error:
        raise CommandError(f"{args.file} is not UTF-8 text ({error.reason})") from None
    rows = list(read_candidates(text.splitlines()))
    given = getattr(args, "data_dir", None)
    folder = data_folder(args, *database()) if given else None
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
    policy: Policy | None,
    args: argparse.Namespace,
    folder: Path | None,
) -> list[dict[str, Any]]:
    tenant = args.tenant or "cli"
    scope = Scope(tenant, args.user)
    thresholds = policy.sanitizer if policy is not None else SanitizerPolicy()
    store = await open_store(folder) if folder is not None else None
    # The judge, when the tenant's policy names one, is asked through the tenant's model routes.
    upstreams = Upstreams(settings_from_env(policies_dir=args.policies))
    results: list[dict[str, Any]] = []
    try:
        sanitizer = Sanitizer(
            store.memories if store is not None else None,
            TenantModels(upstreams, policy) if policy is not None else None,
        )
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            candidates = [c for _, c in batch]
            verdicts = await sanitizer.assess(scope, candidates, thresholds, dry_run=True)
            for (row_id, _), verdict in zip(batch, verdicts, strict=True):
                line = verdict_json(verdict)
                results.append(line if row_id is None else {"id": row_id, **line})
    finally:
        await upstreams.aclose()
        if store is not None:
            await store.close()
    return results


async def open_store(folder: Path, *, lazy: bool = False) -> Store:
    """The data folder's store (which `data_folder` found). `lazy`: a local embedder loads its
    model only if something needs a vector (listing and most reviews do not)."""
    from storage import open_store
    from storage.api import Embedder
    from storage.embedders import LOCAL_SPECS, LocalEmbedder, load_embedder

    spec = settings_from_env().embedder
    if lazy and spec in LOCAL_SPECS:
        embedder: Embedder = LocalEmbedder(precision=LOCAL_SPECS[spec])
    else:
        embedder = await load_embedder(spec)
    return await open_store(folder, embedder)


def database() -> tuple[str, ...]:
    """The files a data folder must hold: the SQLite database (storage.store, imported only
    when needed), unless the process keeps its data in PostgreSQL (MEMENTO_DATABASE_URL)."""
    from storage.postgres.url import database_url
    from storage.store import DB_FILE

    return () if database_url() is not None else (DB_FILE,)


def tenant_options(*, required: bool) -> tuple[Option, ...]:
    """`--tenant` (whose policy), `--policies` (where policies are) and `--json`."""
    return (
        option("--tenant", required=required, help="use this tenant's policy"),
        option("--policies", help="policies directory (MEMENTO_POLICIES, default ./policies)"),
        JSON,
    )


COMMAND = Command(
    "sanitize",
    "dry-run the sanitizer on a JSONL file of candidate memories",
    cmd_sanitize,
    description=SANITIZE,
    options=(
        option("file", help="JSONL file, one {text, source, kind?, id?} per line; - for stdin"),
        *tenant_options(required=False),
        option("--user", help="the user the candidates belong to"),
        data_dir("also compare with this data folder's memories and lessons (loads the embedder)"),
    ),
)
