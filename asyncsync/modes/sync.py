"""``--mode sync``: the first run is a full sync; later runs are incremental cycles.

A full sync lists every status completely, then fetches details. An incremental cycle
(see :mod:`asyncsync.incremental`) lists open statuses completely and closed ones over a
recent window (swept completely once a day), fetches details only where something moved
or changed, and records every status change. ``--full`` forces a full sync.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import orjson

from .. import metrics
from ..client import ClientStats
from ..config import Settings
from ..engine import ListingEngine, Partition
from ..enrich import enrich_backlog
from ..incremental import plan_cycle, run_cycle
from ..locks import account_lock
from ..progress import Progress, ProgressReporter
from ..ratelimit import LimiterStats
from ..report import api_line, api_stats, status_name, table
from ..runtime import Runtime, open_runtime
from ..seams import MergeStats
from ..status import ALL_STATUSES

FULL_SYNC_KEY = "full_sync"
CLOSED_SWEEP_KEY = "closed_sweep"
INCREMENTAL_KEY = "incremental"

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    """What a sync run did, for people (``render``) and machines (``to_json``)."""

    kind: str
    started_at: str
    duration_s: float = 0.0
    listed: MergeStats = field(default_factory=MergeStats)
    details: MergeStats = field(default_factory=MergeStats)
    api_totals: dict[int, int | None] = field(default_factory=dict)
    db_counts: dict[int, int] = field(default_factory=dict)
    api: dict[str, object] = field(default_factory=dict)
    detail_backlog: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def changes(self) -> int:
        """History rows added by this run (first sightings of new orders included)."""
        return self.listed.status_changes + self.details.status_changes

    def to_json(self) -> str:
        return orjson.dumps(asdict(self), option=orjson.OPT_NON_STR_KEYS).decode()

    def render(self) -> str:
        rows = [
            [status_name(code), self.api_totals.get(code), self.db_counts.get(code, 0)]
            for code in sorted(set(self.api_totals) | set(self.db_counts))
        ]
        rows.append(
            [
                "total",
                sum(v or 0 for v in self.api_totals.values()) if self.api_totals else None,
                sum(self.db_counts.values()),
            ]
        )
        lines = [
            table(
                ["status", "API", "database"],
                rows,
                f"{self.kind} sync — {self.duration_s:.1f} s"
                + (" (interrupted: resumes next run)" if self.interrupted else ""),
            ),
            "",
            f"orders listed {self.listed.received:,}: {self.listed.inserted:,} new, "
            f"{self.listed.changed:,} changed, {self.listed.unchanged:,} unchanged; "
            f"history: {self.changes - self.listed.inserted:,} status changes, "
            f"{self.listed.inserted:,} first sightings",
            f"details fetched {self.details.details:,} ({self.details.missing:,} gone, "
            f"{self.detail_backlog:,} still waiting); import failures "
            f"{self.listed.failures + self.details.failures:,}",
            api_line(self.api),
        ]
        lines += [f"{k}: {v}" for k, v in self.extra.items()]
        return "\n".join(lines)


async def full_sync(rt: Runtime, *, stop: asyncio.Event, stream: TextIO) -> SyncReport:
    """List every status completely, merge, then fetch details for what needs them."""
    settings = rt.settings
    report = SyncReport(kind="full", started_at=dt.datetime.now(dt.UTC).isoformat())
    begin_run(rt)
    started = time.monotonic()
    progress = Progress("sync")
    async with ProgressReporter(progress, stream=stream):
        engine = ListingEngine(
            rt.client,
            rt.sink,
            page_size=settings.page_size,
            batch_size=settings.batch_size,
            queue_pages=settings.queue_pages,
            partitions_in_flight=len(ALL_STATUSES),
            progress=progress,
            stop=stop,
        )
        result = await engine.run([Partition(int(s)) for s in ALL_STATUSES], checkpointed=False)
        report.listed = result.stats
        report.api_totals = {p.situacao: t for p, t in result.totals.items()}
        progress.records_total = sum(t or 0 for t in report.api_totals.values()) or None
        complete = len(result.complete) == len(ALL_STATUSES)
        if complete:
            stamp = {"completed_at": dt.datetime.now(dt.UTC).isoformat()}
            await rt.sink.set_metadata(FULL_SYNC_KEY, _json({**stamp, "totals": report.api_totals}))
            await rt.sink.set_metadata(CLOSED_SWEEP_KEY, _json(stamp))
        report.details = await enrich_backlog(
            rt.client,
            rt.sink,
            concurrency=settings.max_concurrency * 2,
            budget=settings.detail_budget,
            progress=progress,
            stop=stop,
        )
    report.interrupted = stop.is_set() or not complete
    report.detail_backlog = await rt.sink.detail_backlog_size()
    report.db_counts = await rt.sink.counts_by_status()
    report.duration_s = round(time.monotonic() - started, 2)
    report.api = api_stats(rt.client.stats, rt.client.limiter.stats)
    metrics.RUN_SECONDS.labels("sync").observe(report.duration_s)
    if not report.interrupted:
        metrics.LAST_SUCCESS.labels("sync").set_to_current_time()
    return report


def _json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def begin_run(rt: Runtime) -> None:
    """Start the per-run API counters afresh (Prometheus keeps the cumulative ones)."""
    rt.client.stats = ClientStats()
    rt.client.limiter.stats = LimiterStats()


async def _last_sweep(rt: Runtime) -> dt.datetime | None:
    raw = await rt.sink.get_metadata(CLOSED_SWEEP_KEY)
    if not raw:
        return None
    return dt.datetime.fromisoformat(orjson.loads(raw)["completed_at"])


async def incremental_sync(
    rt: Runtime, *, stop: asyncio.Event, stream: TextIO, now: dt.datetime | None = None
) -> SyncReport:
    """One incremental cycle (plus the closed-status sweep when it is due)."""
    settings = rt.settings
    now = now or dt.datetime.now(dt.UTC)
    begin_run(rt)
    plan = plan_cycle(
        settings.open_statuses,
        settings.closed_statuses,
        recent_days=settings.recent_window_days,
        sweep_interval_s=settings.sweep_interval_s,
        last_sweep=await _last_sweep(rt),
        now=now,
    )
    progress = Progress("cycle")
    async with ProgressReporter(progress, stream=stream):
        result = await run_cycle(
            rt.client,
            rt.sink,
            plan,
            page_size=settings.page_size,
            batch_size=settings.batch_size,
            queue_pages=settings.queue_pages,
            concurrency=settings.max_concurrency * 2,
            detail_budget=settings.detail_budget,
            progress=progress,
            stop=stop,
        )
    if result.complete and plan.sweep:
        await rt.sink.set_metadata(CLOSED_SWEEP_KEY, _json({"completed_at": now.isoformat()}))
    report = SyncReport(
        kind="incremental",
        started_at=now.isoformat(),
        duration_s=result.duration_s,
        listed=result.listed,
        details=result.details,
        api_totals=result.totals,
        interrupted=stop.is_set() or not result.complete,
        extra={
            "closed statuses": "swept completely"
            if plan.sweep
            else f"listed from {plan.window_from.isoformat()} (emission)",
            "open orders gone from the open listings (detail fetched)": result.vanished,
        },
    )
    report.db_counts = await rt.sink.counts_by_status()
    report.detail_backlog = await rt.sink.detail_backlog_size()
    report.api = api_stats(rt.client.stats, rt.client.limiter.stats)
    await rt.sink.set_metadata(INCREMENTAL_KEY, report.to_json())
    metrics.RUN_SECONDS.labels("cycle").observe(report.duration_s)
    if not report.interrupted:
        metrics.LAST_SUCCESS.labels("cycle").set_to_current_time()
    log.info(
        "cycle done in %.1f s: requests %s, %d orders listed, %d details, %d status changes, "
        "%d new, %d changed",
        result.duration_s,
        report.api.get("requests"),
        result.listed.received,
        result.details.details,
        result.changes,
        result.listed.inserted,
        result.listed.changed,
    )
    return report


async def sync_once(rt: Runtime, *, full: bool, stop: asyncio.Event, stream: TextIO) -> SyncReport:
    """A full sync when asked or when none has completed yet, else an incremental cycle."""
    if full or await rt.sink.get_metadata(FULL_SYNC_KEY) is None:
        return await full_sync(rt, stop=stop, stream=stream)
    return await incremental_sync(rt, stop=stop, stream=stream)


async def run(
    settings: Settings, *, args: Any = None, stop: asyncio.Event, stream: TextIO = sys.stdout
) -> int:
    """Entry point of ``--mode sync``."""
    full = bool(getattr(args, "full", False))
    async with open_runtime(settings) as rt, account_lock(rt.pool, settings.account, "sync"):
        report = await sync_once(rt, full=full, stop=stop, stream=sys.stderr)
    stream.write(report.render() + "\n")
    return 0
