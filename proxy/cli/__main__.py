"""`python -m proxy.cli ARGS`: the `memento-proxy` command."""

from proxy.cli.command import main

raise SystemExit(main())
