"""``import_failures``: the records and orders that could not be imported, and their retries.

One upsert writes every failure, from a listing merge (inside its transaction), an
integrity run or a retry; the caller says whether the write counts as an attempt and
gives the clock. The retry schedule (``ultima_tentativa + base × factor^(tentativas−1)``,
at most ``max_attempts``) is computed in SQL from a :class:`~asyncsync.seams.RetryPolicy`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

import asyncpg

from .. import metrics
from ..overview import FailureCounts, FailureRow
from ..records import FailureRecord
from ..seams import DueFailure, ManualReview, RetryPolicy
from .database import guarded, sql


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

    def __init__(self, pool: asyncpg.Pool, account: str) -> None:
        self._pool = pool
        self.account = account

    async def record(
        self, failures: Sequence[FailureRecord], *, now: dt.datetime, counts_as_attempt: bool
    ) -> list[int]:
        """See :meth:`asyncsync.seams.FailureLog.record`."""
        written = upsert(
            self._pool, self.account, failures, now=now, counts_as_attempt=counts_as_attempt
        )
        return await guarded(written, "recording import failures")  # type: ignore[no-any-return]

    async def due(
        self,
        now: dt.datetime,
        policy: RetryPolicy,
        limit: int,
        ids: Collection[int] | None = None,
    ) -> list[DueFailure]:
        """Open failures whose next attempt is due at ``now`` (only ``ids`` when given),
        oldest attempt first."""
        only = None if ids is None else list(ids)
        query = self._pool.fetch(sql("retry_due"), self.account, now, *_policy(policy), limit, only)
        rows = await guarded(query, "reading due failures")
        return [DueFailure(r["id_ordem"], r["tentativas"], r["in_mirror"]) for r in rows]

    async def pending(
        self, now: dt.datetime, policy: RetryPolicy
    ) -> tuple[int, dt.datetime | None]:
        """How many open failures wait for a later attempt, and when the next is due."""
        query = self._pool.fetchrow(sql("retry_pending"), self.account, now, *_policy(policy))
        row = await guarded(query, "reading pending failures")
        return int(row["n"]), row["next_due_at"]

    async def manual_review(self, policy: RetryPolicy) -> list[ManualReview]:
        """Open failures that need a person: attempts used up, or no id to fetch."""
        query = self._pool.fetch(sql("retry_manual_review"), self.account, policy.max_attempts)
        rows = await guarded(query, "reading failures for manual review")
        return [
            ManualReview(r["id_ordem"], r["tentativas"], r["erro"], r["ultima_tentativa"])
            for r in rows
        ]

    async def counts(self, policy: RetryPolicy) -> FailureCounts:
        """How many failures wait for a retry, for a person, or were ignored."""
        query = self._pool.fetchrow(sql("failure_counts"), self.account, policy.max_attempts)
        row = await guarded(query, "counting import failures")
        return FailureCounts(int(row["pending"]), int(row["manual_review"]), int(row["ignored"]))

    async def listing(self, state: str, policy: RetryPolicy, limit: int) -> list[FailureRow]:
        """Failures in ``state`` (pending, review, ignored, resolved, open, all)."""
        query = self._pool.fetch(sql("failure_list"), self.account, state, *_policy(policy), limit)
        return [
            FailureRow(
                r["id_ordem"],
                r["state"],
                r["tentativas"],
                r["erro"],
                _utc(r["primeira_tentativa"]),
                _utc(r["ultima_tentativa"]),
                r["next_due_at"],
            )
            for r in await guarded(query, "listing import failures")
        ]

    async def rearm(
        self, ids: Collection[int] | None, *, now: dt.datetime, policy: RetryPolicy
    ) -> list[int]:
        """Give failures (``ids``, or None: every one left for manual review) a fresh
        schedule, due at ``now``; ignored ones come back. Returns the ids rearmed."""
        only = None if ids is None else list(ids)
        query = self._pool.fetch(
            sql("failure_rearm"), self.account, only, now, policy.max_attempts, policy.base_s
        )
        return sorted(r["id_ordem"] for r in await guarded(query, "rearming failures"))

    async def ignore(
        self, ids: Collection[int] | None, *, now: dt.datetime, policy: RetryPolicy
    ) -> list[int]:
        """Mark open failures (``ids``, or None: every one left for manual review) ignored:
        resolved, and never reopened by a listing. Returns the ids ignored."""
        only = None if ids is None else list(ids)
        query = self._pool.fetch(
            sql("failure_ignore"), self.account, only, now, policy.max_attempts
        )
        return sorted(r["id_ordem"] for r in await guarded(query, "ignoring failures"))


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    """``import_failures`` keeps the seed's ``timestamp`` columns, in UTC (the pool pins it)."""
    return None if moment is None or moment.tzinfo else moment.replace(tzinfo=dt.UTC)
