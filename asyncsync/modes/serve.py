"""``--mode serve``: the long-running service. An incremental cycle every ``--interval``
(15 minutes by default; the first run is a full sync), due import-failure retries after
each cycle, Prometheus ``/metrics`` on ``--metrics-port``. SIGTERM drains: the cycle in
flight stops asking for more, merges what it has, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from .. import metrics
from ..config import Settings
from ..errors import DatabaseError, LockBusy, ReauthorizationRequired, TinyError
from ..locks import account_lock
from ..runtime import Runtime, open_runtime
from .sync import sync_once

log = logging.getLogger(__name__)

#: Extra work run after each cycle under the same lock (the retry of import failures).
AfterCycle = Callable[[Runtime, asyncio.Event], Awaitable[object]]


async def _sleep_until(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def serve_loop(
    rt: Runtime,
    *,
    stop: asyncio.Event,
    interval_s: float,
    after_cycle: AfterCycle | None = None,
    max_cycles: int | None = None,
) -> int:
    """Run cycles until ``stop``; transient failures are logged and retried next cycle."""
    cycles = 0
    while not stop.is_set() and (max_cycles is None or cycles < max_cycles):
        cycles += 1
        try:
            async with account_lock(rt.pool, rt.settings.account, "serve"):
                report = await sync_once(rt, full=False, stop=stop, stream=sys.stderr)
                log.info(
                    "%s cycle %d finished: %d history rows", report.kind, cycles, report.changes
                )
                if after_cycle is not None and not stop.is_set():
                    await after_cycle(rt, stop)
        except ReauthorizationRequired:
            raise  # only a person can fix it: stop the service, loudly
        except LockBusy as exc:
            log.warning("skipping this cycle: %s", exc)
        except (TinyError, DatabaseError) as exc:
            metrics.RUN_SECONDS.labels("failed_cycle").observe(0)
            log.error("cycle %d failed, retrying in %.0f s: %s", cycles, interval_s, exc)
        await _sleep_until(stop, interval_s)
    return 0


async def _retry_failures(rt: Runtime, stop: asyncio.Event) -> object:
    from ..retry import retry_due

    return await retry_due(rt, now=dt.datetime.now(dt.UTC), stop=stop)


def cycle_detail_budget(settings: Settings) -> int:
    """Detail requests one cycle may spend: the configured budget, else about 70% of what
    the quota allows in one interval, so a 14-hour backlog of details never delays the
    next cycle (the backlog resumes where it stopped, open orders first)."""
    if settings.detail_budget is not None:
        return settings.detail_budget
    return max(1, int(settings.rate_limit_per_minute * settings.interval_s / 60 * 0.7))


async def run(settings: Settings, *, args: Any = None, stop: asyncio.Event) -> int:
    """Entry point of ``--mode serve``."""
    settings = dataclasses.replace(settings, detail_budget=cycle_detail_budget(settings))
    async with contextlib.AsyncExitStack() as stack:
        rt = await stack.enter_async_context(open_runtime(settings))
        if settings.metrics_port is not None:
            port = await stack.enter_async_context(
                metrics.metrics_server(settings.metrics_host, settings.metrics_port)
            )
            log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
        return await serve_loop(
            rt, stop=stop, interval_s=settings.interval_s, after_cycle=_retry_failures
        )
    return 0  # pragma: no cover - the exit stack never swallows
