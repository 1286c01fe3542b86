"""`memento-proxy keys new` and `memento-proxy keys hash KEY`: proxy keys and the `sha256:<hex>`
lines a tenant's policy file lists under `keys:` (the file never holds a key itself)."""

from __future__ import annotations

import argparse
import secrets

from proxy.cli.arguments import JSON, Command, Group, option
from proxy.cli.common import EXIT_USAGE, CommandError, print_result
from proxy.tenants import hash_key


def cmd_keys_hash(args: argparse.Namespace) -> int:
    key: str = args.key
    # The proxy strips what a client sends after "Bearer ": a blank key, or one with spaces
    # around it, would make a hash that no request can ever match.
    if not key.strip():
        raise CommandError("the key is empty: pass the key to hash, e.g. mp-…", EXIT_USAGE)
    if key != key.strip():
        raise CommandError(
            "the key has spaces around it, which no request can send (the proxy strips them): "
            "pass it without them",
            EXIT_USAGE,
        )
    print(hash_key(key))
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    key = f"mp-{secrets.token_urlsafe(32)}"
    return print_result(
        args,
        {"key": key, "hash": hash_key(key)},
        f"key:  {key}\n"
        f"hash: {hash_key(key)}   (add this line under keys: in the tenant's policy file)",
    )


COMMAND = Group(
    "keys",
    "create proxy keys and their hashes",
    metavar=None,
    actions=(
        Command(
            "hash",
            "print the sha256:<hex> form of a key",
            cmd_keys_hash,
            options=(option("key"),),
        ),
        Command("new", "generate a random key and print its hash", cmd_keys_new, options=(JSON,)),
    ),
)
