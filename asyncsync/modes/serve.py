"""``--mode serve``: a worker. It picks units of work from the queue every worker of the
database shares — each account's cycle (an incremental sync every ``--interval``, the
first one a full sync, then the import-failure retries that are due), its integrity
check, its refresh-token keep-alive, the months of a backfill — and runs them, many
accounts at once, each account in one process at a time. Run one, or fifty: the same
code. On ``--metrics-port``: Prometheus ``/metrics``, ``/healthz`` (the process answers)
and ``/readyz`` (the database answers; for a single account also Tiny, the token and
freshness). SIGTERM drains: units in flight stop asking for more, merge what they have
and go back to the queue, and the process exits 0.

Dependencies come and go, and serve outlives them: a cycle that meets a Tiny outage or a
database error fails — recorded as a failed run, ``--mode health`` says why — and the
next one comes after the cool-down, or sooner with backoff. A database that is away when
serve starts is waited for (``/healthz`` alive, ``/readyz`` naming it meanwhile); the
embedded one, killed under a running worker, is started again (``Fleet.ping``). Only a
refused authorization of a single-account install stops the service (exit 4); with an
accounts table, that account waits for ``asyncsync authorize --account KEY`` and the
others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .. import metrics
from ..errors import ConfigError, DatabaseUnavailable
from ..options import CommonOptions, ServeOptions
from ..readiness import Readiness
from ..runtime import Runtime
from ..runtime.fleet import Fleet, open_fleet, pinned_fleet
from ..tasks import Stopped, until_stopped
from ..work.handlers import AfterCycle, Hooks
from ..work.health import check_readiness as check_account
from ..work.worker import work

log = logging.getLogger(__name__)

#: Pauses between attempts to reach a database that is away at start, seconds (the last
#: one repeats for as long as it takes).
START_PAUSES_S = (1.0, 2.0, 5.0, 10.0, 30.0)
#: Connections a worker cannot do with fewer of: the queue's listener and the lease
#: session hold one each for good, the queue's claims and heartbeats need one, and its
#: units at least one. With two, every unit waited for a connection for ever (and /readyz
#: blamed a frozen database); with three, now and then.
SERVE_MIN_POOL = 4

__all__ = ["AfterCycle", "check_readiness", "run", "serve_loop"]


async def check_readiness(
    rt: Runtime, options: ServeOptions, readiness: Readiness, now: object = None
) -> None:
    """The readiness of one account (a single-account worker's ``/readyz``)."""
    await check_account(rt, options.interval_s, readiness, now)  # type: ignore[arg-type]


async def serve_loop(
    rt: Runtime,
    options: ServeOptions,
    stop: asyncio.Event,
    *,
    after_cycle: AfterCycle | None = None,
    max_cycles: int | None = None,
    readiness: Readiness | None = None,
) -> int:
    """A worker whose one account is ``rt``'s, on its runtime: the queue, the planner and
    the handlers of every worker, with hooks to watch its cycles."""
    hooks = Hooks(after_cycle=after_cycle, max_cycles=max_cycles, readiness=readiness)
    async with pinned_fleet(rt, options) as fleet:
        return await work(rt.database.queue, fleet, options, stop, hooks=hooks)


def check(common: CommonOptions) -> None:
    """Refuse, before anything starts, a pool the worker cannot work with."""
    pool_size = common.database.pool_size
    if pool_size is not None and pool_size < SERVE_MIN_POOL:
        raise ConfigError(
            f"--db-pool-size (ASYNCSYNC_DB_POOL_SIZE) {pool_size} is too small for serve: a "
            f"worker needs at least {SERVE_MIN_POOL} connections (the queue's listener, the "
            "lease session, the queue's claims and heartbeats, its units); leave it unset to "
            "fit the pool to --slots"
        )


async def run(common: CommonOptions, options: ServeOptions, stop: asyncio.Event) -> int:
    """Entry point of ``--mode serve``."""
    check(common)
    if options.slots <= 2 * options.background_slots:
        log.warning(
            "--slots %d is not above twice --background-slots %d: backfill months and "
            "integrity checks can fill every slot of this worker, and cycles wait for "
            "another worker (or for them to end)", options.slots, options.background_slots,
        )  # fmt: skip
    readiness = Readiness()
    # Not ready until the database has answered once: a probe that came while the pool
    # was still connecting (or the embedded server starting) was told 200.
    readiness.set("database", "not reached yet: serve is starting")
    async with contextlib.AsyncExitStack() as stack:
        if options.metrics_port is not None:  # first: health answers while the db is away
            listener = metrics.metrics_server(
                options.metrics_host, options.metrics_port, readiness.reasons
            )
            try:
                port = await stack.enter_async_context(listener)
            except OSError as exc:  # a host that does not resolve, a port in use
                raise ConfigError(
                    f"--metrics-host/--metrics-port (ASYNCSYNC_METRICS_HOST/_PORT): cannot "
                    f"listen on {options.metrics_host}:{options.metrics_port}: "
                    f"{exc.strerror or exc}"
                ) from None
            base = f"http://{options.metrics_host}:{port}"
            log.info("metrics on %s/metrics, health on %s/healthz and %s/readyz", base, base, base)
        fleet = await _open_fleet_when_reachable(stack, common, options, stop, readiness)
        if fleet is None:
            return 0  # stopped while waiting for the database
        hooks = Hooks(readiness=readiness)
        return await work(fleet.database.queue, fleet, options, stop, hooks=hooks)
    return 0  # pragma: no cover - the exit stack never swallows


async def _open_fleet_when_reachable(
    stack: contextlib.AsyncExitStack,
    common: CommonOptions,
    options: ServeOptions,
    stop: asyncio.Event,
    readiness: Readiness,
) -> Fleet | None:
    """The worker's fleet, once the database answers (None: stopped before it did). A
    database that refuses us for good (a wrong password, no such database) is an error
    at once; one that is away (down, restarting, read-only) is waited for."""
    attempt = 0
    while True:
        try:
            # A database that does not answer held a stopped serve for its connect timeout.
            opening = stack.enter_async_context(open_fleet(common, options))
            fleet: Fleet = await until_stopped(opening, stop)
        except Stopped:
            return None
        except DatabaseUnavailable as exc:
            pause = START_PAUSES_S[min(attempt, len(START_PAUSES_S) - 1)]
            attempt += 1
            readiness.set("database", f"unreachable: {exc}")
            log.warning(
                "the database is unavailable at start (%s); trying again in %.0f s", exc, pause,
                extra={"fields": {"event": "database_unavailable", "attempt": attempt}},
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            if stop.is_set():
                return None
            continue
        readiness.clear("database")
        return fleet
