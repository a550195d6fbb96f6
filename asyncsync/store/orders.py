"""The mirror of one account: COPY into staging tables, then merge, one transaction a batch.

The merge is **hashes first**: a batch ships ``(id, hash, observed_at)`` as three arrays,
the database answers which ids are new or changed by primary-key probes (a batch costs
the same however large the mirror grows), and only those rows' payloads are copied and
merged — so a re-sync of unchanged orders writes nothing. A batch known to be all new is
copied straight into the target tables; during a first load, once a batch was all new,
the next is copied in without the lookup at all, and one whose ids are partly there
already is rolled back to a savepoint and merged the hashes-first way. History rows,
import failures and checkpoints commit in the same transaction as the rows they
describe, so a crash never leaves one without the other.

This module alone knows the staging layout (``stage.sql``); an integrity correction is
the same merge with every row forced through it (:meth:`PgOrderStore.correct`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, TypeVar

import asyncpg

from .. import metrics
from ..clock import Clock, utcnow
from ..errors import DatabaseError, DatabaseUnavailable
from ..records import DetailRecord, FailureRecord, OrderRecord
from ..seams import Checkpoint, MergeStats
from . import failures as failure_rows
from .claims import Claims
from .locks import AccountHold
from .resilience import SqlRunner
from .sqlfiles import sql

log = logging.getLogger(__name__)
R = TypeVar("R", OrderRecord, DetailRecord)
#: A host's clock this far off the database's is logged, and its observations restamped
#: by the database's clock; none may claim a moment later than the database's now + this.
CLOCK_SKEW_WARN = dt.timedelta(seconds=2)
#: How long the ids of orders with an open failure are trusted before being read again:
#: a failure written meanwhile (by another run) is resolved by a listing after that.
OPEN_FAILURES_TTL_S = 300.0

_ORDER_COLUMNS = (
    "id", "numero", "situacao", "data_emissao", "data_prevista", "cliente_id",
    "cliente_nome", "valor", "payload", "list_hash", "observed_at",
)  # fmt: skip

_HISTORY_COLUMNS = ("account", "id_os", "status_antigo", "status_novo", "changed_at", "source")


def _order_row(r: OrderRecord) -> tuple[Any, ...]:
    return (
        r.id, r.numero, r.situacao, r.data_emissao, r.data_prevista, r.cliente_id,
        r.cliente_nome, r.valor, r.payload, r.hash, r.observed_at,
    )  # fmt: skip


def _target_row(account: str, r: OrderRecord) -> tuple[Any, ...]:
    """:func:`_order_row` with the account in front: one tuple per row, built once."""
    return (
        account, r.id, r.numero, r.situacao, r.data_emissao, r.data_prevista, r.cliente_id,
        r.cliente_nome, r.valor, r.payload, r.hash, r.observed_at,
    )  # fmt: skip


def latest_per_id(records: Sequence[OrderRecord]) -> list[OrderRecord]:
    """One record per id, the most recently observed (a listing can repeat an order)."""
    best: dict[int, OrderRecord] = {}
    for r in records:
        seen = best.get(r.id)
        if seen is None or r.observed_at >= seen.observed_at:
            best[r.id] = r
    return list(best.values())


class PgOrderStore:
    """``ordens_servico`` and ``ordem_status_history`` of one account. Implements ``OrderSink``."""

    def __init__(
        self,
        sql: SqlRunner,
        account: str,
        open_statuses: Sequence[int],
        *,
        clock: Clock = utcnow,
        fence: AccountHold | None = None,
    ) -> None:
        self._sql = sql
        self._pool = sql.pool
        # A worker's lease on the account, or a one-shot run's lock: checked before each
        # commit, so a process frozen past it and woken writes nothing beside another.
        self._fence = fence
        self.account = account
        self._open = list(open_statuses)
        self._clock = clock
        self._claims = Claims()
        # A first load is batch after batch of new orders: once one batch was all new, the
        # next is copied straight in, and a row already there sends it back (a savepoint)
        # through the hashes-first path, whose answer sets this again.
        self._expect_new = False
        # Until one has asked which of its orders are new, the others wait for its answer.
        # The first asks of a mirror perhaps empty and never analyzed, whose planner then
        # looks each id up through the status index, walking every entry of the account,
        # those of a COPY in flight included (find_changed.sql): two asking at once, one
        # beside the other's COPY, walked 5,000 ids by 5,000 entries, seconds to a minute
        # of PostgreSQL CPU. Its answer sends the next ones straight in (a first load),
        # beside it.
        self._asked = False
        self._first = asyncio.Lock()
        # The database's clock minus this host's, measured once; merges that start
        # together wait for the one measurement (a lock: they go on in the order they came).
        self._offset: dt.timedelta | None = None
        self._measuring = asyncio.Lock()
        # When to read them again (monotonic), and the ids of orders with an open failure.
        self._open_failures: tuple[float, set[int]] | None = None

    async def _on_database_time(self, records: Sequence[R]) -> Sequence[R]:
        """``records`` stamped by the database's clock, and none later than its now.

        ``observed_at`` decides which observation wins. A host whose clock runs ahead
        would otherwise stamp rows "later" than every correct observation for as long as
        it is ahead (and they would all lose to it); one whose clock lags would lose to
        older observations. Shifted only past :data:`CLOCK_SKEW_WARN`, and capped that
        far past the database's now: a batch is copied only on a host whose clock is off
        (it says so in its log)."""
        if self._offset is None:
            async with self._measuring:
                if self._offset is None:  # a failed measurement is tried by the next merge
                    self._offset = await self._measure_offset()
        offset = self._offset
        if abs(offset) > CLOCK_SKEW_WARN:
            records = [replace(r, observed_at=r.observed_at + offset) for r in records]
        return _capped(records, self._clock() + offset + CLOCK_SKEW_WARN)

    async def _measure_offset(self) -> dt.timedelta:
        before = self._clock()
        database_now = await self._sql.fetchval("reading the database's clock", "clock_now")
        after = self._clock()
        offset: dt.timedelta = database_now - (before + (after - before) / 2)
        if abs(offset) > CLOCK_SKEW_WARN:
            log.warning(
                "this host's clock is %.1f s off the database's: observations are stamped "
                "by the database's time", -offset.total_seconds(),
            )  # fmt: skip
        return offset

    async def merge_listed(
        self,
        records: Sequence[OrderRecord],
        failures: Sequence[FailureRecord] = (),
        checkpoints: Sequence[Checkpoint] = (),
        *,
        attempt: bool = False,
    ) -> MergeStats:
        """Merge one batch of listed orders, its failures and checkpoints atomically.

        Calls may overlap in time: batches over disjoint orders merge concurrently (on
        connections of their own), and a batch sharing an order, a failure or a checkpoint
        key with an earlier call waits for it (:class:`~.claims.Claims`).

        A record PostgreSQL refuses (a value it cannot store, a constraint) does not block
        the others: the batch is split until the culprit is alone, and it goes to
        ``import_failures`` with its payload and the error; the checkpoints commit with
        the last part, once everything before them is in."""
        records = await self._on_database_time(records)
        try:
            stats = await self._merge_once(records, failures, checkpoints, attempt=attempt)
        except DatabaseError as exc:
            if not _refused(exc) or not records:
                raise
            stats = await self._isolate(list(records), failures, checkpoints, exc, attempt)
        self._count(stats)
        return stats

    async def _merge_once(
        self,
        records: Sequence[OrderRecord],
        failures: Sequence[FailureRecord],
        checkpoints: Sequence[Checkpoint],
        *,
        attempt: bool,
        refused: Sequence[FailureRecord] = (),
    ) -> MergeStats:
        stats: MergeStats
        stats, _ = await self._sql.run(
            "merging orders",
            lambda: self._merge_listed(
                records, failures, checkpoints, source="list", force=False,
                attempt=attempt, refused=refused,
            ),
        )  # fmt: skip
        return stats

    async def _isolate(
        self,
        records: list[OrderRecord],
        failures: Sequence[FailureRecord],
        checkpoints: Sequence[Checkpoint],
        refusal: DatabaseError,
        attempt: bool,
    ) -> MergeStats:
        """Bisect a refused batch: halves merge on their own, a lone culprit is a failure
        (the failures and checkpoints ride with the last part)."""

        async def merge(
            part: Sequence[OrderRecord], last: bool, more: Sequence[FailureRecord]
        ) -> MergeStats:
            extra, marks = (failures, checkpoints) if last else ((), ())
            return await self._merge_once(part, extra, marks, attempt=attempt, refused=more)

        stats = await _bisect(records, merge, refusal)
        return stats + MergeStats(received=len(stats.refused))  # the culprits were received

    async def correct(self, records: Sequence[OrderRecord]) -> set[int]:
        """Force list rows through the merge even where the hashes agree (a damaged status
        with an unchanged payload): history rows are tagged ``'integrity'``. Returns the
        ids written (an observation older than the row's is not)."""
        written: set[int]
        records = await self._on_database_time(records)
        stats, written = await self._sql.run(
            "correcting orders",
            lambda: self._merge_listed(
                records, (), (), source="integrity", force=True, attempt=False
            ),
        )
        self._count(stats)
        return written

    async def _merge_listed(
        self,
        records: Sequence[OrderRecord],
        failures: Sequence[FailureRecord],
        checkpoints: Sequence[Checkpoint],
        *,
        source: str,
        force: bool,
        attempt: bool,
        refused: Sequence[FailureRecord] = (),
    ) -> tuple[MergeStats, set[int]]:
        keys = frozenset(
            [*(r.id for r in records), *(f.order_id for f in [*failures, *refused])]
            + [("checkpoint", cp.key) for cp in checkpoints]
        )
        async with self._alone_until_asked() as asked, self._claims.hold(keys):
            return await self._merge_claimed(
                records, failures, checkpoints, source, force, attempt, refused, asked
            )

    @asynccontextmanager
    async def _alone_until_asked(self) -> AsyncIterator[Callable[[], None]]:
        """Hold the other merges back while no merge has asked which of its orders are
        new; yields what the merge calls once it has: the others go on then, beside it."""
        if self._asked:
            yield lambda: None
            return
        await self._first.acquire()
        held = True

        def asked() -> None:
            nonlocal held
            self._asked = True
            if held:
                held = False
                self._first.release()

        try:
            yield asked
        finally:
            if held:
                held = False
                self._first.release()

    async def _merge_claimed(
        self,
        records: Sequence[OrderRecord],
        failures: Sequence[FailureRecord],
        checkpoints: Sequence[Checkpoint],
        source: str,
        force: bool,
        attempt: bool,
        refused: Sequence[FailureRecord],
        asked: Callable[[], None],
    ) -> tuple[MergeStats, set[int]]:
        unique = latest_per_id(records)
        now = self._clock()
        new_ids: set[int] = set()
        todo: set[int] = set()
        history = 0
        written: set[int] = set()
        resolved: list[int] = []
        hopeful = bool(unique) and self._expect_new and not force
        async with self._pool.acquire() as conn, conn.transaction():
            if hopeful and await self._try_all_new(conn, unique, source):
                new_ids = {r.id for r in unique}
                todo, history, written = new_ids, len(unique), set(new_ids)
            elif unique:
                found = await conn.fetchrow(
                    sql("find_changed"),
                    self.account,
                    [r.id for r in unique],
                    [r.hash for r in unique],
                    [r.observed_at for r in unique],
                    force,
                )
                new_ids = set(found["new_ids"])
                todo = new_ids.union(found["changed_ids"])
                if not force:
                    self._expect_new = len(new_ids) == len(unique)
                asked()  # the next merges know whether to copy straight in
                if todo and len(new_ids) == len(todo):
                    fresh = [r for r in unique if r.id in todo]
                    await self._insert_new(conn, fresh, source)
                    history = len(fresh)
                    written = set(todo)
                elif todo:
                    rows = [_order_row(r) for r in unique if r.id in todo]
                    await conn.copy_records_to_table(
                        "stage_orders", records=rows, columns=_ORDER_COLUMNS
                    )
                    tag = await conn.execute(sql("merge_history"), self.account, source)
                    history = _affected(tag)
                    rows_written = await conn.fetch(sql("merge_orders"), self.account)
                    written = {row["id"] for row in rows_written}
            if new_ids and not attempt:  # an attempt's failures resolve with the detail
                await conn.execute(
                    sql("resolve_relisted_failures"), self.account, list(new_ids), now
                )
            if unique and not attempt:  # read whole now: what failed of them is fixed
                resolved = await self._resolve_listed(conn, unique, now)
            recorded = await failure_rows.upsert(
                conn, self.account, failures, now=now, counts_as_attempt=False, listed=True
            )
            recorded += await failure_rows.upsert(  # records it refused: a failed attempt
                conn, self.account, refused, now=now, counts_as_attempt=attempt
            )
            for cp in checkpoints:
                await conn.execute(sql("set_metadata"), self.account, cp.key, cp.value)
            if self._fence is not None:  # the lease or run lock still held, or nothing lands
                await self._fence.check(conn)
        # Committed: only now is what it resolved gone (a transaction rolled back and tried
        # again must resolve them again), and what it recorded open.
        if self._open_failures is not None:
            self._open_failures[1].difference_update(resolved)
        self._opened([*failures, *refused], recorded)
        stats = MergeStats(
            received=len(records),
            inserted=len(new_ids),
            changed=len(todo) - len(new_ids),
            unchanged=len(unique) - len(todo),
            first_sightings=len(new_ids),
            status_changes=history - len(new_ids),
            failures=len(recorded),  # rows written: a broken item seen again is not one
        )
        return stats, written

    async def _resolve_listed(
        self, conn: asyncpg.Connection, records: list[OrderRecord], now: dt.datetime
    ) -> list[int]:
        """Resolve the open failures of ``records``' orders where the mirror holds them
        whole (``resolve_listed_failures.sql``): a failure past its last attempt is never
        retried, and this is how it ends once the record is fixed in Tiny. The orders
        with an open failure are read once per :data:`OPEN_FAILURES_TTL_S` (and those this
        store records are added) and matched here, so a batch with none of them (nearly
        all) costs no statement. Returns the ids resolved (the caller forgets them once
        its transaction commits)."""
        open_ids = await self._open_failure_ids(conn)
        hit = [r.id for r in records if r.id in open_ids]
        if not hit:
            return []
        rows = await conn.fetch(sql("resolve_listed_failures"), self.account, hit, now)
        return [row["id_ordem"] for row in rows]

    async def _open_failure_ids(self, conn: asyncpg.Connection) -> set[int]:
        if self._open_failures is None or time.monotonic() >= self._open_failures[0]:
            rows = await conn.fetch(sql("open_failure_ids"), self.account)
            ids = {row["id_ordem"] for row in rows}
            self._open_failures = (time.monotonic() + OPEN_FAILURES_TTL_S, ids)
        return self._open_failures[1]

    def _opened(self, failures: Sequence[FailureRecord], written: Sequence[int]) -> None:
        """Failures this store recorded (``written``: the ids of the rows), committed:
        counted, and listed whole later they resolve."""
        failure_rows.count(self.account, written)
        if self._open_failures is not None:
            self._open_failures[1].update(f.order_id for f in failures)

    def _count(self, stats: MergeStats) -> None:
        account = self.account
        metrics.ORDERS_SYNCED.labels(account, "inserted").inc(stats.inserted)
        metrics.ORDERS_SYNCED.labels(account, "changed").inc(stats.changed)
        metrics.ORDERS_SYNCED.labels(account, "unchanged").inc(stats.unchanged)
        metrics.FIRST_SIGHTINGS.labels(account).inc(stats.first_sightings)
        metrics.STATUS_CHANGES.labels(account).inc(stats.status_changes)

    async def _try_all_new(
        self, conn: asyncpg.Connection, records: list[OrderRecord], source: str
    ) -> bool:
        """Copy ``records`` in as new orders; False (nothing written) if one is there."""
        try:
            async with conn.transaction():  # a savepoint
                await self._insert_new(conn, records, source)
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def _insert_new(
        self, conn: asyncpg.Connection, records: list[OrderRecord], source: str
    ) -> None:
        """All-new batch: COPY straight into the target and its first-sighting history."""
        account = self.account
        await conn.copy_records_to_table(
            "ordens_servico",
            records=[_target_row(account, r) for r in records],
            columns=("account", *_ORDER_COLUMNS),
        )
        await conn.copy_records_to_table(
            "ordem_status_history",
            records=[(account, r.id, None, r.situacao, r.observed_at, source) for r in records],
            columns=_HISTORY_COLUMNS,
        )

    async def merge_details(
        self,
        details: Sequence[DetailRecord],
        failures: Sequence[FailureRecord] = (),
        missing: Collection[int] = (),
        *,
        attempt: bool = False,
        unresolved: Collection[int] = (),
        listed: Collection[int] = (),
    ) -> MergeStats:
        """Apply fetched details; record failures; flag orders whose detail is gone (404)
        and resolve their open failures (a person is not asked about a deleted order).
        The failures of ``unresolved`` orders stay open though their detail lands (their
        list item is what failed, and it still does). Of ``missing``, the ``listed`` ones
        a listing of this run showed are not flagged: each is an import failure with its
        list item, recorded as a list item's (failure_upsert.sql).

        A detail PostgreSQL refuses goes alone to ``import_failures``, as a listed record
        does (see :meth:`merge_listed`); the order keeps waiting for a detail."""
        details = await self._on_database_time(details)
        try:
            stats = await self._details_once(
                details, failures, missing, attempt=attempt, unresolved=unresolved, listed=listed
            )
        except DatabaseError as exc:
            if not _refused(exc) or not details:
                raise

            async def merge(
                part: Sequence[DetailRecord], last: bool, more: Sequence[FailureRecord]
            ) -> MergeStats:
                extra, gone, shown = (failures, missing, listed) if last else ((), (), ())
                return await self._details_once(
                    part, extra, gone, attempt=attempt, refused=more, unresolved=unresolved,
                    listed=shown,
                )  # fmt: skip

            stats = await _bisect(list(details), merge, exc)
        metrics.DETAILS_FETCHED.labels(self.account).inc(stats.details)
        metrics.STATUS_CHANGES.labels(self.account).inc(stats.status_changes)
        return stats

    async def _details_once(
        self,
        details: Sequence[DetailRecord],
        failures: Sequence[FailureRecord],
        missing: Collection[int],
        *,
        attempt: bool,
        refused: Sequence[FailureRecord] = (),
        unresolved: Collection[int] = (),
        listed: Collection[int] = (),
    ) -> MergeStats:
        stats: MergeStats = await self._sql.run(
            "merging details",
            lambda: self._merge_details(
                details, failures, missing, attempt, refused, unresolved, listed
            ),
        )
        return stats

    async def _merge_details(
        self,
        details: Sequence[DetailRecord],
        failures: Sequence[FailureRecord],
        missing: Collection[int],
        attempt: bool,
        refused: Sequence[FailureRecord],
        unresolved: Collection[int] = (),
        listed: Collection[int] = (),
    ) -> MergeStats:
        now = self._clock()
        history = 0
        shown = [i for i in missing if i in listed]  # Tiny lists them: not deleted
        gone = [i for i in missing if i not in listed]
        async with self._pool.acquire() as conn, conn.transaction():
            if details:
                await conn.copy_records_to_table(
                    "stage_details",
                    records=[
                        (d.id, d.situacao, d.data_conclusao, d.payload, d.hash, d.observed_at)
                        for d in details
                    ],
                )
                await conn.execute(sql("detail_disputes"), self.account)
                history = _affected(await conn.execute(sql("merge_detail_history"), self.account))
                # Only orders the mirror holds take a detail: a failure is resolved by its
                # order being there, not by a detail that found no row to land on.
                landed = await conn.fetch(sql("merge_details"), self.account)
                ids = [row["id"] for row in landed if row["id"] not in unresolved]
                await conn.execute(sql("resolve_failures"), self.account, ids, now)
            if gone:  # deleted in Tiny: flagged, and nothing is left to import of them
                await conn.execute(sql("mark_missing"), self.account, gone)
                await conn.execute(sql("resolve_failures"), self.account, gone, now)
            recorded = await failure_rows.upsert(
                conn, self.account, failures, now=now, counts_as_attempt=False
            )
            # Listed by this run: a failure a retry resolved that comes back with the same
            # 404 counts one more attempt (the row keeps waiting for its detail).
            not_found = await failure_rows.listed_not_found(conn, self.account, shown)
            recorded += await failure_rows.upsert(
                conn, self.account, not_found, now=now, counts_as_attempt=False, listed=True
            )
            recorded += await failure_rows.upsert(  # details it refused: a failed attempt
                conn, self.account, refused, now=now, counts_as_attempt=attempt
            )
            if self._fence is not None:
                await self._fence.check(conn)
        self._opened([*failures, *refused, *not_found], recorded)
        return MergeStats(
            details=len(details),
            failures=len(recorded),
            missing=len(gone),
            status_changes=history,
        )

    async def detail_backlog(self, limit: int, exclude: Collection[int] = ()) -> list[int]:
        """Up to ``limit`` ids that need a detail, most useful first."""
        rows = await self._sql.fetch(
            "reading the detail backlog", "detail_backlog",
            self.account, limit, self._open, list(exclude),
        )  # fmt: skip
        return [row["id"] for row in rows]

    async def detail_backlog_size(self) -> int:
        """How many orders still wait for a detail (also published as a gauge)."""
        count = "detail_backlog_count"
        n = int(await self._sql.fetchval("counting the detail backlog", count, self.account))
        metrics.DETAIL_BACKLOG.labels(self.account).set(n)
        return n

    async def ids_in_statuses(self, statuses: Sequence[int]) -> set[int]:
        """Ids the mirror holds in ``statuses`` (possibly-deleted rows left out)."""
        rows = await self._sql.fetch("reading open ids", "open_ids", self.account, list(statuses))
        return {row["id"] for row in rows}

    async def counts_by_status(self) -> dict[int, int]:
        """Orders in the mirror per status code (possibly-deleted rows left out)."""
        rows = await self._sql.fetch("counting orders", "counts_by_status", self.account)
        return {int(r["situacao"]): int(r["n"]) for r in rows}

    async def known_by_status(self) -> dict[int, int]:
        """Rows per status plus the open failures of orders the mirror lacks, by the status
        their list item showed (see ``OrderSink.known_by_status``)."""
        known = await self.counts_by_status()
        failing = await self._sql.fetch(
            "counting failures", "integrity_tracked_counts", self.account
        )
        for row in failing:
            known[int(row["situacao"])] = known.get(int(row["situacao"]), 0) + int(row["n"])
        return known

    async def counts_in_range(self, first_day: dt.date, last_day: dt.date) -> dict[int, int]:
        """Orders in the mirror per status, emitted between the two days (inclusive)."""
        rows = await self._sql.fetch(
            "counting orders", "backfill_counts", self.account, first_day, last_day
        )
        return {int(r["situacao"]): int(r["n"]) for r in rows}


async def _bisect(
    items: list[R],
    merge: Callable[[Sequence[R], bool, Sequence[FailureRecord]], Awaitable[MergeStats]],
    refusal: DatabaseError,
    last: bool = True,
) -> MergeStats:
    """Split a batch PostgreSQL refused until the culprit is alone, and set it aside in
    ``import_failures``: ``merge(part, last, more_failures)`` merges a part; ``last``
    marks the part that carries the batch's extras (its failures, checkpoints, missing
    ids), which commit once everything before them is in."""
    if len(items) == 1:
        culprit = items[0]
        what = "order" if isinstance(culprit, OrderRecord) else "the detail of order"
        log.warning("PostgreSQL refused %s %d: %s", what, culprit.id, refusal)
        error = f"PostgreSQL refused the record: {refusal}"
        bad = FailureRecord(culprit.id, error, culprit.payload)
        try:
            stats = await merge((), last, [bad])
        except DatabaseError as exc:
            if not _refused(exc):
                raise
            bad = FailureRecord(culprit.id, error, None)  # the payload is what is refused
            stats = await merge((), last, [bad])
        return stats + MergeStats(refused=(bad,))
    middle = len(items) // 2
    total = MergeStats()
    for part, carries in ((items[:middle], False), (items[middle:], last)):
        try:
            total = total + await merge(part, carries, ())
        except DatabaseError as exc:
            if not _refused(exc):
                raise
            total = total + await _bisect(part, merge, exc, carries)
    return total


def _capped(records: Sequence[R], ceiling: dt.datetime) -> Sequence[R]:
    """``records`` with no observation later than ``ceiling`` (a batch is nearly always
    under it: then it is returned as it is)."""
    if all(r.observed_at <= ceiling for r in records):
        return records
    return [r if r.observed_at <= ceiling else replace(r, observed_at=ceiling) for r in records]


def _refused(exc: DatabaseError) -> bool:
    """PostgreSQL refused the data (class 22: a value; 23: a constraint), not the service."""
    return not isinstance(exc, DatabaseUnavailable) and (exc.sqlstate or "")[:2] in ("22", "23")


def _affected(tag: str) -> int:
    """Rows affected, from a command tag such as ``INSERT 0 12``."""
    try:
        return int(tag.rsplit(" ", 1)[-1])
    except ValueError:
        return 0
