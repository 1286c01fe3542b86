"""The `memento-proxy` command: serve, check policies, hash keys, and the tools registered below."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from proxy import __version__, jobs_cli, reindex_cli, sanitize_cli
from proxy.cli_common import (
    EXIT_BROKEN_PIPE,
    CommandError,
    add_json_option,
    print_json,
    settings_from_env,
    wants_json,
)
from proxy.memory import cli as memories_command
from proxy.policy import Policy
from proxy.tenants import PolicyFileError, PolicyRegistry, hash_key
from proxy.ui import terminal as trace_command

Command = Callable[[argparse.Namespace], int]

EXIT_STATUSES = """\
Commands that read a running proxy (memories, jobs) take --url and --key (MEMENTO_URL, else
http://MEMENTO_HOST:MEMENTO_PORT; MEMENTO_KEY); commands that read a data folder (trace,
quarantine, reindex, sanitize --data-dir) take --data-dir (MEMENTO_DATA_DIR, default ./data).
Text output by default; --json prints one JSON document.

exit status: 0 ok; 1 failed (refused, not found, a problem found); 2 usage (bad arguments, no
key, invalid policies); 3 cannot reach the proxy or the data folder; 141 the output's reader
went away (| head)."""


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.app import build_app
    from proxy.server import http_protocol

    settings = settings_from_env(
        host=args.host, port=args.port, policies_dir=args.policies, data_dir=args.data_dir
    )
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        app = build_app(settings)
    except PolicyFileError as exc:
        _print_problems(exc)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        loop="auto",
        http=http_protocol(settings),
        timeout_graceful_shutdown=10,
    )
    return 0


def _print_problems(exc: PolicyFileError) -> None:
    print(f"invalid policies ({len(exc.problems)} problem(s)):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def cmd_policy_check(args: argparse.Namespace) -> int:
    try:
        registry = PolicyRegistry.load(Path(args.policies))
    except PolicyFileError as exc:
        _print_problems(exc)
        return 2
    policies = [(tenant, registry.get(tenant)) for tenant in registry.tenants()]
    if wants_json(args):
        data = [
            {"tenant": tenant, "keys": len(policy.keys), "models": list(policy.models)}
            for tenant, policy in policies
            if policy is not None
        ]
        print_json({"object": "list", "data": data})
        return 0
    for tenant, policy in policies:
        assert policy is not None
        models = ", ".join(policy.models) or "no models"
        print(f"{tenant}: {len(policy.keys)} key(s); models: {models}")
    for warning in registry.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_policy_schema(args: argparse.Namespace) -> int:
    schema = Policy.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Memento Proxy tenant policy"
    print(json.dumps(schema, indent=2))
    return 0


def cmd_keys_hash(args: argparse.Namespace) -> int:
    print(hash_key(args.key))
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    key = f"mp-{secrets.token_urlsafe(32)}"
    if wants_json(args):
        print_json({"key": key, "hash": hash_key(key)})
        return 0
    print(f"key:  {key}")
    print(f"hash: {hash_key(key)}   (add this line under keys: in the tenant's policy file)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memento-proxy",
        description="OpenAI-compatible proxy that gives LLM apps memory.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"memento-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--host", help="address to bind (MEMENTO_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (MEMENTO_PORT, default 4000)")
    serve.add_argument("--policies", help="policies directory (MEMENTO_POLICIES)")
    serve.add_argument("--data-dir", help="data directory (MEMENTO_DATA_DIR)")
    serve.set_defaults(run=cmd_serve)

    policy = commands.add_parser("policy", help="check policy files or print their schema")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_commands.add_parser("check", help="validate a policies directory")
    check.add_argument("policies", nargs="?", default="policies")
    add_json_option(check)
    check.set_defaults(run=cmd_policy_check)
    schema = policy_commands.add_parser("schema", help="print the policy JSON Schema")
    schema.set_defaults(run=cmd_policy_schema)

    keys = commands.add_parser("keys", help="create proxy keys and their hashes")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    hasher = key_commands.add_parser("hash", help="print the sha256:<hex> form of a key")
    hasher.add_argument("key")
    hasher.set_defaults(run=cmd_keys_hash)
    new = key_commands.add_parser("new", help="generate a random key and print its hash")
    add_json_option(new)
    new.set_defaults(run=cmd_keys_new)
    trace_command.register(commands)
    sanitize_cli.register(commands)
    reindex_cli.register(commands)
    memories_command.register(commands)
    jobs_cli.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (see proxy/cli_common.py for what each means)."""
    args = build_parser().parse_args(argv)
    run: Command = args.run
    name = " ".join(_command_words(args))
    try:
        status = run(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return status
    except CommandError as error:
        print(f"memento-proxy {name}: {error.message}", file=sys.stderr)
        return error.status
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush of
        # stdout from failing on the closed pipe too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130


def _command_words(args: argparse.Namespace) -> list[str]:
    """`memories list` for an action of a command group, `trace` for a plain command."""
    words = [args.command]
    action = getattr(args, f"{args.command.replace('-', '_')}_command", None)
    return [*words, action] if isinstance(action, str) else words


if __name__ == "__main__":
    raise SystemExit(main())
