"""Every page under `/ui/`: the trace pages with the login (proxy/ui/pages.py) and the memory
pages built on them (proxy/ui/memory_pages.py)."""

from __future__ import annotations

from starlette.routing import Route

from proxy.ui import memory_pages, pages


def routes() -> list[Route]:
    return [*memory_pages.routes(), *pages.routes()]
