"""``--mode serve``: the long-running service. An incremental cycle every ``--interval``
(15 minutes by default; the first run is a full sync), due import-failure retries after
each cycle, Prometheus ``/metrics`` on ``--metrics-port``. SIGTERM drains: the cycle in
flight stops asking for more, merges what it has, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from .. import metrics
from ..errors import DatabaseError, LockBusy, ReauthorizationRequired, TinyError
from ..jobs.retry import retry_due
from ..jobs.sync import sync_once
from ..options import CommonOptions, ServeOptions
from ..report import RunReport, log_fields, observe
from ..runtime import Runtime, open_runtime

log = logging.getLogger(__name__)

#: Called after each cycle (tests watch cycles and change the world between them).
AfterCycle = Callable[[Runtime, list[RunReport]], Awaitable[object]]


async def _sleep_until(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def cycle(rt: Runtime, options: ServeOptions, stop: asyncio.Event) -> list[RunReport]:
    """One cycle under the account's run lock: a sync, then the retries that are due."""
    ctx = rt.context(stop)
    store = rt.store
    async with store.lock("serve"):
        reports = [await sync_once(rt.client, store.orders, store.metadata, options.cycle, ctx)]
        if not stop.is_set():
            reports.append(await retry_due(rt.client, store.orders, store.failures, ctx))
    for report in reports:
        observe(report)
        log.info("%s %s", report.title, report.outcome.value, extra={"fields": log_fields(report)})
    return reports


async def serve_loop(
    rt: Runtime,
    options: ServeOptions,
    stop: asyncio.Event,
    *,
    after_cycle: AfterCycle | None = None,
    max_cycles: int | None = None,
) -> int:
    """Run cycles until ``stop``; transient failures are logged and retried next cycle."""
    cycles = 0
    while not stop.is_set() and (max_cycles is None or cycles < max_cycles):
        cycles += 1
        reports: list[RunReport] = []
        try:
            reports = await cycle(rt, options, stop)
        except ReauthorizationRequired:
            raise  # only a person can fix it: stop the service, loudly
        except LockBusy as exc:
            log.warning("skipping this cycle: %s", exc)
        except (TinyError, DatabaseError) as exc:
            metrics.RUNS.labels(rt.account, "sync", "failed").inc()
            log.error("cycle %d failed, retrying in %.0f s: %s", cycles, options.interval_s, exc)
        if after_cycle is not None:
            await after_cycle(rt, reports)
        await _sleep_until(stop, options.interval_s)
    return 0


async def run(common: CommonOptions, options: ServeOptions, stop: asyncio.Event) -> int:
    """Entry point of ``--mode serve``."""
    budget = options.detail_budget(common.tiny.rate_limit_per_minute)
    options = dataclasses.replace(
        options, cycle=dataclasses.replace(options.cycle, detail_budget=budget)
    )
    async with contextlib.AsyncExitStack() as stack:
        rt = await stack.enter_async_context(
            open_runtime(common, open_statuses=options.cycle.open_statuses)
        )
        if options.metrics_port is not None:
            port = await stack.enter_async_context(
                metrics.metrics_server(options.metrics_host, options.metrics_port)
            )
            log.info("metrics on http://%s:%d/metrics", options.metrics_host, port)
        return await serve_loop(rt, options, stop)
    return 0  # pragma: no cover - the exit stack never swallows
