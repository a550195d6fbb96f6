"""The PostgreSQL sink: COPY into staging tables, then merge, one transaction a batch.

The merge follows the figures in PERF_NOTES: **hashes first**. A batch ships
``(id, hash, observed_at)`` by binary COPY, the database answers which ids are new or
changed, and only those rows' payloads are copied and merged — so a re-sync of unchanged
orders writes nothing. A batch known to be all new is copied straight into the target
tables. History rows, import failures and checkpoints commit in the same transaction as
the rows they describe, so a crash never leaves one without the other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any

import asyncpg

from . import metrics
from .database import guarded, sql
from .records import DetailRecord, FailureRecord, OrderRecord
from .seams import Checkpoint, MergeStats

ORDER_COLUMNS = (
    "id", "numero", "situacao", "data_emissao", "data_prevista", "cliente_id",
    "cliente_nome", "valor", "payload", "list_hash", "observed_at",
)  # fmt: skip


def order_row(r: OrderRecord) -> tuple[Any, ...]:
    """The ``ORDER_COLUMNS`` of a record, for COPY into ``stage_orders``."""
    return (
        r.id, r.numero, r.situacao, r.data_emissao, r.data_prevista, r.cliente_id,
        r.cliente_nome, r.valor, r.payload, r.hash, r.observed_at,
    )  # fmt: skip


#: Rows written before the first ANALYZE of the mirror during a load; the threshold then
#: doubles (like autovacuum's scale factor), so a load of N rows analyzes about log2(N)
#: times. Without fresh statistics the hashes-first lookup turns into a hash join over the
#: whole table for every batch (bench/bench_merge.py: 56 ms instead of 7 ms a batch at
#: 100k rows, worse as it grows); autovacuum would analyze eventually, but a first load
#: outruns it, or it is off.
ANALYZE_FIRST = 20_000


def latest_per_id(records: Sequence[OrderRecord]) -> list[OrderRecord]:
    """One record per id, the most recently observed (a listing can repeat an order)."""
    best: dict[int, OrderRecord] = {}
    for r in records:
        seen = best.get(r.id)
        if seen is None or r.observed_at >= seen.observed_at:
            best[r.id] = r
    return list(best.values())


class PgSink:
    """The mirror of one account. Implements ``OrderSink``."""

    def __init__(self, pool: asyncpg.Pool, account: str, open_statuses: Sequence[int]) -> None:
        self._pool = pool
        self.account = account
        self._open = list(open_statuses)
        self._written_since_analyze = 0
        self._analyze_threshold = ANALYZE_FIRST

    async def merge_listed(
        self,
        records: Sequence[OrderRecord],
        failures: Sequence[FailureRecord] = (),
        checkpoints: Sequence[Checkpoint] = (),
    ) -> MergeStats:
        """Merge one batch of listed orders, its failures and checkpoints atomically."""
        return await guarded(self._merge_listed(records, failures, checkpoints), "merging orders")  # type: ignore[no-any-return]

    async def _merge_listed(
        self,
        records: Sequence[OrderRecord],
        failures: Sequence[FailureRecord],
        checkpoints: Sequence[Checkpoint],
    ) -> MergeStats:
        unique = latest_per_id(records)
        stats = MergeStats(received=len(records), failures=len(failures))
        async with self._pool.acquire() as conn, conn.transaction():
            if unique:
                await conn.copy_records_to_table(
                    "stage_hash", records=[(r.id, r.hash, r.observed_at) for r in unique]
                )
                found = await conn.fetch(sql("find_changed"), self.account)
                new_ids = {row["id"] for row in found if row["is_new"]}
                todo = {row["id"] for row in found}
                rows = [order_row(r) for r in unique if r.id in todo]
                if rows and len(new_ids) == len(todo):
                    await self._insert_new(conn, rows)
                    stats.status_changes = len(rows)
                elif rows:
                    await conn.copy_records_to_table(
                        "stage_orders", records=rows, columns=ORDER_COLUMNS
                    )
                    history = await conn.execute(sql("merge_history"), self.account)
                    stats.status_changes = _count(history)
                    await conn.execute(sql("merge_orders"), self.account)
                if new_ids:
                    await conn.execute(sql("resolve_failures"), self.account, list(new_ids))
                stats.inserted = len(new_ids)
                stats.changed = len(todo) - len(new_ids)
                stats.unchanged = len(unique) - len(todo)
            await self._record_failures(conn, failures)
            for cp in checkpoints:
                await conn.execute(sql("set_metadata"), self.account, cp.key, cp.value)
        await self._analyze_if_grown(stats.inserted + stats.changed)
        metrics.ORDERS_SYNCED.labels("inserted").inc(stats.inserted)
        metrics.ORDERS_SYNCED.labels("changed").inc(stats.changed)
        metrics.ORDERS_SYNCED.labels("unchanged").inc(stats.unchanged)
        metrics.STATUS_CHANGES.inc(stats.status_changes)
        return stats

    async def _analyze_if_grown(self, written: int) -> None:
        self._written_since_analyze += written
        if self._written_since_analyze >= self._analyze_threshold:
            self._written_since_analyze = 0
            self._analyze_threshold *= 2
            await self._pool.execute(sql("analyze_orders"))

    async def _insert_new(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
        """All-new batch: COPY straight into the target and its first-sighting history."""
        await conn.copy_records_to_table(
            "ordens_servico",
            records=[(self.account, *row) for row in rows],
            columns=("account", *ORDER_COLUMNS),
        )
        await conn.copy_records_to_table(
            "ordem_status_history",
            records=[(self.account, row[0], None, row[2], row[-1], "list") for row in rows],
            columns=("account", "id_os", "status_antigo", "status_novo", "changed_at", "source"),
        )

    async def _record_failures(
        self, conn: asyncpg.Connection, failures: Sequence[FailureRecord]
    ) -> None:
        if failures:
            now = dt.datetime.now(dt.UTC)
            await conn.executemany(
                sql("record_failure"),
                [(self.account, f.order_id, f.error, f.raw, now) for f in failures],
            )
            metrics.IMPORT_FAILURES.inc(len(failures))

    async def merge_details(
        self,
        details: Sequence[DetailRecord],
        failures: Sequence[FailureRecord] = (),
        missing: Collection[int] = (),
    ) -> MergeStats:
        """Apply fetched details; record failures; flag orders whose detail is gone (404)."""
        return await guarded(self._merge_details(details, failures, missing), "merging details")  # type: ignore[no-any-return]

    async def _merge_details(
        self,
        details: Sequence[DetailRecord],
        failures: Sequence[FailureRecord],
        missing: Collection[int],
    ) -> MergeStats:
        stats = MergeStats(details=len(details), failures=len(failures), missing=len(missing))
        async with self._pool.acquire() as conn, conn.transaction():
            if details:
                await conn.copy_records_to_table(
                    "stage_details",
                    records=[
                        (d.id, d.situacao, d.data_conclusao, d.payload, d.hash, d.observed_at)
                        for d in details
                    ],
                )
                history = await conn.execute(sql("merge_detail_history"), self.account)
                stats.status_changes = _count(history)
                await conn.execute(sql("merge_details"), self.account)
                await conn.execute(sql("resolve_failures"), self.account, [d.id for d in details])
            if missing:
                await conn.execute(sql("mark_missing"), self.account, list(missing))
            await self._record_failures(conn, failures)
        metrics.DETAILS_FETCHED.inc(len(details))
        metrics.STATUS_CHANGES.inc(stats.status_changes)
        return stats

    async def detail_backlog(self, limit: int, exclude: Collection[int] = ()) -> list[int]:
        """Up to ``limit`` ids that need a detail, most useful first."""
        rows = await guarded(
            self._pool.fetch(sql("detail_backlog"), self.account, limit, self._open, list(exclude)),
            "reading the detail backlog",
        )
        return [row["id"] for row in rows]

    async def detail_backlog_size(self) -> int:
        """How many orders still wait for a detail (also published as a gauge)."""
        query = self._pool.fetchval(sql("detail_backlog_count"), self.account)
        n = int(await guarded(query, "counting the detail backlog"))
        metrics.DETAIL_BACKLOG.set(n)
        return n

    async def ids_in_statuses(self, statuses: Sequence[int]) -> set[int]:
        """Ids the mirror holds in ``statuses`` (possibly-deleted rows left out)."""
        rows = await guarded(
            self._pool.fetch(sql("open_ids"), self.account, list(statuses)), "reading open ids"
        )
        return {row["id"] for row in rows}

    async def get_metadata(self, key: str) -> str | None:
        """A ``sync_metadata`` value of this account."""
        value = await guarded(self._pool.fetchval(sql("get_metadata"), self.account, key), key)
        return None if value is None else str(value)

    async def set_metadata(self, key: str, value: str) -> None:
        """Store a ``sync_metadata`` value of this account."""
        await guarded(self._pool.execute(sql("set_metadata"), self.account, key, value), key)

    async def counts_by_status(self) -> dict[int, int]:
        """Orders in the mirror per status code."""
        rows = await guarded(
            self._pool.fetch(sql("counts_by_status"), self.account), "counting orders"
        )
        return {int(r["situacao"]): int(r["n"]) for r in rows}


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``INSERT 0 12``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0
