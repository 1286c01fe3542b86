"""Fixtures shared by every test area: the scripted upstream and the real proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.harness import RunningProxy, write_tenant
from tests.scripted_upstream import ScriptedUpstream


@pytest.fixture(scope="session")
def scripted_upstream_server() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(scripted_upstream_server: ScriptedUpstream) -> ScriptedUpstream:
    """The scripted upstream, with no recordings or queued replies from earlier tests."""
    scripted_upstream_server.reset()
    return scripted_upstream_server


@pytest.fixture
def policies_dir(tmp_path: Path) -> Path:
    path = tmp_path / "policies"
    path.mkdir()
    return path


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., RunningProxy]]:
    """Start the real proxy: `start_proxy(policies_dir, memory=None, **settings)`."""
    with ExitStack() as stack:

        def start(policies: Path, **kwargs: Any) -> RunningProxy:
            data = tmp_path / "data"
            return stack.enter_context(RunningProxy(policies, data, **kwargs))

        yield start


__all__ = ["write_tenant"]
