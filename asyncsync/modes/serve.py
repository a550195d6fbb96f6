"""``--mode serve``: the long-running service. An incremental cycle every ``--interval``
(15 minutes by default; the first run is a full sync), due import-failure retries after
each cycle, each cycle's reports kept in the run history, and on ``--metrics-port``:
Prometheus ``/metrics``, ``/healthz`` (the process answers) and ``/readyz`` (the database
answers, the token is valid, the last success is recent). SIGTERM drains: the cycle in
flight stops asking for more, merges what it has, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from .. import metrics
from ..clock import utcnow
from ..errors import (
    AsyncsyncError,
    DatabaseError,
    LockBusy,
    ReauthorizationRequired,
    TinyAuthError,
    TinyError,
)
from ..jobs.retry import DEFAULT_POLICY, retry_due
from ..jobs.sync import sync_once
from ..options import CommonOptions, ServeOptions
from ..overview import freshness_limit, observe_status
from ..readiness import Readiness
from ..report import RunReport, headline, log_fields, observe
from ..runtime import Runtime, open_runtime
from ..tasks import unwrap
from . import failed_report, note_failure

log = logging.getLogger(__name__)

#: Called after each cycle (tests watch cycles and change the world between them).
AfterCycle = Callable[[Runtime, list[RunReport]], Awaitable[object]]
#: Seconds between readiness checks while no cycle runs (at most; shorter intervals win).
READINESS_EVERY_S = 30.0


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
        await _record(rt, report)
    return reports


async def _record(rt: Runtime, report: RunReport) -> None:
    """Metrics, one log line and a ``sync_runs`` row for a cycle's report (best effort)."""
    observe(report)
    log.info(headline(report), extra={"fields": log_fields(report)})
    try:
        await rt.store.runs.record(report, invoked_as="serve")
    except DatabaseError as exc:
        log.warning("the %s could not be recorded in sync_runs: %s", report.title, exc)


async def check_readiness(
    rt: Runtime, options: ServeOptions, readiness: Readiness, now: dt.datetime | None = None
) -> None:
    """Re-check the database, the stored token and freshness; refresh the gauges."""
    now = now or utcnow()
    try:
        await rt.store.ping()
        status = await rt.store.status(now, DEFAULT_POLICY)
    except DatabaseError as exc:
        readiness.set("database", f"unreachable: {exc}")
        return
    readiness.clear("database")
    observe_status(status)
    # The access token is refreshed only when a request needs one, so it may lapse between
    # cycles; expired for longer than an interval (and the refresh margin) means no cycle
    # could refresh it.
    expires = status.token.access_expires_at if status.token else None
    grace = dt.timedelta(seconds=options.interval_s + 300)
    if expires is not None and now - expires > grace:
        readiness.set("token", f"the access token expired at {expires:%Y-%m-%d %H:%M} UTC "
                      "and no cycle has refreshed it")  # fmt: skip
    else:
        readiness.clear("token")
    limit = freshness_limit(options.interval_s)
    last = status.last_synced_at
    if last is None:
        readiness.set("freshness", "no full sync or cycle has completed yet")
    elif now - last > limit:
        ago = int((now - last).total_seconds() // 60)
        readiness.set("freshness", f"last success {ago} min ago (limit {limit})")
    else:
        readiness.clear("freshness")


async def _watch(
    rt: Runtime, options: ServeOptions, readiness: Readiness, stop: asyncio.Event
) -> None:
    """Keep the readiness (and the gauges) current between cycles."""
    while not stop.is_set():
        await check_readiness(rt, options, readiness)
        await _sleep_until(stop, min(READINESS_EVERY_S, options.interval_s))


async def serve_loop(
    rt: Runtime,
    options: ServeOptions,
    stop: asyncio.Event,
    *,
    after_cycle: AfterCycle | None = None,
    max_cycles: int | None = None,
    readiness: Readiness | None = None,
) -> int:
    """Run cycles until ``stop``; transient failures are logged and retried next cycle."""
    readiness = readiness or Readiness()
    cycles = 0
    while not stop.is_set() and (max_cycles is None or cycles < max_cycles):
        cycles += 1
        reports: list[RunReport] = []
        started_at = utcnow()
        try:
            reports = await cycle(rt, options, stop)
            readiness.clear("authorization")
            metrics.REAUTHORIZATION_REQUIRED.labels(rt.account).set(0)
        except LockBusy as exc:
            log.warning("skipping this cycle: %s", exc)
        except (TinyError, DatabaseError) as exc:
            note_failure(rt.account, exc)
            if isinstance(exc, TinyAuthError):
                readiness.set("authorization", f"{type(exc).__name__}: {exc}")
            await _record(rt, failed_report("sync", rt.account, started_at, exc))
            if isinstance(exc, ReauthorizationRequired):
                raise  # only a person can fix it: stop the service, loudly
            log.error("cycle %d failed, retrying in %.0f s: %s", cycles, options.interval_s, exc)
        with contextlib.suppress(AsyncsyncError):
            await check_readiness(rt, options, readiness)
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
    readiness = Readiness()
    async with contextlib.AsyncExitStack() as stack:
        rt = await stack.enter_async_context(
            open_runtime(common, open_statuses=options.cycle.open_statuses)
        )
        if options.metrics_port is not None:
            port = await stack.enter_async_context(
                metrics.metrics_server(
                    options.metrics_host, options.metrics_port, readiness.reasons
                )
            )
            base = f"http://{options.metrics_host}:{port}"
            log.info("metrics on %s/metrics, health on %s/healthz and %s/readyz", base, base, base)
        return await unwrap(_serve(rt, options, stop, readiness))
    return 0  # pragma: no cover - the exit stack never swallows


async def _serve(
    rt: Runtime, options: ServeOptions, stop: asyncio.Event, readiness: Readiness
) -> int:
    """The cycles, with the readiness watcher beside them (named, and stopping the
    service if it dies)."""
    done = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_watch(rt, options, readiness, done), name="readiness-watch")
        try:
            return await serve_loop(rt, options, stop, readiness=readiness)
        finally:
            done.set()
