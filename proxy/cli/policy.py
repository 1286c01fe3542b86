"""`memento-proxy policy check [DIR]` and `memento-proxy policy schema`: the tenant policy files.

`check` validates a policies directory (DIR, else MEMENTO_POLICIES, else ./policies: the one
`serve` reads) as `serve` loads it: exit 2 with one `file: field: reason` line per problem, else
a line per tenant (and warnings, such as keys whose variable is unset).
`schema` prints the JSON Schema of a policy file, for editors and CI.
"""

from __future__ import annotations

import argparse
import json
import sys

from proxy.cli.arguments import JSON, Command, Group, option
from proxy.cli.common import EXIT_USAGE, print_json, print_problems, settings_from_env, wants_json
from proxy.policy import Policy
from proxy.tenants import PolicyFileError, PolicyRegistry


def cmd_policy_check(args: argparse.Namespace) -> int:
    try:
        registry = PolicyRegistry.load(settings_from_env(policies_dir=args.policies).policies_dir)
    except PolicyFileError as exc:
        print_problems(exc)
        return EXIT_USAGE
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


COMMAND = Group(
    "policy",
    "check policy files or print their schema",
    metavar=None,
    actions=(
        Command(
            "check",
            "validate a policies directory",
            cmd_policy_check,
            options=(
                option(
                    "policies",
                    nargs="?",
                    help="policies directory (MEMENTO_POLICIES, default ./policies: the one "
                    "`serve` uses)",
                ),
                JSON,
            ),
        ),
        Command("schema", "print the policy JSON Schema", cmd_policy_schema),
    ),
)
