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

from proxy.cli.arguments import JSON, SERVER, Command, Group, option, whole_number_in
from proxy.cli.client import ProxyClient
from proxy.cli.common import print_json, print_result, print_table, shorten, wants_json, when
from storage.records import JobState

STATES = get_args(JobState)


def _list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["state"] = args.state
    reply = ProxyClient(args).call("GET", "/v1/memories/jobs", params=params)
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
    job = ProxyClient(args).call("POST", f"/v1/memories/jobs/{args.job_id}/retry")
    text = f"job {job.get('id')} is {job.get('state')} again: a worker will pick it up"
    return print_result(args, job, text)


COMMAND = Group(
    "jobs",
    "list write-path jobs and retry failed ones (through a running proxy)",
    description=__doc__,
    options=SERVER,
    actions=(
        Command(
            "list",
            "newest first",
            _list,
            options=(
                option("--state", choices=STATES),
                option(
                    "--limit",
                    type=whole_number_in(1, 1000),
                    default=50,
                    help="at most this many (50)",
                ),
                *SERVER,
                JSON,
            ),
        ),
        Command(
            "retry",
            "queue a failed job again",
            _retry,
            options=(option("job_id", type=int), *SERVER, JSON),
        ),
    ),
)
