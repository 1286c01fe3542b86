"""Fixtures shared by every test area: the scripted upstream, the real proxy, and an
S3-compatible server for the index on object storage."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from storage.postgres.url import DATABASE_URL_SETTING
from tests.harness import RunningProxy, write_tenant
from tests.postgres_server import PostgresServer, server_binaries
from tests.s3_server import S3Server
from tests.scripted_upstream import ScriptedUpstream


@pytest.fixture(scope="session")
def scripted_upstream_server() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server, started on first use and stopped at the end of the session; each test
    makes its own bucket (`s3_server.new_bucket()`)."""
    with S3Server() as server:
        yield server


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this session (skips the test when PostgreSQL is not installed)."""
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    server = PostgresServer(binaries).start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database of the session's PostgreSQL."""
    return postgres_server.create_database()


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The backend a test runs against: None for the data folder's SQLite (the default), else
    a fresh PostgreSQL database's URL. A module marked `BOTH_DATABASES`
    (tests/postgres_server.py) runs each of its tests against both."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def each_database(database_url: str | None, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Run the test against each backend: the process setting MEMENTO_DATABASE_URL set to a
    fresh PostgreSQL database, then unset (SQLite)."""
    if database_url is None:
        monkeypatch.delenv(DATABASE_URL_SETTING, raising=False)
    else:
        monkeypatch.setenv(DATABASE_URL_SETTING, database_url)
    return database_url
