"""The durable write queue: jobs queued by calls, claimed by workers under a lease, retried.

Implements `WriteQueue` (what the write path uses) and `JobAdmin` (what an operator sees). A
claim is a lease: a job whose worker died is claimable again once its lease expired, so a crash
loses no job. Enqueueing is group-committed with the other small writes of concurrent calls.

One user's jobs (same tenant, same user id; the jobs without a user, of the tenant-shared
memory, count as one more user of their tenant) run one at a time and in order, across every
worker and process: each consolidates against what the one before it wrote. Only a user's
oldest open job (queued, or running) is claimable, and only while none of the user's jobs runs
under a live lease; a job waiting out its retry holds back the user's later ones, so an older
statement never overwrites a newer one, while a job given up (failed) no longer does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from storage.records import JobState, QueueDepth, QueuedJob
from storage.relational import Dialect, SQLConnection, Transaction
from storage.sqlite.rows import dumps, placeholders

_MAX_FIRST = 100  # ids a claim may be asked to prefer (bounded: they are SQL parameters)
_JOB_COLUMNS = "id, tenant_id, kind, payload, state, attempts, created_at, available_at, last_error"


class SQLiteJobQueue:
    """The `jobs` table."""

    def __init__(self, connection: SQLConnection, *, lease_s: float) -> None:
        self._connection = connection
        self._lease_s = lease_s

    async def enqueue(self, tenant_id: str, kind: str, payload: dict[str, Any]) -> int:
        user_id = payload.get("user_id")
        user = user_id if isinstance(user_id, str) else None
        job = partial(_insert_job, tenant_id, kind, dumps(payload), user)
        return int(await self._connection.grouped(job))

    async def open_jobs_of(self, tenant_id: str, user_id: str) -> list[QueuedJob]:
        rows = await self._connection.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant_id = ? AND user_id = ? "
            "AND state IN ('queued', 'running') AND NOT (state = 'queued' AND attempts > 0) "
            f"ORDER BY id LIMIT {_MAX_FIRST}",
            (tenant_id, user_id),
        )
        return [_job_from_row(row) for row in rows]

    async def claim(
        self,
        worker: str,
        limit: int = 1,
        *,
        first: Sequence[int] = (),
        skip_tenants: Sequence[str] = (),
    ) -> list[QueuedJob]:
        lease = (time.time(), self._lease_s)
        skip = list(skip_tenants)
        dialect = self._connection.dialect
        async with self._connection.transaction() as db:
            if dialect.claim_turn:
                await db.execute(dialect.claim_turn)
            # The users whose jobs someone waits for go ahead of older ones, when claimable.
            claim = partial(_claim_rows, db, dialect, worker, lease)
            rows = await claim(limit, only=first, skip=skip) if first else []
            if len(rows) < limit:
                rows += await claim(limit - len(rows), skip=skip)
        return sorted(map(_job_from_row, rows), key=lambda job: job.id)

    async def complete(self, job_id: int) -> None:
        async with self._connection.transaction() as db:
            await db.execute(
                "UPDATE jobs SET state = 'done', lease_until = NULL WHERE id = ?", (job_id,)
            )

    async def fail(self, job_id: int, error: str, *, retry_in_s: float | None) -> None:
        async with self._connection.transaction() as db:
            if retry_in_s is None:
                await db.execute(
                    "UPDATE jobs SET state = 'failed', last_error = ?, lease_until = NULL "
                    "WHERE id = ?",
                    (error, job_id),
                )
            else:
                await db.execute(
                    "UPDATE jobs SET state = 'queued', last_error = ?, lease_until = NULL, "
                    "available_at = ? WHERE id = ?",
                    (error, time.time() + retry_in_s, job_id),
                )

    async def exists(self, job_id: int) -> bool:
        rows = await self._connection.fetchall("SELECT 1 FROM jobs WHERE id = ?", (job_id,))
        return bool(rows)

    async def pending(self) -> int:
        rows = await self._connection.fetchall(
            "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')"
        )
        return int(rows[0][0])

    async def depths(self) -> dict[str, QueueDepth]:
        rows = await self._connection.fetchall(
            "SELECT tenant_id, count(*), min(created_at) FROM jobs "
            "WHERE state IN ('queued', 'running') GROUP BY tenant_id"
        )
        return {
            str(tenant): QueueDepth(int(count), float(oldest)) for tenant, count, oldest in rows
        }

    async def unfinished(self, job_ids: Sequence[int]) -> set[int]:
        wanted = list(job_ids)[:_MAX_FIRST]
        if not wanted:
            return set()
        rows = await self._connection.fetchall(
            f"SELECT id FROM jobs WHERE id IN ({placeholders(len(wanted))}) "
            "AND state IN ('queued', 'running')",
            wanted,
        )
        return {int(row[0]) for row in rows}

    async def list_jobs(
        self,
        tenant_id: str,
        *,
        state: JobState | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[QueuedJob]:
        """One tenant's jobs, newest first (`state` narrows them, e.g. to the failed ones;
        `after` starts past that job id)."""
        where = ["tenant_id = ?"]
        params: list[Any] = [tenant_id]
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if after is not None:
            where.append("id < ?")
            params.append(after)
        rows = await self._connection.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [_job_from_row(row) for row in rows]

    async def retry_job(self, tenant_id: str, job_id: int) -> QueuedJob | None:
        """Queue a failed job of this tenant again, with a fresh count of attempts; its last
        error stays until it runs. None when the tenant has no failed job of that id."""
        async with (
            self._connection.transaction() as db,
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, available_at = ?, "
                "claimed_by = NULL, lease_until = NULL "
                "WHERE id = ? AND tenant_id = ? AND state = 'failed' "
                f"RETURNING {_JOB_COLUMNS}",
                (time.time(), job_id, tenant_id),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return _job_from_row(row) if row is not None else None

    async def count_jobs(self, state: JobState) -> int:
        """Jobs in `state` across every tenant (for the readiness probe)."""
        rows = await self._connection.fetchall(
            "SELECT count(*) FROM jobs WHERE state = ?", (state,)
        )
        return int(rows[0][0])

    async def prune_jobs(self, older_than: float) -> int:
        """Forget finished jobs (done) created before `older_than`; failed ones stay."""
        async with self._connection.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM jobs WHERE state = 'done' AND created_at < ?", (older_than,)
            )
            return int(cursor.rowcount)


async def _insert_job(
    tenant_id: str, kind: str, payload: str, user_id: str | None, db: Transaction
) -> int:
    now = time.time()
    cursor = await db.execute(
        "INSERT INTO jobs (tenant_id, kind, payload, user_id, state, created_at, available_at) "
        "VALUES (?, ?, ?, ?, 'queued', ?, ?) RETURNING id",  # not lastrowid: PostgreSQL has none
        (tenant_id, kind, payload, user_id, now, now),
    )
    row = await cursor.fetchone()
    return int(row[0])


async def _claim_rows(
    db: Transaction,
    dialect: Dialect,
    worker: str,
    lease: tuple[float, float],
    limit: int,
    *,
    only: Sequence[int] = (),
    skip: Sequence[str] = (),
) -> list[Any]:
    """Lease up to `limit` claimable jobs (of the users of `only`, when given; none of the
    tenants in `skip`), oldest first: queued and due, or running with an expired lease (their
    worker died); each the oldest open job of its user, whose other jobs none runs under a live
    lease, so one claim takes at most one job of a user. `lease` is (now, lease seconds).

    In PostgreSQL the rows are selected `FOR UPDATE SKIP LOCKED` (a job another transaction is
    updating is passed over, never taken twice) after the claim's turn (`Dialect.claim_turn`):
    without it, two claimers' snapshots could each miss the other's claim not yet committed,
    and with job ids committed out of order (two replicas queueing for one user at once) one
    could take the user's older job while the other takes the newer one. Within the turn, a
    user's oldest job that another transaction is updating (completing it, say) is still passed
    over rather than waited for, and the user's next job is not taken in its place: it is not
    the oldest."""
    now, lease_s = lease
    wanted = list(only)[:_MAX_FIRST]
    skipped = f"AND tenant_id NOT IN ({placeholders(len(skip))}) " if skip else ""
    awaited = (
        f"AND max(CASE WHEN id IN ({placeholders(len(wanted))}) THEN 1 ELSE 0 END) = 1 "
        if wanted
        else ""
    )
    # GROUP BY puts the jobs without a user in one group of their tenant (NULLs group together).
    heads = (
        f"SELECT min(id) FROM jobs WHERE state IN ('queued', 'running') {skipped}"
        "GROUP BY tenant_id, user_id "
        "HAVING max(CASE WHEN state = 'running' AND lease_until >= ? THEN 1 ELSE 0 END) = 0 "
        f"{awaited}"
    )
    async with db.execute(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, claimed_by = ?, "
        f"lease_until = ? WHERE id IN (SELECT id FROM jobs WHERE id IN ({heads}) AND "
        "((state = 'queued' AND available_at <= ?) OR (state = 'running' AND lease_until < ?)) "
        f"ORDER BY id LIMIT ?{dialect.claim_lock}) RETURNING {_JOB_COLUMNS}",
        (worker, now + lease_s, *skip, now, *wanted, now, now, max(0, limit)),
    ) as cursor:
        return list(await cursor.fetchall())


def _job_from_row(row: Sequence[Any]) -> QueuedJob:
    return QueuedJob(
        id=row[0],
        tenant_id=row[1],
        kind=row[2],
        payload=json.loads(row[3]),
        state=row[4],
        attempts=row[5],
        created_at=row[6],
        available_at=row[7],
        last_error=row[8],
    )
