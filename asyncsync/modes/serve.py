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
next one comes after the cool-down, or sooner with backoff. Only a refused authorization
of a single-account install stops the service (exit 4); with an accounts table, that
account waits for ``asyncsync authorize --account KEY`` and the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .. import metrics
from ..options import CommonOptions, ServeOptions
from ..readiness import Readiness
from ..runtime import Runtime
from ..runtime.fleet import open_fleet, pinned_fleet
from ..work.handlers import AfterCycle, Hooks
from ..work.health import check_readiness as check_account
from ..work.worker import work

log = logging.getLogger(__name__)

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


async def run(common: CommonOptions, options: ServeOptions, stop: asyncio.Event) -> int:
    """Entry point of ``--mode serve``."""
    readiness = Readiness()
    async with contextlib.AsyncExitStack() as stack:
        fleet = await stack.enter_async_context(open_fleet(common, options))
        if options.metrics_port is not None:
            port = await stack.enter_async_context(
                metrics.metrics_server(
                    options.metrics_host, options.metrics_port, readiness.reasons
                )
            )
            base = f"http://{options.metrics_host}:{port}"
            log.info("metrics on %s/metrics, health on %s/healthz and %s/readyz", base, base, base)
        hooks = Hooks(readiness=readiness)
        return await work(fleet.database.queue, fleet, options, stop, hooks=hooks)
    return 0  # pragma: no cover - the exit stack never swallows
