"""How the product's code is laid out, where a layout is a promise:

- one HTTP client library in the product: aiohttp (the relay's); httpx only in tests and benchmarks;
- the JSON shapes the routes, the pages and the CLI share are defined once, in proxy/shapes.py,
  and how a request finds its stores once, in proxy/app_state.py;
- the CLI and the pages import no route module for a shape or a store.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = [ROOT / "proxy", ROOT / "storage"]
SHARED = {
    "memory_json": "proxy/shapes.py",
    "verdict_json": "proxy/shapes.py",
    "job_json": "proxy/shapes.py",
    "page_json": "proxy/shapes.py",
    "trace_document": "proxy/shapes.py",
    "parse_candidates": "proxy/shapes.py",
    "CLIENT_KINDS": "proxy/shapes.py",
    "memory_store_of": "proxy/app_state.py",
    "pipeline_of": "proxy/app_state.py",
    "span_store_of": "proxy/app_state.py",
}


def modules(*folders: Path) -> Iterator[tuple[str, ast.Module]]:
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def imported(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_the_product_speaks_http_through_aiohttp_only() -> None:
    users = {
        name
        for name, tree in modules(*PRODUCT)
        if any(module.split(".")[0] == "httpx" for module in imported(tree))
    }
    assert users == set()


def test_each_shared_shape_and_lookup_is_defined_once() -> None:
    defined: dict[str, list[str]] = {name: [] for name in SHARED}
    for path, tree in modules(*PRODUCT):
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [node.name]
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
            else:
                continue
            for name in names:
                if name in defined:
                    defined[name].append(path)
    assert defined == {name: [home] for name, home in SHARED.items()}


def test_the_cli_and_the_pages_import_no_route_module_for_shapes() -> None:
    allowed = {("proxy/ui/pages.py", "proxy.routes.traces")}  # its `limit` query parameter
    found = {
        (path, module)
        for path, tree in modules(ROOT / "proxy" / "cli", ROOT / "proxy" / "ui")
        for module in imported(tree)
        if module.startswith("proxy.routes")
    }
    assert found <= allowed
