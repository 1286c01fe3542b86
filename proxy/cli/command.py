"""The `memento-proxy` command: its parser, assembled from the command groups, and `main`.

Each group lives in its own module of this package and describes its commands as data
(proxy/cli/arguments.py): serve, migrate, policy, keys, trace, sanitize, quarantine, reindex,
migrate-from-sqlite, memories, jobs, in the order `--help` lists them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.cli.arguments import Run, register
from proxy.cli.common import EXIT_BROKEN_PIPE, EXIT_USAGE, CommandError
from proxy.cli.jobs import COMMAND as JOBS
from proxy.cli.keys import COMMAND as KEYS
from proxy.cli.memories import COMMAND as MEMORIES
from proxy.cli.migrate import COMMAND as MIGRATE
from proxy.cli.migrate_from_sqlite import COMMAND as MIGRATE_FROM_SQLITE
from proxy.cli.policy import COMMAND as POLICY
from proxy.cli.quarantine import COMMAND as QUARANTINE
from proxy.cli.reindex import COMMAND as REINDEX
from proxy.cli.sanitize import COMMAND as SANITIZE
from proxy.cli.serve import COMMAND as SERVE
from proxy.cli.trace import COMMAND as TRACE
from storage.errors import SetupError

EXIT_STATUSES = """\
Commands that read a running proxy (memories, jobs) take --url and --key (MEMENTO_URL, else
http://MEMENTO_HOST:MEMENTO_PORT; MEMENTO_KEY); commands that read a data folder (trace,
quarantine, reindex, sanitize --data-dir) take --data-dir (MEMENTO_DATA_DIR, default ./data).
Text output by default; --json prints one JSON document.

exit status: 0 ok; 1 failed (refused, not found, a problem found); 2 usage (bad arguments, no
key, invalid policies); 3 cannot reach the proxy or the data folder; 141 the output's reader
went away (| head)."""

COMMANDS = (
    SERVE,
    MIGRATE,
    POLICY,
    KEYS,
    TRACE,
    SANITIZE,
    QUARANTINE,
    REINDEX,
    MIGRATE_FROM_SQLITE,
    MEMORIES,
    JOBS,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memento-proxy",
        description="OpenAI-compatible proxy that gives LLM apps memory.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"memento-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(commands, *COMMANDS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (see proxy/cli/common.py for what each means)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    undecodable = next((each for each in arguments if not _is_text(each)), None)
    if undecodable is not None:
        # Bytes the locale cannot decode arrive as lone surrogates, which no id, name or text
        # can hold: every command would fail on them later, most with a UnicodeEncodeError.
        shown = undecodable.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        print(
            f"memento-proxy: the argument {shown!r} is not valid text in this terminal's "
            f"encoding ({sys.getfilesystemencoding()}): pass it in that encoding",
            file=sys.stderr,
        )
        return EXIT_USAGE
    args = build_parser().parse_args(arguments)
    run: Run = args.run
    name = " ".join(_command_words(args))
    try:
        status = run(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return status
    except CommandError as error:
        print(f"memento-proxy {name}: {error.message}", file=sys.stderr)
        return error.status
    except SetupError as error:  # the embedder, the data folder or the database, as configured
        print(f"memento-proxy {name}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush of
        # stdout from failing on the closed pipe too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130


def _is_text(argument: str) -> bool:
    try:
        argument.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _command_words(args: argparse.Namespace) -> list[str]:
    """`memories list` for an action of a command group, `trace` for a plain command."""
    words = [args.command]
    action = getattr(args, f"{args.command.replace('-', '_')}_command", None)
    return [*words, action] if isinstance(action, str) else words
