"""The store's named locks (`storage.locks.StoreLocks`) as PostgreSQL advisory locks, so they
hold across replicas on different machines, as `flock` files hold across one machine's
processes.

A lock is held by a session: each holder takes a connection of its own from the pool for the
block, and a replica that dies drops its connections, so its locks go with it (another replica
takes over then). The keys are 64-bit numbers derived from the names, in a space of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from storage.locks import LockHeld

log = logging.getLogger("memento.storage")


def lock_key(name: str) -> int:
    """The advisory lock key of the store lock `name` (a signed 64-bit number)."""
    digest = hashlib.sha256(f"memento-proxy lock {name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLocks:
    """`StoreLocks` over a pool of connections to the store's database. Within this process,
    holders of one name take turns in front of the database (an asyncio lock), so a name never
    holds more than one pooled connection at a time."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        self._turns: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        async with self._turns.setdefault(name, asyncio.Lock()), self._session(name, wait=True):
            yield

    @contextlib.asynccontextmanager
    async def try_hold(self, name: str) -> AsyncIterator[None]:
        turn = self._turns.setdefault(name, asyncio.Lock())
        if turn.locked():
            raise LockHeld(name)  # this process holds it
        async with turn, self._session(name, wait=False):
            yield

    @contextlib.asynccontextmanager
    async def _session(self, name: str, *, wait: bool) -> AsyncIterator[None]:
        key = lock_key(name)
        async with self._pool.connection() as conn:
            try:
                if wait:
                    await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                    granted = True
                else:
                    cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                    row = await cursor.fetchone()
                    granted = bool(row and row[0])
            except BaseException:
                # Given up while asking (a cancellation): the server may have granted the lock
                # all the same, so end the session rather than lend it out holding the lock.
                await conn.close()
                raise
            if not granted:
                raise LockHeld(name)
            try:
                yield
            finally:
                await _release(conn, key, name)


async def _release(conn: psycopg.AsyncConnection[Any], key: int, name: str) -> None:
    """Unlock; a connection that cannot say so is closed, so the pool never lends out a
    session still holding the lock (closing ends the session, and the lock with it)."""
    try:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    except BaseException:
        log.warning("could not release the store lock %r; closing its connection", name)
        await conn.close()
        raise
