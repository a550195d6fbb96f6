"""A worker: picks units from the queue and runs them until stopped.

Any number of workers (processes, hosts, containers) share one database: each runs the
same code, the queue hands every unit to one of them, and a unit whose worker died is
taken over by another once its heartbeat lapses. A single-process ``serve`` is one
worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..errors import AsyncsyncError, DatabaseError, DatabaseUnavailable
from ..options import ServeOptions
from ..readiness import Readiness
from ..seams import WorkQueue
from ..tasks import Stopped, until_stopped, unwrap
from .agreement import Agreement
from .handlers import Dispatcher, Hooks
from .health import observe_queue, refresh
from .planner import PLAN_EVERY, plan
from .ports import Fleet
from .units import BACKGROUND, PLAN

log = logging.getLogger(__name__)

#: Seconds between refreshes of the accounts' gauges and readiness (``/readyz``).
READINESS_EVERY_S = 30.0
#: Seconds between pings of the database and of the leases' session: a lease lost with its
#: session stops its units this soon, before another worker can merge alongside for long.
LEASE_CHECK_S = 5.0
#: After the queue lost the database it picks again after 5 s, 10 s, … at most a minute
#: (and at most an interval); a queue that had been working that long starts over at 5 s.
DB_RETRY_FIRST_S = 5.0
DB_RETRY_MAX_S = 60.0


async def work(
    queue: WorkQueue,
    fleet: Fleet,
    options: ServeOptions,
    stop: asyncio.Event,
    *,
    hooks: Hooks | None = None,
) -> int:
    """Run units until ``stop``; then let the running ones drain and re-queue."""
    hooks = hooks or Hooks()
    dispatcher = Dispatcher(fleet, options, stop, hooks, queue)

    async def tick() -> None:
        await plan(fleet, queue, options)

    log.info(
        "worker %s: %d slots, %d for backfill and integrity across every worker",
        fleet.name, options.slots, options.background_slots,
        extra={"fields": {"event": "worker_started", "worker": fleet.name}},
    )  # fmt: skip
    done = asyncio.Event()
    agreement = Agreement(fleet, options)

    async def refreshed_all() -> None:
        # Beside the gauges: the settings every worker must share, said and compared.
        await agreement.check()
        with contextlib.suppress(DatabaseError):  # the database's absence is said below
            observe_queue(await queue.census())  # one statement, before every account's
        await refresh(fleet, options.interval_s, hooks.readiness)

    async def watch() -> None:
        loop = asyncio.get_running_loop()
        refreshed = -READINESS_EVERY_S
        # The gauges of every enabled account take seconds to read (hundreds of accounts):
        # read beside the pings, never in their way, since the lease session ends once
        # silent for the heartbeat timeout.
        refreshing: asyncio.Task[None] | None = None
        try:
            while not done.is_set():
                if refreshing is not None and refreshing.done():
                    refreshing.result()  # what it raised is the worker's, as before
                    refreshing, refreshed = None, loop.time()
                if (
                    await _check(fleet, hooks.readiness)
                    and refreshing is None
                    and loop.time() - refreshed >= READINESS_EVERY_S
                ):
                    refreshing = asyncio.create_task(refreshed_all(), name="worker-refresh")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), LEASE_CHECK_S)
        finally:
            if refreshing is not None:
                refreshing.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await refreshing

    async def pick() -> None:
        """The queue's loop, started again after the database came back."""
        failures = 0
        while not stop.is_set():
            started = asyncio.get_running_loop().time()
            try:
                # A stop ends the wait for a database away (each statement tries again for
                # --db-reconnect seconds): nothing runs yet, so nothing is left to drain.
                if failures:  # back, perhaps restored or created anew: tables first
                    await until_stopped(fleet.reinstall(), stop)
                # The first plan too: a database lost at that moment is an outage to wait
                # out like any other (it ended serve with exit 6).
                await until_stopped(plan(fleet, queue, options), stop)
                await queue.work(
                    dispatcher.handlers(),
                    slots=options.slots,
                    limits={kind.value: options.background_slots for kind in BACKGROUND},
                    heartbeat_s=options.heartbeat_s,
                    ticks={PLAN: (PLAN_EVERY, tick)},
                    stop=stop,
                )
                return
            except Stopped:
                return
            except DatabaseUnavailable as exc:
                if asyncio.get_running_loop().time() - started > DB_RETRY_MAX_S:
                    failures = 0  # it had been working: a new outage starts the backoff over
                failures += 1
                backoff_s = DB_RETRY_FIRST_S * 2 ** (failures - 1)
                wait_s = max(1.0, min(DB_RETRY_MAX_S, options.interval_s, backoff_s))
                if hooks.readiness is not None:
                    hooks.readiness.set("database", f"unreachable: {exc}")
                log.error("the work queue lost the database; picking again in %.0f s: %s",
                          wait_s, exc)  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait_s)
                await _check(fleet, hooks.readiness)  # ready again as soon as it answers

    async def run() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(watch(), name="worker-watch")
            try:
                await pick()
            finally:
                done.set()

    await unwrap(run())
    if dispatcher.fatal is not None:
        raise dispatcher.fatal
    # The drain ended (a drain cut at its deadline never gets here): without this line a
    # stopped worker's log ended at its last unit, like one that died.
    log.info(
        "worker %s stopped: its units in flight merged what they had and went back to the "
        "queue", fleet.name, extra={"fields": {"event": "worker_stopped", "worker": fleet.name}},
    )  # fmt: skip
    return 0


async def _check(fleet: Fleet, readiness: Readiness | None) -> bool:
    """Whether the database answers (the readiness of every worker)."""
    try:
        await fleet.ping()
    except DatabaseError as exc:
        if readiness is not None:
            readiness.set("database", f"unreachable: {exc}")
        return False
    except AsyncsyncError as exc:  # pragma: no cover - a probe says what it met
        log.warning("worker check: %s", exc)
        return False
    if readiness is not None:
        readiness.clear("database")
    return True
