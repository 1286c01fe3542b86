"""A real PostgreSQL for the tests, started from the Debian server binaries (`initdb`, `pg_ctl`)
in a temporary folder on a free loopback port, and a fresh database for each test.

The binaries are looked up on PATH, else in the newest /usr/lib/postgresql/*/bin (`make
postgresql` installs them on CI). PostgreSQL refuses to run as root, so as root the server runs
as `nobody`, owning its temporary folder. Durability settings are off (`fsync`): the tests are
about behaviour, and a lost test database costs nothing.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.harness import free_port

_UNPRIVILEGED = "nobody"

# Runs each test of a module (`pytestmark = BOTH_DATABASES`) with its source of truth in
# SQLite, then in PostgreSQL: the `database_url` fixture (tests/conftest.py) is None, then a
# fresh database's URL.
BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def server_binaries() -> Path | None:
    """The folder holding `initdb` and `pg_ctl`, or None when PostgreSQL is not installed."""
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    return versions[-1].parent if versions else None


class PostgresServer:
    """One PostgreSQL cluster for a test session: `start`, `create_database` per test, `stop`."""

    def __init__(self, binaries: Path) -> None:
        self._bin = binaries
        self._folder = Path(tempfile.mkdtemp(prefix="memento-pg-"))
        self._data = self._folder / "data"
        self.port = free_port()
        self._names = itertools.count(1)
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam(_UNPRIVILEGED)
            os.chown(self._folder, self._user.pw_uid, self._user.pw_gid)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        user = self._user
        subprocess.run(
            [str(self._bin / command[0]), *command[1:]],
            check=True,
            capture_output=True,
            cwd=self._folder,
            user=user.pw_uid if user is not None else None,
            group=user.pw_gid if user is not None else None,
            extra_groups=[] if user is not None else None,
            env={**os.environ, "LC_ALL": "C"},
        )

    def start(self, *, durable: bool = False) -> PostgresServer:
        """Start the server; `durable` keeps PostgreSQL's own durability settings (benchmarks
        compare it with SQLite's synchronous=FULL), else they are off (tests)."""
        self._run(
            "initdb", "-D", str(self._data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        options = f"-h 127.0.0.1 -p {self.port} -k {self._folder} -c max_connections=200"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self._data),
            "-l", str(self._folder / "server.log"), "-o", options,
        )  # fmt: skip
        return self

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"memento_test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-D", str(self._data), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)
