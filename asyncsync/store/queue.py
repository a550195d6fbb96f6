"""The work queue, on pgqueuer: its schema, enqueueing, the worker loop and a census.

pgqueuer keeps the units in PostgreSQL, the database asyncsync already needs: a worker
claims units with ``FOR UPDATE SKIP LOCKED``; a per-kind concurrency limit holds across
every worker (it is enforced by the claiming statement); a unit whose worker stops
sending heartbeats is claimed again by another; a periodic task (a cron schedule) runs
once per tick across every worker; a dedupe key keeps a second unit with the same key
out while one is queued or running. This module alone knows the library: the work layer
sees :class:`~asyncsync.seams.WorkQueue`, and a handler's
:class:`~asyncsync.errors.Requeue` becomes the library's ``RetryRequested`` here.

Its tables (``pgqueuer``, ``pgqueuer_log``, ``pgqueuer_statistics``,
``pgqueuer_schedules``) are installed with ``schema.sql``, under the same lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from pgqueuer import PgQueuer, Queries, RetryRequested
from pgqueuer.adapters.drivers.asyncpg import Relay
from pgqueuer.adapters.persistence.composer import ComposedQuery
from pgqueuer.adapters.persistence.qb import QueryQueueBuilder
from pgqueuer.db import AsyncpgPoolDriver
from pgqueuer.domain.settings import db_settings
from pgqueuer.executors import AsyncCrontab, AsyncEntrypoint
from pgqueuer.models import Job, Schedule, TableChangedEvent, TracebackRecord
from pgqueuer.ports.driver import NotifyCallback
from pgqueuer.types import JOB_STATUS

from ..clock import utcnow
from ..errors import ConfigError, DatabaseUnavailable, Requeue
from ..seams import PickedWork, QueueCount, Tick, WorkHandler, WorkItem
from .database import schema_locked
from .resilience import CAUGHT, SqlRunner, classify, guarded

log = logging.getLogger(__name__)

#: The queue's log keeps a row per pick, re-queue and end of every unit; older rows that
#: its statistics already count are removed by :meth:`PgWorkQueue.prune`.
LOG_RETENTION = dt.timedelta(days=2)
#: Pauses between tries of a re-queue while the database is away, seconds.
RETRY_FIRST_PAUSE_S = 0.5
RETRY_MAX_PAUSE_S = 5.0
#: Units claimed by one dequeue: small, so that units spread over the workers.
MAX_BATCH = 4
#: SQLSTATE of a relation that does not exist.
UNDEFINED_TABLE = "42P01"
#: pgqueuer's own lines are about its machinery (a re-queue is how periodic units re-arm
#: here, not a failure): warnings only.
logging.getLogger("pgqueuer").setLevel(logging.WARNING)
#: Seconds between two of pgqueuer's "Flush failed" lines.
FLUSH_FAILED_EVERY_S = 60.0


class _FlushFailedOnceAMinute(logging.Filter):
    """While the database is away pgqueuer's heartbeat and log buffers fail to flush ten
    times a second, each with a traceback (they keep their items and flush later; the
    worker says the database is away in one line of its own): one line a minute, short."""

    def __init__(self) -> None:
        super().__init__()
        self._last = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Flush failed"):
            return True
        now = time.monotonic()
        if now - self._last < FLUSH_FAILED_EVERY_S:
            return False
        self._last = now
        if record.exc_info and record.exc_info[1] is not None:
            args = record.args if isinstance(record.args, tuple) else ()
            record.msg, record.args = (
                f"{record.msg} (%r; said once a minute)",
                (
                    *args,
                    record.exc_info[1],
                ),
            )
        record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("pgqueuer").addFilter(_FlushFailedOnceAMinute())


def _check_names() -> None:
    """The census and prune statements name pgqueuer's default tables."""
    if db_settings().queue_table != "pgqueuer":
        raise ConfigError("asyncsync uses pgqueuer's default table names: unset PGQUEUER_*")


async def install(pool: asyncpg.Pool) -> None:
    """Create the queue's tables unless they exist, under the schema lock like
    ``schema.sql``, then bring an older installation up to this pgqueuer's (a new release
    of it may add columns; nothing to do, usually)."""
    _check_names()
    async with pool.acquire() as conn:
        queries = Queries.from_asyncpg_connection(conn)
        async with schema_locked(conn):
            if not await queries.schema_is_installed():
                await queries.install()
        if (await queries.plan_upgrade()).statements:
            await queries.apply_upgrade()


#: pgqueuer claims the due units of a kind by priority, then by id; asyncsync claims the
#: one due longest first (see _DueFirst).
_BY_ID = "candidate.priority DESC, candidate.id ASC"
_BY_DUE = "candidate.priority DESC, candidate.execute_after ASC, candidate.id ASC"
#: Then it keeps as many of them as the batch and the worker's free slots take, by
#: priority and id again (next_queued's rows are ``job``, eligible's ``combined``).
_CUTS = (
    (re.compile(r"ORDER BY job\.priority DESC, job\.id ASC(?=\s+LIMIT)"), "job.", "job"),
    (re.compile(r"ORDER BY priority DESC, id ASC(?=\s+LIMIT)"), "", "combined"),
)


class _DueFirst(QueryQueueBuilder):
    """pgqueuer's claims, the unit due longest first among those of one priority.

    By id, a periodic unit, which re-arms as the same row, kept its place at the head for
    good: with more cycles due than slots, the accounts added first re-claimed theirs
    every interval while one added later, due all along, waited for as long as they
    outnumbered the slots (60 accounts on 3 workers of 8 slots: 17 accounts without a
    single unit in 4 minutes). The cut to the free slots goes by due time too: by id, a
    worker of 8 slots (4 units a claim) whose units end one at a time took the lowest id
    of the 4 due longest, and the one due longest of all, added last, never ran."""

    def build_dequeue_query(self, **kwargs: Any) -> ComposedQuery:
        query = super().build_dequeue_query(**kwargs)
        if _BY_ID not in query.sql or not all(cut.search(query.sql) for cut, _, _ in _CUTS):
            # another pgqueuer than the one pinned
            raise ConfigError("this pgqueuer's claim is not the one asyncsync orders by due "
                              "time: install the version constraints.txt pins")  # fmt: skip
        sql = query.sql.replace(_BY_ID, _BY_DUE)
        for cut, prefix, rows in _CUTS:
            due = (f"(SELECT due.execute_after FROM {self.qualified.queue_table} due "
                   f"WHERE due.id = {rows}.id)")  # fmt: skip
            sql = cut.sub(f"ORDER BY {prefix}priority DESC, {due} ASC, {prefix}id ASC", sql)
        return dataclasses.replace(query, sql=sql)


class _Queries(Queries):
    """pgqueuer's queries, saying when a unit went back to the queue, and keeping a unit
    that was cut.

    Its change trigger is per statement, so it cannot see that an UPDATE changed a row and
    stays silent about re-queued units: idle workers would notice them only at their next
    poll. A notification after the re-queue wakes them (and they see when it is due).

    A unit cancelled mid-flight (the drain's deadline cut the worker) is logged
    ``canceled``, which deletes it: a backfill month would then never run again, as
    nothing plans months. It goes back to the queue instead, due at once."""

    async def retry_job(
        self, job: Job, delay: dt.timedelta, traceback_record: TracebackRecord | None
    ) -> None:
        # A unit ends by going back to the queue. If the database is away just then (the
        # outage that failed the unit, usually), pgqueuer takes the failed UPDATE for a
        # failure of the job and holds it as 'failed': a cycle waited for the planner's
        # next minute, and a backfill month, which nothing plans again, was never run.
        # The re-queue is tried again until the database answers (the unit's heartbeat
        # goes on meanwhile; a drain's deadline still cuts it).
        pause, said = RETRY_FIRST_PAUSE_S, False
        while True:
            try:
                await super().retry_job(job, delay, traceback_record)
                break
            except CAUGHT as exc:
                if not isinstance(classify(exc, "re-queueing a unit"), DatabaseUnavailable):
                    raise
                if not said:
                    log.warning("the database is away: unit %s goes back to the queue once it "
                                "answers (%s)", job.id, exc)  # fmt: skip
                    said = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX_PAUSE_S)
        # Only a wake-up (workers poll anyway): failing, it must not fail the re-queue,
        # which would mark the unit failed.
        with contextlib.suppress(*CAUGHT):
            await self.driver.notify(self.qbq.settings.channel, _wake_up())

    async def log_jobs(
        self, job_status: list[tuple[Job, JOB_STATUS, TracebackRecord | None]]
    ) -> None:
        for job, status, _ in job_status:
            if status == "canceled":
                await super().retry_job(job, dt.timedelta(0), None)
        rest = [entry for entry in job_status if entry[1] != "canceled"]
        if rest:
            await super().log_jobs(rest)


def _wake_up() -> str:
    """The notification that tells every worker the queue's table changed."""
    settings = db_settings()
    event = TableChangedEvent(channel=settings.channel, sent_at=utcnow(),
                              type="table_changed_event", operation="update",
                              table=settings.queue_table)  # fmt: skip
    return event.model_dump_json()


class _ListeningDriver(AsyncpgPoolDriver):
    """pgqueuer's pool driver, listening again when its LISTEN connection dies.

    The library LISTENs on one pooled connection for the whole of a worker's life and
    does not notice when that connection dies with a database restart: its wake-ups
    (a unit re-queued, a unit enqueued by another process) then never arrive, and every
    unit waits for the next poll, up to ``dequeue_timeout`` (30 s) late, until the worker
    restarts. Here the connection's end is noticed, and the listeners are set up again on
    a fresh connection as soon as the database takes one; a dead connection is not reset
    at exit either (that raised, and read as the database being lost)."""

    RELISTEN_PAUSE_S = (0.5, 1.0, 2.0, 5.0)

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self._channels: list[tuple[str, NotifyCallback]] = []
        self._relisten: asyncio.Task[None] | None = None
        self._closing = False

    async def add_listener(self, channel: str, callback: NotifyCallback) -> None:
        await super().add_listener(channel, callback)
        self._channels.append((channel, callback))
        self._watch()

    def _watch(self) -> None:
        conn = self._listener_connection
        if conn is not None:
            conn.add_termination_listener(self._lost)

    def _lost(self, _conn: object) -> None:
        if self._closing or (self._relisten is not None and not self._relisten.done()):
            return
        self._relisten = asyncio.get_running_loop().create_task(
            self._listen_again(), name="work-queue-relisten"
        )

    async def _listen_again(self) -> None:
        attempt = 0
        while not self._closing:
            async with self._lock:
                self._listener_connection = None  # dead: the pool took it back already
                conn = None
                try:
                    conn = await self._pool.acquire()
                    for channel, callback in self._channels:
                        await conn.add_listener(channel, Relay(callback))
                except CAUGHT as exc:
                    if conn is not None:
                        with contextlib.suppress(*CAUGHT):
                            await self._pool.release(conn)
                    log.debug("the work queue cannot listen yet: %s", exc)
                else:
                    self._listener_connection = conn
                    self._watch()
                    log.info("the work queue listens again (its connection had died)")
                    break
            await asyncio.sleep(self.RELISTEN_PAUSE_S[min(attempt, len(self.RELISTEN_PAUSE_S) - 1)])
            attempt += 1
        # What was announced while nobody listened is lost: wake the queue once, so it
        # looks at the table now instead of at its next poll.
        for _, callback in self._channels:
            with contextlib.suppress(Exception):
                callback(_wake_up())

    async def __aexit__(self, *exc: object) -> None:
        if self._entered <= 1:
            self._closing = True
            if self._relisten is not None:
                self._relisten.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._relisten
            conn = self._listener_connection
            if conn is not None and (conn._con is None or conn.is_closed()):
                self._listener_connection = None  # nothing to reset: it died
        await super().__aexit__(*exc)


class PgWorkQueue:
    """The work queue of one database. Implements ``seams.WorkQueue``."""

    def __init__(self, sql: SqlRunner) -> None:
        self._sql = sql
        self._queries = Queries(AsyncpgPoolDriver(sql.pool))
        self._installed = False

    async def install(self, *, again: bool = False) -> None:
        """Create or upgrade the queue's tables (idempotent; once per instance, unless
        ``again``: the database came back, perhaps created anew)."""
        if again or not self._installed:
            await self._sql.run("installing the work queue", lambda: install(self._sql.pool))
            self._installed = True

    async def enqueue(self, items: Sequence[WorkItem]) -> int:
        if not items:
            return 0
        await self.install()
        ids = await guarded(
            self._queries.enqueue(
                [i.kind for i in items],
                [i.payload for i in items],
                [i.priority for i in items],
                [dt.timedelta(seconds=i.delay_s) for i in items],
                [i.dedupe_key for i in items],
                on_conflict="skip",
            ),
            "enqueueing units of work",
        )
        return sum(1 for i in ids if i is not None)

    async def census(self, account: str | None = None) -> list[QueueCount]:
        rows = await self._sql.fetch("counting queued units", "queue_census", account)
        return [QueueCount(r["kind"], r["state"], r["units"], r["oldest_s"]) for r in rows]

    async def hurry(self, ids: Sequence[int] = (), *, keys: Sequence[str] = ()) -> list[int]:
        if not ids and not keys:
            return []
        rows = await self._sql.fetch("hurrying units", "queue_hurry", list(ids),
                                     db_settings().channel, _wake_up(), list(keys))  # fmt: skip
        return [int(row["id"]) for row in rows]

    async def prune(self) -> None:
        """Drop log rows older than :data:`LOG_RETENTION` that the statistics count."""
        await self.install()
        await self._sql.execute("pruning the queue's log", "queue_prune", LOG_RETENTION)

    async def work(
        self,
        handlers: Mapping[str, WorkHandler],
        *,
        slots: int,
        limits: Mapping[str, int],
        heartbeat_s: float,
        ticks: Mapping[str, tuple[str, Tick]],
        stop: asyncio.Event,
    ) -> None:
        await self.install()
        # Its own driver: the library holds one pooled connection to LISTEN on.
        driver = _ListeningDriver(self._sql.pool)
        pgq = PgQueuer(driver, queries=_Queries(driver, qbq=_DueFirst()))
        worker_id = str(pgq.qm.queue_manager_id)
        fields = {"event": "queue_started", "queue_worker": worker_id}
        log.info("picking units as queue worker %s", worker_id, extra={"fields": fields})
        for kind, handler in handlers.items():
            pgq.entrypoint(kind, concurrency_limit=limits.get(kind, 0), accepts_context=False,
                           on_failure="hold")(_entrypoint(handler))  # fmt: skip
        for name, (cron, tick) in ticks.items():
            pgq.schedule(name, cron, accepts_context=False)(_crontab(tick))
        running = asyncio.create_task(
            pgq.run(
                batch_size=max(1, min(MAX_BATCH, slots // 2)),
                max_concurrent_tasks=max(slots, 2),
                heartbeat_timeout=dt.timedelta(seconds=heartbeat_s),
                dequeue_timeout=dt.timedelta(seconds=min(heartbeat_s, 30.0)),
            ),
            name="work-queue",
        )
        stopped = asyncio.create_task(stop.wait(), name="work-queue-stop")
        try:
            await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # The library stops claiming, then waits for the units it runs (they drain
            # on ``stop`` and re-queue themselves).
            pgq.shutdown.set()
            stopped.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopped
        try:
            await running
        except CAUGHT as exc:
            error = classify(exc, "running the work queue")
            if error.sqlstate == UNDEFINED_TABLE:
                # Its tables gone while connected: a database restored (dropped, created
                # again) between two polls. An outage like the restore's own "does not
                # exist": the worker waits, applies the schema again and goes on.
                raise DatabaseUnavailable(
                    f"{error} (the database came back without its tables, restored or "
                    "created anew?)", sqlstate=UNDEFINED_TABLE,
                ) from exc  # fmt: skip
            raise error from exc


def _entrypoint(handler: WorkHandler) -> AsyncEntrypoint:
    async def run(job: Job) -> None:
        picked = PickedWork(int(job.id), str(job.entrypoint), job.payload or b"", job.attempts)
        try:
            await handler(picked)
        except Requeue as exc:
            raise RetryRequested(
                delay=dt.timedelta(seconds=exc.delay_s), reason=exc.reason
            ) from exc

    return run


def _crontab(tick: Tick) -> AsyncCrontab:
    async def run(schedule: Schedule) -> None:
        await tick()

    return run
