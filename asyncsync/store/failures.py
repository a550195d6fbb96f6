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
from ..records import DETAIL_NOT_FOUND, FailureRecord, detail_not_found
from ..seams import DueFailure, ManualReview, RetryPolicy
from .locks import AccountHold
from .resilience import SqlRunner
from .sqlfiles import sql

#: The attempts after which no write counts another (section 6: then a person decides).
#: The writers (a listing's merge, a details pass) take no policy: it is the default one's,
#: the only one the modes use (``asyncsync.jobs.retry.DEFAULT_POLICY``).
MAX_ATTEMPTS = RetryPolicy().max_attempts


def _policy(policy: RetryPolicy) -> tuple[int, float, float]:
    return policy.max_attempts, policy.base_s, policy.factor


async def upsert(
    conn: asyncpg.Connection,
    account: str,
    failures: Sequence[FailureRecord],
    *,
    now: dt.datetime,
    counts_as_attempt: bool,
    listed: bool = False,
) -> list[int]:
    """Write ``failures`` in one statement (two for ``listed``: the caller's transaction
    holds them together); returns the ids whose row was written (the caller counts them,
    :func:`count`, once they are committed).
    ``listed``: list items a listing read (failure_upsert.sql); their open rows take the
    newest item first, in a statement of its own, not counted as written
    (failure_relisted.sql). No row counts more than :data:`MAX_ATTEMPTS` attempts."""
    if not failures:
        return []
    latest = {f.order_id: f for f in failures}  # one row per id and statement
    if listed:  # open rows keep the list item Tiny shows now (failure_relisted.sql)
        raws = [f.raw for f in latest.values()]
        await conn.execute(sql("failure_relisted"), account, list(latest), raws)
    rows = await conn.fetch(
        sql("failure_upsert"),
        account,
        list(latest),
        [f.error for f in latest.values()],
        [f.raw for f in latest.values()],
        now,
        counts_as_attempt,
        listed,
        MAX_ATTEMPTS,
    )
    return [r["id_ordem"] for r in rows]


async def listed_not_found(
    conn: asyncpg.Connection, account: str, ids: Sequence[int]
) -> list[FailureRecord]:
    """The failures of orders whose detail answered 404 while a listing showed them (no
    deletion, then): each with the list item the mirror holds beside the answer, as an
    integrity import records one."""
    if not ids:
        return []
    rows = await conn.fetch(sql("list_items"), account, list(ids))
    items = {r["id"]: r["payload"] for r in rows}
    return [detail_not_found(order_id, items.get(order_id)) for order_id in ids]


def count(account: str, written: Sequence[int]) -> None:
    """Count failure rows written once their transaction committed: a merge rolled back
    (and tried again, or split to find the record PostgreSQL refused) wrote none."""
    metrics.IMPORT_FAILURES.labels(account).inc(len(written))


class PgFailureLog:
    """The ``import_failures`` rows of one account. Implements ``FailureLog``."""

    def __init__(self, sql: SqlRunner, account: str, fence: AccountHold | None = None) -> None:
        self._sql = sql
        self.account = account
        self._fence = fence  # as the orders' (see PgOrderStore): checked before a commit

    async def record(
        self,
        failures: Sequence[FailureRecord],
        *,
        now: dt.datetime,
        counts_as_attempt: bool,
        listed: bool = False,
    ) -> list[int]:
        """See :meth:`asyncsync.seams.FailureLog.record`. One transaction: a listing's
        two statements land together or not at all."""

        async def write() -> list[int]:
            async with self._sql.pool.acquire() as conn, conn.transaction():
                written = await upsert(
                    conn, self.account, failures, now=now,
                    counts_as_attempt=counts_as_attempt, listed=listed,
                )  # fmt: skip
                if self._fence is not None:  # a frozen run woken counts no attempt twice
                    await self._fence.check(conn)
                return written

        written: list[int] = await self._sql.run("recording import failures", write)
        count(self.account, written)
        return written

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
        args = (self.account, now, *_policy(policy), limit, only, DETAIL_NOT_FOUND)
        rows = await self._sql.fetch("reading due failures", "retry_due", *args)
        return [
            DueFailure(r["id_ordem"], r["tentativas"], r["in_mirror"], r["listed_not_found"])
            for r in rows
        ]

    async def pending(
        self, now: dt.datetime, policy: RetryPolicy
    ) -> tuple[int, dt.datetime | None, int]:
        """How many open failures wait for a later attempt, when the next is due, and how
        many are due already (left by a run's budget or stop, or Tiny could not serve)."""
        args = (self.account, now, *_policy(policy))
        row = await self._sql.fetchrow("reading pending failures", "retry_pending", *args)
        assert row is not None  # an aggregate always answers one row
        return int(row["n"]), row["next_due_at"], int(row["due_now"])

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

    async def counts(self, policy: RetryPolicy) -> FailureCounts:
        """How many failures wait for a retry, for a person, or were ignored."""
        row = await self._sql.fetchrow(
            "counting import failures", "failure_counts", self.account, policy.max_attempts
        )
        assert row is not None  # an aggregate always answers one row
        return FailureCounts(int(row["pending"]), int(row["manual_review"]), int(row["ignored"]))

    async def listing(self, state: str, policy: RetryPolicy, limit: int) -> list[FailureRow]:
        """Failures in ``state`` (pending, review, ignored, resolved, open, all)."""
        rows = await self._sql.fetch(
            "listing import failures", "failure_list", self.account, state, *_policy(policy), limit
        )
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
            for r in rows
        ]

    async def rearm(
        self, ids: Collection[int] | None, *, now: dt.datetime, policy: RetryPolicy
    ) -> list[int]:
        """Give failures (``ids``, or None: every one left for manual review) a fresh
        schedule, due at ``now``; ignored ones come back. Returns the ids rearmed."""
        only = None if ids is None else list(ids)
        rows = await self._sql.fetch(
            "rearming failures", "failure_rearm",
            self.account, only, now, policy.max_attempts, policy.base_s,
        )  # fmt: skip
        return sorted(r["id_ordem"] for r in rows)

    async def ignore(
        self, ids: Collection[int] | None, *, now: dt.datetime, policy: RetryPolicy
    ) -> list[int]:
        """Mark open failures (``ids``, or None: every one left for manual review) ignored:
        resolved, and never reopened by a listing. Returns the ids ignored."""
        only = None if ids is None else list(ids)
        rows = await self._sql.fetch(
            "ignoring failures", "failure_ignore", self.account, only, now, policy.max_attempts
        )
        return sorted(r["id_ordem"] for r in rows)


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    """``import_failures`` keeps its ``timestamp`` columns, in UTC (the pool pins it)."""
    return None if moment is None or moment.tzinfo else moment.replace(tzinfo=dt.UTC)
