"""How a command group declares its commands, and the one function that adds them to the parser.

A group module describes its commands as data (`Command`: a name, a help line, the function it
runs and its options; `Group`: a command whose actions are commands) and `register` turns each
description into argparse parsers, so no module repeats the parser plumbing. The options every
group shares are defined once here, with the same names and defaults everywhere:

- `SERVER` (`--url`, `--key`): the running proxy a command talks to, and the tenant key it uses;
- `data_dir()` (`--data-dir`): the folder `memento-proxy serve` keeps its data in;
- `JSON` (`--json`): one JSON document instead of text.

Their defaults are SUPPRESS so that an option may be given on a command group and on its action
(`memories --url U list` and `memories list --url U`) without one default hiding the other; the
real default is worked out when the command runs (proxy/cli/common.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.numbers import parse_whole_number

Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Option:
    """One argument: its name or flags, and what `add_argument` is told about it."""

    flags: tuple[str, ...]
    settings: Mapping[str, Any]


def option(*flags: str, **settings: Any) -> Option:
    return Option(flags, settings)


@dataclass(frozen=True)
class Command:
    """A command (or a group's action): `run(args)` is its exit status."""

    name: str
    help: str
    run: Run
    options: Sequence[Option] = ()
    description: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """A command whose first argument names one of its `actions`; `options` are accepted on
    the group as well (before the action)."""

    name: str
    help: str
    actions: Sequence[Command]
    options: Sequence[Option] = ()
    description: str | None = None
    metavar: str | None = "ACTION"  # None: the actions' names, {a,b} (argparse's own default)


URL = option(
    "--url",
    default=argparse.SUPPRESS,
    help="the proxy's address, with or without /v1 (MEMENTO_URL; default "
    "http://MEMENTO_HOST:MEMENTO_PORT, i.e. http://127.0.0.1:4000)",
)
KEY = option(
    "--key",
    default=argparse.SUPPRESS,
    help="the tenant key an application sends as its API key (MEMENTO_KEY)",
)
SERVER = (URL, KEY)
JSON = option(
    "--json",
    action="store_true",
    default=argparse.SUPPRESS,
    help="print one JSON document (for scripts) instead of text",
)


def whole_number_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high` (else a usage error, exit 2, before
    anything is asked of the proxy or the store)."""

    def parse(text: str) -> int:
        value = parse_whole_number(text, low, high)
        if value is None:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its message
    return parse


def data_dir(what: str = "data folder") -> Option:
    """`--data-dir`: the folder `memento-proxy serve` keeps its data in."""
    return option(
        "--data-dir",
        default=argparse.SUPPRESS,
        help=f"{what} (MEMENTO_DATA_DIR, default ./data: the one `serve` uses)",
    )


def register(commands: Any, *specs: Command | Group) -> None:
    """Add each command and group, with its actions and options, to the CLI's subparsers."""
    for spec in specs:
        parser = _parser(commands, spec.name, spec.help, spec.description, spec.options)
        if isinstance(spec, Command):
            parser.set_defaults(run=spec.run, **spec.defaults)
            continue
        # A metavar always: argparse names a missing action by its metavar, else by its dest
        # ("the following arguments are required: keys_command").
        names = "{" + ",".join(action.name for action in spec.actions) + "}"
        actions = parser.add_subparsers(
            dest=f"{spec.name.replace('-', '_')}_command",
            required=True,
            metavar=spec.metavar or names,
        )
        for action in spec.actions:
            child = _parser(actions, action.name, action.help, action.description, action.options)
            child.set_defaults(run=action.run, **action.defaults)


def _parser(
    parent: Any, name: str, help: str, description: str | None, options: Sequence[Option]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = parent.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for each in options:
        parser.add_argument(*each.flags, **each.settings)
    return parser
