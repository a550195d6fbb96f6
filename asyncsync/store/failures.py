"""``import_failures``: the records and orders that could not be imported, and their retries.

One upsert writes every failure, from a listing merge (inside its transaction), an
integrity run or a retry; the caller says whether the write counts as an attempt and
gives the clock. The retry schedule (``ultima_tentativa + base × factor^(tentativas−1)``,
at most ``max_attempts``) is computed in SQL from a :class:`~asyncsync.seams.RetryPolicy`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import asyncpg

from .. import metrics
from ..records import FailureRecord
from ..seams import DueFailure, ManualReview, RetryPolicy
from .resilience import SqlRunner
from .sqlfiles import sql


def _policy(policy: RetryPolicy) -> tuple[int, float, float]:
    return policy.max_attempts, policy.base_s, policy.factor


async def upsert(
    conn: asyncpg.Connection | asyncpg.Pool,
    account: str,
    failures: Sequence[FailureRecord],
    *,
    now: dt.datetime,
    counts_as_attempt: bool,
) -> list[int]:
    """Write ``failures`` in one statement; returns the ids whose row was written."""
    if not failures:
        return []
    latest = {f.order_id: f for f in failures}  # one row per id and statement
    rows = await conn.fetch(
        sql("failure_upsert"),
        account,
        list(latest),
        [f.error for f in latest.values()],
        [f.raw for f in latest.values()],
        now,
        counts_as_attempt,
    )
    metrics.IMPORT_FAILURES.labels(account).inc(len(rows))
    return [r["id_ordem"] for r in rows]


class PgFailureLog:
    """The ``import_failures`` rows of one account. Implements ``FailureLog``."""

    def __init__(self, sql: SqlRunner, account: str) -> None:
        self._sql = sql
        self.account = account

    async def record(
        self, failures: Sequence[FailureRecord], *, now: dt.datetime, counts_as_attempt: bool
    ) -> list[int]:
        """See :meth:`asyncsync.seams.FailureLog.record`."""
        return await self._sql.run(
            "recording import failures",
            lambda: upsert(
                self._sql.pool, self.account, failures, now=now, counts_as_attempt=counts_as_attempt
            ),
        )

    async def due(self, now: dt.datetime, policy: RetryPolicy, limit: int) -> list[DueFailure]:
        """Open failures whose next attempt is due at ``now``, oldest attempt first."""
        args = (self.account, now, *_policy(policy), limit)
        rows = await self._sql.fetch("reading due failures", "retry_due", *args)
        return [DueFailure(r["id_ordem"], r["tentativas"], r["in_mirror"]) for r in rows]

    async def pending(
        self, now: dt.datetime, policy: RetryPolicy
    ) -> tuple[int, dt.datetime | None]:
        """How many open failures wait for a later attempt, and when the next is due."""
        args = (self.account, now, *_policy(policy))
        row = await self._sql.fetchrow("reading pending failures", "retry_pending", *args)
        assert row is not None  # an aggregate always answers one row
        return int(row["n"]), row["next_due_at"]

    async def manual_review(self, policy: RetryPolicy) -> list[ManualReview]:
        """Open failures that need a person: attempts used up, or no id to fetch."""
        rows = await self._sql.fetch(
            "reading failures for manual review", "retry_manual_review", self.account,
            policy.max_attempts,
        )  # fmt: skip
        return [
            ManualReview(r["id_ordem"], r["tentativas"], r["erro"], r["ultima_tentativa"])
            for r in rows
        ]
