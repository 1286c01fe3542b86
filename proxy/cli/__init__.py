"""The `memento-proxy` command line: one module per command group, `main` in proxy/cli/command.py.

`python -m proxy.cli ARGS` runs it too (proxy/cli/__main__.py).
"""

from proxy.cli.command import build_parser, main

__all__ = ["build_parser", "main"]
