"""`memento-proxy trace <id>`: one request's trace as a tree in the terminal.

Reads the span store `serve` uses: the data folder's (`--data-dir`, MEMENTO_DATA_DIR, default
./data), or the PostgreSQL database of MEMENTO_DATABASE_URL when it is set; and prints what
`GET /v1/traces/{request_id}` returns, as a tree. The id is the proxy's request id (the
response's `x-request-id`) or, failing that, an id a client sent (`x-client-request-id`): every
request sent with it is printed, oldest first. `--json` prints `{"object": "list", "data":
[trace, ...]}`, each trace as the API returns it plus its tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from proxy.cli.arguments import JSON, Command, data_dir, option
from proxy.cli.common import (
    CommandError,
    data_folder,
    for_terminal,
    print_json,
    settings_from_env,
    wants_json,
)
from proxy.shapes import trace_document
from storage import open_span_store
from storage.spans import TRACES_FILE, SpanTable

# Shown in the heading already; repeating them on every span is noise.
_IDENTITY = ("memento.tenant", "memento.request_id", "memento.client_request_id", "enduser.id")
_MAX_VALUE = 300


def cmd_trace(args: argparse.Namespace) -> int:
    from storage.postgres.url import database_url

    if database_url() is None:
        folder = data_folder(args, TRACES_FILE)
    else:  # the database holds the spans; the folder need not exist
        folder = settings_from_env(data_dir=getattr(args, "data_dir", None)).data_dir
    docs = asyncio.run(_load(folder, args.request_id, args.tenant))
    if not docs:
        where = f" of tenant {args.tenant}" if args.tenant else ""
        raise CommandError(
            f"no trace for request id or client request id {args.request_id!r}{where} in {folder}"
        )
    if wants_json(args):
        print_json({"object": "list", "data": [{"tenant": t, **doc} for t, doc in docs]})
        return 0
    if docs[0][1]["request_id"] != args.request_id:
        print(f"client request id {args.request_id} names {len(docs)} request(s):")
    for tenant_id, doc in docs:
        tree = io.StringIO()
        print_tree(tenant_id, doc, tree, full=args.full)
        sys.stdout.write(for_terminal(tree.getvalue()))
    return 0


async def _load(folder: Path, given: str, tenant: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The traces `given` names: the request with that id, else every request a client sent
    it with (in `tenant` only, when given)."""
    store = await open_span_store(folder)
    try:
        tenants = [tenant] if tenant else await store.request_tenants(given)
        named = [(tenant_id, given) for tenant_id in tenants]
        docs = await _documents(store, named)
        if docs:
            return docs
        sent_with = await store.client_requests(given)
        return await _documents(store, [(t, rid) for t, rid in sent_with if tenant in (None, t)])
    finally:
        await store.close()


async def _documents(
    store: SpanTable, requests: list[tuple[str, str]]
) -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for tenant_id, request_id in requests:
        rows = await store.get_trace(tenant_id, request_id)
        if rows:
            docs.append((tenant_id, trace_document(request_id, rows)))
    return docs


def print_tree(tenant: str, doc: dict[str, Any], out: TextIO, *, full: bool = False) -> None:
    """The heading, then each span indented under its parent with its decisions."""
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(doc["start"]))
    status = "ok" if doc["status"] == "unset" else doc["status"]  # OpenTelemetry's "no error"
    out.write(
        f"request {doc['request_id']}  tenant {tenant}  user {doc['user'] or '-'}  "
        f"model {doc['model'] or '-'}  {started}  {doc['duration_ms']:.1f} ms  {status}\n"
        f"trace {doc['trace_id']}"
        + (f"  client request id {doc['client_request_id']}" if doc["client_request_id"] else "")
        + "\n"
    )
    later_shown = False
    for span in doc["spans"]:
        if span["phase"] == "write" and span["depth"] == 0 and not later_shown:
            out.write("-- later, linked to the request (write path) --\n")
            later_shown = True
        indent = "  " * span["depth"]
        status = "" if span["status"] == "unset" else f"  [{span['status']}]"
        out.write(
            f"{indent}{span['name']}  +{span['offset_ms']:.1f} ms  "
            f"{span['duration_ms']:.1f} ms{status}\n"
        )
        for key, value in sorted(span["attributes"].items()):
            if key not in _IDENTITY:
                out.write(_field(f"{indent}    ", key, value, full))
        for event in span["events"]:
            attrs = (
                json.dumps(event["attributes"], ensure_ascii=False) if event["attributes"] else ""
            )
            out.write(f"{indent}    event {event['name']} +{event['offset_ms']:.1f} ms {attrs}\n")


def _field(indent: str, key: str, value: Any, full: bool) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if not full and len(text) > _MAX_VALUE:
        text = text[:_MAX_VALUE] + f"… ({len(text)} chars; --full shows all)"
    if "\n" in text:
        body = "\n".join(f"{indent}  | {line}" for line in text.splitlines())
        return f"{indent}{key}:\n{body}\n"
    return f"{indent}{key} = {text}\n"


COMMAND = Command(
    "trace",
    "print one request's trace as a tree",
    cmd_trace,
    options=(
        option(
            "request_id",
            help="the x-request-id of the call, or an x-client-request-id it was sent with",
        ),
        data_dir(),
        option("--tenant", help="only this tenant's spans (when ids repeat)"),
        JSON,
        option("--full", action="store_true", help="do not shorten long values"),
    ),
)
