"""``--mode serve``: the long-running service. An incremental cycle every ``--interval``
(15 minutes by default; the first run is a full sync), due import-failure retries after
each cycle, each cycle's reports kept in the run history, and on ``--metrics-port``:
Prometheus ``/metrics``, ``/healthz`` (the process answers) and ``/readyz`` (the database
answers, Tiny answers, the token is valid, the last success is recent). SIGTERM drains:
the cycle in flight stops asking for more, merges what it has, and the process exits 0.

Dependencies come and go, and serve outlives them: a cycle that meets a Tiny outage (the
client's circuit opened) or a database error fails — recorded as a failed run, the last
success does not advance, ``/readyz`` and ``--mode health`` say why — and the next cycle
waits for the end of the cool-down (Tiny) or tries again sooner, with backoff (the
database). Only a refused authorization stops the service: no retry fixes it. The refresh
token is renewed past half its lifetime even while idle.
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
    DatabaseUnavailable,
    LockBusy,
    ReauthorizationRequired,
    TinyAuthError,
    TinyError,
    TinyUnavailable,
)
from ..jobs.retry import DEFAULT_POLICY, retry_due
from ..jobs.sync import sync_once
from ..options import CommonOptions, ServeOptions
from ..overview import freshness_limit, observe_status
from ..readiness import Readiness
from ..report import RunReport, headline, log_fields, observe
from ..runtime import Runtime, open_runtime
from ..tasks import unwrap
from . import SERVE_HEALTH_KEY, failed_report, note_failure

log = logging.getLogger(__name__)

#: Called after each cycle (tests watch cycles and change the world between them).
AfterCycle = Callable[[Runtime, list[RunReport]], Awaitable[object]]
#: Seconds between readiness checks while no cycle runs (at most; shorter intervals win).
READINESS_EVERY_S = 30.0
#: While idle, the refresh token's age is checked this often.
KEEP_ALIVE_EVERY_S = 600.0
#: After a database failure the next cycle comes sooner: 5 s, 10 s, … up to the interval.
DB_RETRY_FIRST_S = 5.0


async def _sleep_until(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


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
        await _record(rt, report)
    return reports


async def _record(rt: Runtime, report: RunReport) -> None:
    """Metrics, one log line and a ``sync_runs`` row for a cycle's report (best effort)."""
    observe(report)
    level = logging.INFO if report.outcome.value in ("ok", "interrupted") else logging.WARNING
    log.log(level, headline(report), extra={"fields": log_fields(report)})
    try:
        await rt.store.runs.record(report, invoked_as="serve")
    except DatabaseError as exc:
        log.warning("the %s could not be recorded in sync_runs: %s", report.title, exc)


async def check_readiness(
    rt: Runtime, options: ServeOptions, readiness: Readiness, now: dt.datetime | None = None
) -> None:
    """Re-check the database, Tiny, the stored token and freshness; refresh the gauges."""
    now = now or utcnow()
    breaker = rt.client.breaker
    if breaker.retry_at:
        readiness.set("tiny", f"unavailable: {breaker.reason}")
    else:
        readiness.clear("tiny")
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
        with contextlib.suppress(AsyncsyncError):
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
    """Run cycles until ``stop``; an outage fails a cycle, never the service."""
    readiness = readiness or Readiness()
    cycles = db_failures = 0
    while not stop.is_set() and (max_cycles is None or cycles < max_cycles):
        cycles += 1
        reports: list[RunReport] = []
        wait_s = options.interval_s
        started_at = utcnow()
        try:
            await rt.client.keep_alive()
            reports = await cycle(rt, options, stop)
            db_failures = 0
            readiness.clear("authorization")
            metrics.REAUTHORIZATION_REQUIRED.labels(rt.account).set(0)
            await _say_health(rt, None)
        except LockBusy as exc:
            log.warning("skipping this cycle: %s", exc)
        except (TinyError, DatabaseError) as exc:
            note_failure(rt.account, exc)
            if isinstance(exc, TinyAuthError):
                readiness.set("authorization", f"{type(exc).__name__}: {exc}")
            failed = failed_report("sync", rt.account, started_at, exc)
            reports = [failed]
            await _record(rt, failed)
            if isinstance(exc, ReauthorizationRequired):
                await _say_health(rt, "re-authorization required: run `asyncsync authorize`")
                raise  # only a person can fix it: stop the service, loudly
            await _say_health(rt, f"last cycle failed: {exc}")
            wait_s, what = _next_attempt(rt, options, exc, db_failures)
            db_failures = db_failures + 1 if isinstance(exc, DatabaseUnavailable) else 0
            log.error("cycle %d failed (%s); next attempt in %.0f s: %s", cycles, what, wait_s, exc)
        with contextlib.suppress(AsyncsyncError):
            await check_readiness(rt, options, readiness)
        if after_cycle is not None:
            await after_cycle(rt, reports)
        await _idle(rt, stop, wait_s)
    return 0


def _next_attempt(
    rt: Runtime, options: ServeOptions, exc: AsyncsyncError, db_failures: int
) -> tuple[float, str]:
    """When to try again after a failed cycle, and what failed."""
    if isinstance(exc, TinyUnavailable) and rt.client.breaker.retry_at:
        # While the circuit is open, asking would only be refused: wait for its end.
        return max(options.interval_s, rt.client.breaker.retry_at - time.monotonic()), "Tiny"
    if isinstance(exc, DatabaseUnavailable):
        # The database is back soon, usually: come back sooner than a whole interval.
        return min(options.interval_s, DB_RETRY_FIRST_S * 2**db_failures), "the database"
    return options.interval_s, "Tiny" if isinstance(exc, TinyError) else "the database"


async def _say_health(rt: Runtime, problem: str | None) -> None:
    """Tell ``--mode health`` (another process) how the last cycle went."""
    value = {"ok": problem is None, "problem": problem, "at": iso(utcnow())}
    with contextlib.suppress(DatabaseError):  # the database may be what failed
        await rt.store.metadata.set(SERVE_HEALTH_KEY, orjson.dumps(value).decode())


async def _idle(rt: Runtime, stop: asyncio.Event, seconds: float) -> None:
    """Sleep until the next cycle (or ``stop``), keeping the refresh token alive."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not stop.is_set():
        await _sleep_until(stop, min(left, KEEP_ALIVE_EVERY_S))
        if not stop.is_set() and deadline - time.monotonic() > 0:
            try:
                await rt.client.keep_alive()
            except ReauthorizationRequired:
                raise
            except (TinyError, DatabaseError) as exc:
                log.warning("could not renew the refresh token yet: %s", exc)


async def run(common: CommonOptions, options: ServeOptions, stop: asyncio.Event) -> int:
    """Entry point of ``--mode serve``."""
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
