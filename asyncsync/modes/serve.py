"""``--mode serve``: the long-running service. An incremental cycle every ``--interval``
(15 minutes by default; the first run is a full sync), due import-failure retries after
each cycle, Prometheus ``/metrics`` on ``--metrics-port``. SIGTERM drains: the cycle in
flight stops asking for more, merges what it has, and the process exits 0.

Dependencies come and go, and serve outlives them: a cycle that meets a Tiny outage (the
client's circuit opened) or a database error fails — recorded as a failed run, the last
success does not advance, ``--mode health`` says why — and the next cycle waits for the
end of the cool-down. Only a refused authorization stops the service: no retry fixes it.
The refresh token is renewed past half its lifetime even while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

import orjson

from .. import metrics
from ..clock import iso, utcnow
from ..errors import (
    AsyncsyncError,
    DatabaseError,
    LockBusy,
    ReauthorizationRequired,
    TinyError,
)
from ..jobs.retry import retry_due
from ..jobs.sync import sync_once
from ..options import CommonOptions, ServeOptions
from ..report import Outcome, RunReport, log_fields, observe
from ..runtime import Runtime, open_runtime
from . import SERVE_HEALTH_KEY

log = logging.getLogger(__name__)

#: Called after each cycle (tests watch cycles and change the world between them).
AfterCycle = Callable[[Runtime, list[RunReport]], Awaitable[object]]
#: While idle, the refresh token's age is checked this often.
KEEP_ALIVE_EVERY_S = 600.0


async def cycle(rt: Runtime, options: ServeOptions, stop: asyncio.Event) -> list[RunReport]:
    """One cycle under the account's run lock: a sync, then the retries that are due."""
    ctx = rt.context(stop)
    store = rt.store
    # Detail requests the cycle may spend: at the pace the account's quota allows now.
    budget = options.detail_budget(rt.client.api_stats().quota_per_minute)
    sync_options = dataclasses.replace(options.cycle, detail_budget=budget)
    async with store.lock("serve"):
        reports = [await sync_once(rt.client, store.orders, store.metadata, sync_options, ctx)]
        if not stop.is_set():
            reports.append(await retry_due(rt.client, store.orders, store.failures, ctx))
    for report in reports:
        _finished(report)
    return reports


def _finished(report: RunReport) -> None:
    observe(report)
    level = logging.INFO if report.outcome in (Outcome.OK, Outcome.INTERRUPTED) else logging.WARNING
    log.log(
        level, "%s %s", report.title, report.outcome.value, extra={"fields": log_fields(report)}
    )


async def serve_loop(
    rt: Runtime,
    options: ServeOptions,
    stop: asyncio.Event,
    *,
    after_cycle: AfterCycle | None = None,
    max_cycles: int | None = None,
) -> int:
    """Run cycles until ``stop``; an outage fails a cycle, never the service."""
    cycles = 0
    while not stop.is_set() and (max_cycles is None or cycles < max_cycles):
        cycles += 1
        reports: list[RunReport] = []
        wait_s = options.interval_s
        started_at = utcnow()
        try:
            await rt.client.keep_alive()
            reports = await cycle(rt, options, stop)
            await _say_health(rt, None)
        except ReauthorizationRequired:
            await _say_health(rt, "re-authorization required: run `asyncsync authorize`")
            raise  # only a person can fix it: stop the service, loudly
        except LockBusy as exc:
            log.warning("skipping this cycle: %s", exc)
        except (TinyError, DatabaseError) as exc:
            what = "Tiny" if isinstance(exc, TinyError) else "the database"
            failed = _failed(rt, started_at, exc)
            reports = [failed]
            _finished(failed)
            await _say_health(rt, f"last cycle failed: {exc}")
            # While the circuit is open, asking would only be refused: wait for its end.
            if rt.client.breaker.retry_at:
                wait_s = max(wait_s, rt.client.breaker.retry_at - time.monotonic())
            log.error("cycle %d failed (%s); next attempt in %.0f s: %s", cycles, what, wait_s, exc)
        if after_cycle is not None:
            await after_cycle(rt, reports)
        await _idle(rt, stop, wait_s)
    return 0


def _failed(rt: Runtime, started_at: dt.datetime, exc: AsyncsyncError) -> RunReport:
    return RunReport(
        mode="sync",
        account=rt.account,
        started_at=started_at,
        finished_at=utcnow(),
        outcome=Outcome.FAILED,
        title="serve cycle",
        errors=[f"{type(exc).__name__}: {exc}"],
    )


async def _say_health(rt: Runtime, problem: str | None) -> None:
    """Tell ``--mode health`` (another process) how the last cycle went."""
    value = {"ok": problem is None, "problem": problem, "at": iso(utcnow())}
    with contextlib.suppress(DatabaseError):  # the database may be what failed
        await rt.store.metadata.set(SERVE_HEALTH_KEY, orjson.dumps(value).decode())


async def _idle(rt: Runtime, stop: asyncio.Event, seconds: float) -> None:
    """Sleep until the next cycle (or ``stop``), keeping the refresh token alive."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(left, KEEP_ALIVE_EVERY_S))
        if not stop.is_set() and deadline - time.monotonic() > 0:
            try:
                await rt.client.keep_alive()
            except ReauthorizationRequired:
                raise
            except (TinyError, DatabaseError) as exc:
                log.warning("could not renew the refresh token yet: %s", exc)


async def run(common: CommonOptions, options: ServeOptions, stop: asyncio.Event) -> int:
    """Entry point of ``--mode serve``."""
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
