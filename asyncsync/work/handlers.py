"""Running a picked unit: lease its account, run its job, record it, say when it is due
again.

The lease makes an account's units run in one process at a time: a unit whose account
another process holds goes back to the queue for a few seconds instead of waiting in a
slot; units of one account in this process take turns on one runtime (one limiter, one
breaker, one token manager), since two merges of one account must not interleave. A
periodic unit re-arms itself (it goes back to the queue, due after its period); a unit
that a shutdown interrupted goes back due at once, for another worker, and a backfill
month resumes there from its checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from ..clock import utcnow
from ..errors import (
    AccountBusy,
    ConfigError,
    DatabaseError,
    LeaseLost,
    ReauthorizationRequired,
    Requeue,
    TinyBadPayload,
    TinyError,
    TinyHTTPError,
    TinyUnavailable,
)
from ..jobs.backfill import backfill
from ..jobs.integrity import check_integrity, deep_day
from ..jobs.retry import DEFAULT_POLICY
from ..options import BackfillOptions, IntegrityOptions, ServeOptions
from ..overview import observe_status
from ..readiness import Readiness
from ..report import Outcome, RunReport, failed_report, note_failure
from ..seams import PickedWork, WorkHandler, WorkQueue
from .cycle import failed_unit, record, run_cycle
from .health import check_readiness
from .ports import AccountRuntime, Fleet, Leased
from .units import BACKGROUND, RECORDED_AS, Kind, Unit

log = logging.getLogger(__name__)

#: A unit whose account another process holds comes back after this (times 1 to 2).
LEASE_RETRY_S = 2.0
#: The refresh token's age is looked at this often (renewed past half its lifetime).
KEEP_ALIVE_EVERY_S = 600.0
#: A backfill month that failed (Tiny or the database away) is tried again after this;
#: one that failed of its own (an answer over --max-answer-mb, a 4xx, a body that is not
#: Tiny's) after twice as long with each such failure in a row here, up to
#: BACKFILL_RETRY_MAX_S: one that fails for good spends a try an hour of the account's
#: quota and a failed run in sync_runs, not one every 30 s.
BACKFILL_RETRY_S = 30.0
BACKFILL_RETRY_MAX_S = 3600.0
_THE_MONTHS_OWN = (TinyHTTPError, TinyBadPayload)
#: Kinds that never wait in their slot for another unit of their account in this worker
#: (they go back to the queue, as when another worker holds the account): their slots
#: are the few ``--background-slots`` every account and worker share, and a month
#: waiting for the account's month before it would hold one for a whole month, leaving
#: every other account's backfill behind this account's whole backlog.
NO_WAIT = BACKGROUND
#: A unit of NO_WAIT put back because its account runs another unit here is made due
#: again (queue_hurry) as soon as the account's units here end; this is only the bound
#: should that not happen (the database away then). At 2-4 s instead, a backfill of 120
#: months queued behind a first sync of hours was claimed and put back ~40 times a second.
PARKED_S = 60.0
#: How long the units bounced while an account ran are looked for on the queue once it
#: ends, and how often (a re-queue may still be on its way when the account's unit ends).
HURRY_FOR_S, HURRY_PAUSE_S = 5.0, 0.25

AfterCycle = Callable[[AccountRuntime, list[RunReport]], Awaitable[object]]


@dataclass(frozen=True)
class Hooks:
    """What a caller may watch (tests change the world between cycles)."""

    after_cycle: AfterCycle | None = None
    max_cycles: int | None = None  # stop the worker after this many cycles
    readiness: Readiness | None = None


class Dispatcher:
    """The handler of every kind of unit, for one worker."""

    def __init__(
        self,
        fleet: Fleet,
        options: ServeOptions,
        stop: asyncio.Event,
        hooks: Hooks,
        queue: WorkQueue | None = None,
    ) -> None:
        self.fleet, self.options, self.stop, self.hooks = fleet, options, stop, hooks
        self.queue = queue
        #: Units put back because another unit of their account ran here, by account:
        #: due again as soon as the account's last unit here ends.
        self._bounced: dict[str, set[int]] = {}
        self._running: dict[str, int] = {}
        self._hurrying: set[asyncio.Task[None]] = set()
        self.fatal: BaseException | None = None  # stops the worker (single-account install)
        self._db_failures: dict[str, int] = {}
        self._month_failures: dict[int, int] = {}  # queue id -> its own failures in a row
        #: Accounts whose backfill month met ReauthorizationRequired here, recorded once:
        #: the account's other months wait for a person too, and a failed run for each of
        #: them each interval (156 for 13 years) said nothing more.
        self._awaiting_person: set[str] = set()
        self._cycles = 0

    def handlers(self) -> dict[str, WorkHandler]:
        return {kind.value: self.handle for kind in Kind}

    async def handle(self, picked: PickedWork) -> None:
        """Run one picked unit; raises Requeue when it must come back later."""
        unit = Unit.decode(picked.kind, picked.payload)
        if self.stop.is_set():
            raise Requeue(0, "the worker is stopping")
        try:
            if not await self.fleet.serves(unit.account):
                if unit.kind is Kind.BACKFILL and await self.fleet.disabled(unit.account):
                    # Nothing plans months again: kept until the account is enabled.
                    raise Requeue(self.options.interval_s,
                                  f"account {unit.account} is disabled")  # fmt: skip
                log.info("%s ends: no worker serves account %s (disabled or removed from the "
                         "accounts table; with no rows there, not this worker's --account)",
                         unit, unit.account)  # fmt: skip
                return
            delay = await self._leased(unit, picked)
        except AccountBusy as exc:
            if exc.here:  # due again as soon as the account's units here end
                self._bounced.setdefault(unit.account, set()).add(picked.id)
                raise Requeue(PARKED_S, f"account {unit.account} runs another unit here "
                              "(due again when it ends)") from None  # fmt: skip
            if unit.kind is Kind.KEEPALIVE:  # its holder keeps the tokens fresh meanwhile
                raise Requeue(KEEP_ALIVE_EVERY_S, f"account held by {exc.holder}") from None
            raise Requeue(LEASE_RETRY_S * (1 + random.random()),
                          f"account {unit.account} is held by {exc.holder}") from None  # fmt: skip
        except ConfigError as exc:
            # A secret this worker cannot read (its variable unset here, say): said once
            # per interval until someone fixes it, the unit kept; a failed run in the
            # history, so `status` says why the account does not sync.
            log.error("%s cannot run on this worker: %s", unit, exc,
                      extra={"fields": {"account": unit.account}})  # fmt: skip
            await self._record_unrun(unit, picked, exc)
            raise Requeue(self.options.interval_s, str(exc)) from None
        except LeaseLost as exc:  # woken from a freeze: the account went on elsewhere
            log.warning("%s stops: %s", unit, exc, extra={"fields": {"account": unit.account}})
            raise Requeue(LEASE_RETRY_S, str(exc)) from None
        except DatabaseError as exc:  # the database went away before the unit could start
            raise Requeue(LEASE_RETRY_S, f"the database: {exc}") from None
        if delay is not None:
            raise Requeue(delay, f"{unit} is due again")

    async def _record_unrun(self, unit: Unit, picked: PickedWork, exc: ConfigError) -> None:
        """A unit that could not start here, as a failed run of its mode (best effort)."""
        mode = RECORDED_AS.get(unit.kind)
        if mode is not None:
            report = failed_report(mode, unit.account, utcnow(), exc)
            facts = {"worker": self.fleet.name, "unit": str(picked.id)}
            await record(self.fleet.runs(unit.account), report, facts)

    async def _leased(self, unit: Unit, picked: PickedWork) -> float | None:
        """The unit under its account's lease; then, once no unit of the account runs
        here any more, the ones put back meanwhile are due at once."""
        account, entered = unit.account, False
        try:
            async with self.fleet.lease(account, wait=unit.kind not in NO_WAIT) as leased:
                entered = True
                self._running[account] = self._running.get(account, 0) + 1
                return await self._run(unit, picked, leased)
        finally:
            if entered:
                self._running[account] -= 1
                if not self._running[account]:
                    del self._running[account]
                    self._hurry(account)

    def _hurry(self, account: str) -> None:
        """The account's units that went back to the queue while another of its units
        ran here may start now (not 2-4 s later: a backfill of short months would spend
        most of its time waiting)."""
        ids = self._bounced.pop(account, set())
        if ids and self.queue is not None:
            task = asyncio.create_task(self._hurry_until_queued(self.queue, ids))
            self._hurrying.add(task)
            task.add_done_callback(self._hurrying.discard)

    @staticmethod
    async def _hurry_until_queued(queue: WorkQueue, ids: set[int]) -> None:
        """A unit bounced a moment ago may still be on its way back to the queue: asked
        again for HURRY_FOR_S (parked PARKED_S otherwise). Ids another worker took and
        ran meanwhile are never found again, harmlessly."""
        left = set(ids)
        deadline = time.monotonic() + HURRY_FOR_S
        while left and time.monotonic() < deadline:
            with contextlib.suppress(DatabaseError):  # they are due in PARKED_S anyway
                left -= set(await queue.hurry(sorted(left)))
            if left:
                await asyncio.sleep(HURRY_PAUSE_S)

    async def _run(self, unit: Unit, picked: PickedWork, leased: Leased) -> float | None:
        """The unit's job; returns when it is due again (None: it is done)."""
        rt = leased.runtime
        facts = {"worker": self.fleet.name, "unit": str(picked.id)}
        async with _either(self.stop, leased.lost) as stop:
            if unit.kind is Kind.CYCLE:
                return await self._cycle(rt, stop, facts)
            if unit.kind is Kind.KEEPALIVE:
                await _keep_alive(rt)
                return KEEP_ALIVE_EVERY_S
            if unit.kind is Kind.INTEGRITY:
                return await self._integrity(rt, stop, facts)
            assert unit.month is not None
            return await self._backfill(rt, unit.month, stop, facts, picked.id)

    async def _cycle(
        self, rt: AccountRuntime, stop: asyncio.Event, facts: dict[str, str]
    ) -> float | None:
        single = await self.fleet.single()
        readiness = self.hooks.readiness if single else None
        try:
            result = await run_cycle(rt, self.options, stop, facts=facts,
                                     db_failures=self._db_failures.get(rt.account, 0),
                                     readiness=readiness)  # fmt: skip
        except ReauthorizationRequired as exc:
            if single:  # only a person can fix it: stop the worker, loudly
                self.fatal = exc
                self.stop.set()
            return self.options.interval_s
        self._awaiting_person.discard(rt.account)  # authorized: a month may say it again
        failures = self._db_failures.get(rt.account, 0) + 1 if result.database_failed else 0
        self._db_failures[rt.account] = failures
        with contextlib.suppress(DatabaseError):
            if readiness is not None:
                await check_readiness(rt, self.options.interval_s, readiness)
            else:
                observe_status(await rt.store.status(utcnow(), DEFAULT_POLICY))
        self._cycles += 1
        if self.hooks.after_cycle is not None:
            await self.hooks.after_cycle(rt, result.reports)
        if self.hooks.max_cycles is not None and self._cycles >= self.hooks.max_cycles:
            self.stop.set()
        return 0.0 if stop.is_set() else result.next_in_s

    async def _integrity(
        self, rt: AccountRuntime, stop: asyncio.Event, facts: dict[str, str]
    ) -> float | None:
        started_at, api_before = utcnow(), rt.client.api_stats()
        options = IntegrityOptions()
        store = rt.store
        try:
            report = await check_integrity(
                rt.client, store.orders, store.integrity, store.failures, rt.context(stop),
                deep=options.deep or deep_day(rt.account, started_at.date()),
                page_size=options.page_size,
            )  # fmt: skip
        except LeaseLost:
            raise
        except (TinyError, DatabaseError) as exc:
            note_failure(rt.account, exc)
            report = failed_unit(rt, "integrity", started_at, api_before, exc)
        await record(rt.store.runs, report, facts)
        if stop.is_set() and report.outcome is Outcome.INTERRUPTED:
            return 0.0
        return self.options.integrity_interval_s or None

    async def _backfill(
        self,
        rt: AccountRuntime,
        month: dt.date,
        stop: asyncio.Event,
        facts: dict[str, str],
        unit_id: int,
    ) -> float | None:
        started_at, api_before = utcnow(), rt.client.api_stats()
        # Details of the month's orders are left to the account's cycles (open and recent
        # orders first, within each cycle's budget).
        options = BackfillOptions(date_from=month, date_to=month, detail_budget=0)
        store = rt.store
        try:
            report = await backfill(rt.client, store.orders, store.metadata, options,
                                    rt.context(stop), census=False)  # fmt: skip
        except LeaseLost:
            raise
        except (TinyError, DatabaseError) as exc:
            note_failure(rt.account, exc)
            waits = isinstance(exc, ReauthorizationRequired)
            if not (waits and rt.account in self._awaiting_person):
                report = failed_unit(rt, "backfill", started_at, api_before, exc)
                title = f"backfill {month:%Y-%m}..{month:%Y-%m}"  # which month failed
                await record(rt.store.runs, dataclasses.replace(report, title=title), facts)
            if waits:
                self._awaiting_person.add(rt.account)
                return self.options.interval_s
            wait = BACKFILL_RETRY_S
            if isinstance(exc, TinyUnavailable) and rt.client.breaker.retry_at:
                wait = max(wait, rt.client.breaker.retry_at - time.monotonic())
            elif isinstance(exc, _THE_MONTHS_OWN):
                row = self._month_failures.get(unit_id, 0)
                self._month_failures[unit_id] = row + 1
                wait = min(BACKFILL_RETRY_S * 2**row, BACKFILL_RETRY_MAX_S)
            return wait
        self._month_failures.pop(unit_id, None)
        self._awaiting_person.discard(rt.account)
        await record(rt.store.runs, report, facts)
        return 0.0 if report.outcome is Outcome.INTERRUPTED else None


async def _keep_alive(rt: AccountRuntime) -> None:
    try:
        await rt.client.keep_alive()
    except ReauthorizationRequired as exc:
        note_failure(rt.account, exc)
        log.error("account %s: %s", rt.account, exc, extra={"fields": {"account": rt.account}})
    except (TinyError, DatabaseError) as exc:
        log.warning("could not renew the refresh token of account %s yet: %s", rt.account, exc,
                    extra={"fields": {"account": rt.account}})  # fmt: skip


@contextlib.asynccontextmanager
async def _either(first: asyncio.Event, second: asyncio.Event) -> AsyncIterator[asyncio.Event]:
    """An event set as soon as either is."""
    both = asyncio.Event()

    async def watch() -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in (first, second)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            both.set()
        finally:
            for w in waits:
                w.cancel()

    watcher = asyncio.create_task(watch(), name="unit-stop")
    try:
        yield both
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
