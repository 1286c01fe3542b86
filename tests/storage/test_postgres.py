"""What is PostgreSQL's own: concurrent claimers, leases across connections, migrations run once
by concurrent migrators, a newer database refused, and the URL's password never shown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from proxy.health import Health
from storage.api import DatabaseUnavailable
from storage.postgres import connection as postgres_connection
from storage.postgres.connection import PostgresConnection, migrate_database
from storage.postgres.schema import SCHEMA_VERSION
from storage.postgres.url import redacted
from storage.sqlite import Database
from storage.sqlite.migrations import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from storage.sqlite.migrations import SchemaTooNewError
from tests.harness import free_port

SECRET = "s3cr3t-pa55"


async def _database(url: str, *, lease_s: float = 120.0) -> Database:
    return Database(await PostgresConnection.open(url), lease_s=lease_s)


async def test_two_claimers_at_once_never_take_the_same_job(postgres_url: str) -> None:
    first, second = await _database(postgres_url), await _database(postgres_url)
    try:
        queued = {
            await first.queue.enqueue("acme", "exchange", {"user_id": f"u{n}"}) for n in range(120)
        }
        taken: dict[str, list[int]] = {"a": [], "b": []}

        async def drain(name: str, db: Database) -> None:
            while jobs := await db.queue.claim(name, limit=3):
                taken[name] += [job.id for job in jobs]

        await asyncio.gather(drain("a", first), drain("b", second), drain("b", second))
        assert sorted(taken["a"] + taken["b"]) == sorted(queued)  # each job once, none lost
        assert taken["a"] and taken["b"]  # both claimed some: the claims did overlap in time
    finally:
        await first.close()
        await second.close()


async def test_a_job_whose_lease_expired_is_claimed_by_another_replica(postgres_url: str) -> None:
    dead, alive = await _database(postgres_url, lease_s=0.2), await _database(postgres_url)
    try:
        job_id = await dead.queue.enqueue("acme", "exchange", {"request_id": "r1"})
        (claimed,) = await dead.queue.claim("replica-a")  # and then replica A dies
        assert claimed.id == job_id
        assert await alive.queue.claim("replica-b") == []  # leased: not yet
        await asyncio.sleep(0.3)
        (reclaimed,) = await alive.queue.claim("replica-b")
        assert (reclaimed.id, reclaimed.attempts) == (job_id, 2)
        await alive.queue.complete(job_id)
        assert await alive.queue.pending() == 0
    finally:
        await dead.close()
        await alive.close()


async def test_concurrent_migrators_migrate_once(postgres_url: str) -> None:
    versions = await asyncio.gather(*(migrate_database(postgres_url) for _ in range(4)))
    assert versions == [SCHEMA_VERSION] * 4
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cursor = await conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1")
        steps = await cursor.fetchall()
    assert [version for version, _ in steps] == list(range(1, SCHEMA_VERSION + 1))


async def test_a_newer_database_is_refused_untouched(postgres_url: str) -> None:
    await migrate_database(postgres_url)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, 'future', 0)",
            (SCHEMA_VERSION + 1,),
        )
    with pytest.raises(SchemaTooNewError) as refused:
        await PostgresConnection.open(postgres_url)
    message = str(refused.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"up to version {SCHEMA_VERSION}" in message


def test_the_password_is_redacted_wherever_the_url_is_shown() -> None:
    url = f"postgresql://memento:{SECRET}@db.internal:5432/memento?sslmode=require"
    assert redacted(url) == "postgresql://memento:***@db.internal:5432/memento?sslmode=require"
    assert SECRET not in redacted(f"postgresql://db/memento?user=m&password={SECRET}")
    assert redacted("postgresql://db.internal/memento") == "postgresql://db.internal/memento"


async def test_an_unreachable_database_names_itself_without_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"postgresql://memento:{SECRET}@127.0.0.1:{free_port()}/memento"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception) as refused:
        await PostgresConnection.open(url)
    assert "cannot reach the database at postgresql://memento:***@127.0.0.1" in str(refused.value)
    assert SECRET not in str(refused.value)
    assert SECRET not in caplog.text


def test_serve_refuses_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql://memento:{SECRET}@127.0.0.1:{free_port()}/memento"
    done = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "--data-dir", str(tmp_path)],
        env={"MEMENTO_DATABASE_URL": url, "PATH": "/usr/bin:/bin", "PYTHONPATH": "."},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "memento-proxy serve: cannot reach the database at postgresql://memento:***@" in (
        done.stderr
    )
    assert SECRET not in done.stderr + done.stdout


async def test_the_store_names_its_database_without_the_password(
    postgres_server: object, postgres_url: str
) -> None:
    with_password = postgres_url.replace("postgres@", f"postgres:{SECRET}@")  # trust ignores it
    db = await _database(with_password)
    try:
        assert db.connection.description == f"postgresql: {redacted(with_password)}"
        assert SECRET not in db.connection.description
    finally:
        await db.close()


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ".", **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )


def test_migrate_applies_the_schema_once_and_prints_its_version(
    postgres_url: str, tmp_path: Path
) -> None:
    for _ in range(2):  # the second run finds nothing to do
        done = _cli("migrate", "--json", MEMENTO_DATABASE_URL=postgres_url)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "database": f"postgresql: {postgres_url}",
            "schema_version": SCHEMA_VERSION,
        }
    embedded = _cli("migrate", "--data-dir", str(tmp_path / "data"))
    assert embedded.returncode == 0, embedded.stderr
    assert embedded.stdout.strip() == (
        f"sqlite: {tmp_path / 'data' / 'memento.db'}: schema version {SQLITE_SCHEMA_VERSION}"
    )


async def test_a_database_out_of_reach_is_reported_until_a_query_works_again(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_connection, "_RETRY_AFTER_S", 0.2)
    health = Health()
    db = await _database(postgres_url)
    db.attach_health(health)
    try:
        assert await db.queue.pending() == 0
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            await admin.execute(  # what a server restart does to the pool's connections
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(DatabaseUnavailable):
            await db.queue.pending()
        (problem,) = health.problems()
        assert problem.component == "database" and "cannot be reached" in problem.message
        # Known out of reach, it is not asked again at once: callers go on without it, rather
        # than each waiting for a connection that may not come.
        with pytest.raises(DatabaseUnavailable):
            await db.queue.pending()
        for _ in range(50):  # tried again a moment later: the pool replaces broken connections
            await asyncio.sleep(0.1)
            with contextlib.suppress(DatabaseUnavailable):
                assert await db.queue.pending() == 0
                break
        assert health.problems() == []
    finally:
        await db.close()
