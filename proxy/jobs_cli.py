"""`memento-proxy jobs …`: the write-path queue of one tenant, against a running proxy.

Like `memento-proxy memories`, it speaks to the proxy's API with a tenant key (`--key` or
MEMENTO_KEY) at `--url` (MEMENTO_URL, else http://MEMENTO_HOST:MEMENTO_PORT); both options go
before or after the action. `--json` prints the API's reply instead of text.

    memento-proxy jobs list [--state failed]   # newest first, with each job's last error
    memento-proxy jobs retry ID                # queue a failed job again
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, get_args

from proxy.cli_common import (
    ProxyClient,
    add_json_option,
    add_server_options,
    print_json,
    print_table,
    shorten,
    wants_json,
    when,
)
from storage.records import JobState

STATES = get_args(JobState)


def register(commands: Any) -> None:
    """Add the `jobs` command to the CLI's subparsers."""
    jobs = commands.add_parser(
        "jobs",
        help="list write-path jobs and retry failed ones (through a running proxy)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_server_options(jobs)
    sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    listing = sub.add_parser("list", help="newest first")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    listing.set_defaults(run=_list)

    retry = sub.add_parser("retry", help="queue a failed job again")
    retry.add_argument("job_id", type=int)
    retry.set_defaults(run=_retry)
    for parser in (listing, retry):
        add_server_options(parser)
        add_json_option(parser)


def _list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["state"] = args.state
    with ProxyClient(args) as api:
        reply = api.call("GET", "/v1/memories/jobs", params=params)
    if wants_json(args):
        print_json(reply)
        return 0
    jobs = reply.get("data") or []
    if not jobs:
        print("no jobs" + (f" in state {args.state}" if args.state else ""), file=sys.stderr)
        return 0
    print_table(
        ["ID", "STATE", "KIND", "ATTEMPTS", "CREATED", "REQUEST", "LAST ERROR"],
        [
            [
                job.get("id"),
                job.get("state"),
                job.get("kind"),
                job.get("attempts"),
                when(job.get("created_at")),
                job.get("request_id"),
                shorten(str(job.get("last_error") or "-"), 100),
            ]
            for job in jobs
        ],
    )
    return 0


def _retry(args: argparse.Namespace) -> int:
    with ProxyClient(args) as api:
        job = api.call("POST", f"/v1/memories/jobs/{args.job_id}/retry")
    if wants_json(args):
        print_json(job)
    else:
        print(f"job {job.get('id')} is {job.get('state')} again: a worker will pick it up")
    return 0
