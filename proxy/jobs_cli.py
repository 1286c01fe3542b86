"""`memento-proxy jobs …`: the write-path queue of one tenant, against a running proxy.

Like `memento-proxy memories`, it speaks to the proxy's API with a tenant key (`--key` or
MEMENTO_KEY) at `--url` (MEMENTO_URL, default http://127.0.0.1:4000).

    memento-proxy jobs list [--state failed]   # newest first, with each job's last error
    memento-proxy jobs retry ID                # queue a failed job again
"""

from __future__ import annotations

import argparse
from typing import Any, get_args

from proxy.memory.cli import add_server_arguments, client, show
from storage.records import JobState

STATES = get_args(JobState)


def register(commands: Any) -> None:
    """Add the `jobs` command to the CLI's subparsers."""
    jobs = commands.add_parser("jobs", help="list write-path jobs and retry failed ones")
    add_server_arguments(jobs)
    sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    listing = sub.add_parser("list", help="newest first")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(run=_list)

    retry = sub.add_parser("retry", help="queue a failed job again")
    retry.add_argument("job_id", type=int)
    retry.set_defaults(run=_retry)


def _list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["state"] = args.state
    with client(args) as http:
        return show(http.get("/v1/memories/jobs", params=params))


def _retry(args: argparse.Namespace) -> int:
    with client(args) as http:
        return show(http.post(f"/v1/memories/jobs/{args.job_id}/retry"))
