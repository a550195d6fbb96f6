"""What an integrity run asks of the mirror: counts, page-by-page disagreement, and the
set comparison of everything listed (a temp table per connection, emptied at commit).

Corrections are not merged here: they go through the orders store's one merge path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from ..records import OrderRecord, storable_json
from ..seams import Comparison, RetryPolicy, Sighting, StaleRow
from .orders import PgOrderStore
from .resilience import SqlRunner
from .sqlfiles import sql


class PgIntegrityStore:
    """Integrity queries of one account. Implements ``IntegrityStore``."""

    def __init__(self, sql: SqlRunner, orders: PgOrderStore) -> None:
        self._sql = sql
        self._orders = orders
        self.account = orders.account

    async def counts(self) -> tuple[dict[int, int], dict[int, int]]:
        """Mirror rows by status, and open failures of absent orders by their listed status
        (the API lists and counts those; the retry mode owns them)."""
        mirror = await self._orders.counts_by_status()
        tracked = await self._sql.fetch(
            "counting failures", "integrity_tracked_counts", self.account
        )
        return mirror, {int(r["situacao"]): int(r["n"]) for r in tracked}

    async def tracked(self) -> list[int]:
        """Ids of the orders absent from the mirror whose import failure is open."""
        rows = await self._sql.fetch("reading failures", "integrity_tracked_ids", self.account)
        return [row["id_ordem"] for row in rows]

    async def disagreeing(self, records: Sequence[OrderRecord]) -> set[int]:
        """Ids of ``records`` the mirror lacks, holds in another status, or flags deleted."""
        if not records:
            return set()
        ids, statuses = [r.id for r in records], [r.situacao for r in records]
        rows = await self._sql.fetch(
            "comparing a page", "integrity_candidates", self.account, ids, statuses
        )
        return {row["id"] for row in rows}

    async def compare(
        self,
        seen: Sequence[Sighting],
        *,
        now: dt.datetime,
        policy: RetryPolicy,
        complete: bool,
    ) -> Comparison:
        """Stage every sighting and compare the sets; ``unlisted`` only when ``complete``."""
        return await self._sql.run(
            "comparing with the mirror", lambda: self._compare(seen, now, policy, complete)
        )

    async def _compare(
        self, seen: Sequence[Sighting], now: dt.datetime, policy: RetryPolicy, complete: bool
    ) -> Comparison:
        rows = [(s.id, s.situacao, s.hash, s.observed_at) for s in seen]
        args = (policy.max_attempts, policy.base_s, policy.factor)
        async with self._sql.pool.acquire() as conn, conn.transaction():
            await conn.execute(sql("integrity_stage"))
            await conn.copy_records_to_table("integrity_listed", records=rows)
            missing = await conn.fetch(sql("integrity_missing"), self.account, now, *args)
            stale = await conn.fetch(sql("integrity_stale"), self.account)
            unlisted = await conn.fetch(sql("integrity_unlisted"), self.account) if complete else []
        return Comparison(
            missing=tuple((m["id"], m["due"]) for m in missing),
            stale=tuple(
                StaleRow(s["id"], s["old"], s["new"], s["possibly_deleted"]) for s in stale
            ),
            unlisted=tuple(u["id"] for u in unlisted),
        )

    async def correct(self, records: Sequence[OrderRecord]) -> set[int]:
        """Through the orders store's merge, forced (see :meth:`PgOrderStore.correct`)."""
        return await self._orders.correct(records)

    async def chain_history(self, ids: Sequence[int]) -> None:
        """Imported orders whose history outlived their row (``integrity_chain_history``)."""
        if ids:
            await self._sql.execute(
                "chaining the history of imported orders", "integrity_chain_history",
                self.account, list(ids),
            )  # fmt: skip

    async def flag_deleted(self, ids: Sequence[int], *, now: dt.datetime) -> list[int]:
        """Flag ``ids`` possibly_deleted (never delete) and resolve their open failures at
        ``now``, as a 404 merged with details does (``PgOrderStore.merge_details``): one at
        manual review asked a person about an order gone from Tiny. Returns the ids newly
        flagged."""
        if not ids:
            return []

        async def flag() -> list[int]:
            async with self._sql.pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(sql("integrity_flag_deleted"), self.account, list(ids))
                await conn.execute(sql("resolve_failures"), self.account, list(ids), now)
            return sorted(row["id"] for row in rows)

        flagged: list[int] = await self._sql.run("flagging unlisted orders", flag)
        return flagged

    async def save_run(
        self,
        started_at: dt.datetime,
        finished_at: dt.datetime,
        consistent: bool | None,
        report: str,
    ) -> None:
        """One ``integrity_runs`` row; ``consistent`` None (NULL): unknown, a run stopped
        before it found anything."""
        await self._sql.execute(
            "saving the integrity run", "integrity_save_run",
            self.account, started_at, finished_at, consistent, storable_json(report),
        )  # fmt: skip
