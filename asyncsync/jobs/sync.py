"""A sync of one account: the first run is a full sync, later runs incremental cycles.

A full sync lists every status completely, then fetches details. An incremental cycle
(:mod:`asyncsync.engine.cycle`) lists open statuses completely and closed ones over a
recent window (swept completely once a day), fetches details only where something moved
or changed, and records every status change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import orjson

from ..engine.cycle import plan_cycle, run_cycle
from ..engine.details import enrich_backlog
from ..engine.listing import ListingEngine, Partition
from ..engine.settle import settle
from ..options import CycleOptions
from ..progress import Progress, ProgressReporter
from ..report import Outcome, RunReport, status_name
from ..seams import ApiStats, Census, MergeStats, Metadata, OrderSink, OrderSource
from ..status import ALL_STATUSES
from . import RunContext, merge_counts

FULL_SYNC_KEY = "full_sync"
CLOSED_SWEEP_KEY = "closed_sweep"
INCREMENTAL_KEY = "incremental"
SHORT_KEY = "short_statuses"
#: Statuses a whole listing left short, and by how many: Tiny counts orders of them that no
#: page shows (an id listed twice, a record it counts and never serves). Listed whole at
#: every cycle, one such status cost 175 pages a cycle for good, 8,000 at a million orders
#: (sweep L); each cycle's drift check and the daily sweep still look at them.
STUCK_KEY = "short_even_listed_whole"
ALL_CODES = tuple(int(s) for s in ALL_STATUSES)


async def sync_once(
    source: OrderSource,
    sink: OrderSink,
    metadata: Metadata,
    options: CycleOptions,
    ctx: RunContext,
    *,
    full: bool = False,
) -> RunReport:
    """A full sync when asked or when none has completed yet, else an incremental cycle."""
    if full or await metadata.get(FULL_SYNC_KEY) is None:
        return await full_sync(source, sink, metadata, options, ctx)
    return await incremental_sync(source, sink, metadata, options, ctx)


async def full_sync(
    source: OrderSource,
    sink: OrderSink,
    metadata: Metadata,
    options: CycleOptions,
    ctx: RunContext,
) -> RunReport:
    """List every status completely, merge, then fetch details for what needs them."""
    started_at, api_before = ctx.clock(), source.api_stats()
    progress = Progress("sync")
    async with ProgressReporter(progress, stream=ctx.progress, account=ctx.account):

        def engine() -> ListingEngine:
            return ListingEngine(
                source,
                sink,
                page_size=options.page_size,
                batch_size=options.batch_size,
                queue_pages=options.queue_pages,
                partitions_in_flight=len(ALL_STATUSES),
                progress=progress,
                stop=ctx.stop,
            )

        # The ids listed are not kept (8-16 MB a million, on the peak RSS): a 404 in this
        # details pass flags its order as before, and the next cycle that lists it makes
        # that 404 an import failure (run_cycle's listed ids).
        result = await engine().run([Partition(s) for s in ALL_CODES], checkpointed=False)
        api_totals = {p.situacao: t for p, t in result.totals.items()}
        complete = len(result.complete) == len(ALL_STATUSES)
        listed, pages, relisted, left = result.stats, result.pages, 0, []
        if complete:
            # Pages shift while statuses are listed: fresh totals say what was skipped.
            settled = await settle(
                source, sink, engine, {}, ask=ALL_CODES, today=ctx.clock().date(), stop=ctx.stop
            )
            listed, pages = listed + settled.listed, pages + settled.pages
            relisted = len(settled.relisted)
            left = [s.situacao for s in settled.left]
            if not settled.answered:  # what was short may still be: listed whole next time
                left = sorted({*left, *await _short(metadata)})
            await _note_short(metadata, left)
            stamp = {"completed_at": ctx.clock().isoformat()}
            await metadata.set(FULL_SYNC_KEY, _json({**stamp, "totals": api_totals}))
            await metadata.set(CLOSED_SWEEP_KEY, _json(stamp))
        details = await enrich_backlog(
            source,
            sink,
            concurrency=ctx.concurrency,
            budget=options.detail_budget,
            progress=progress,
            stop=ctx.stop,
        )
    return await _report(
        "full sync", source, sink, ctx, started_at, api_before,
        listed=listed, details=details, pages=pages, api_totals=api_totals,
        complete=complete, relisted=relisted, short=left,
    )  # fmt: skip


async def incremental_sync(
    source: OrderSource,
    sink: OrderSink,
    metadata: Metadata,
    options: CycleOptions,
    ctx: RunContext,
) -> RunReport:
    """One incremental cycle (plus the closed-status sweep when it is due)."""
    started_at, api_before = ctx.clock(), source.api_stats()
    plan = plan_cycle(
        options.open_statuses,
        options.closed_statuses,
        recent_days=options.recent_days,
        sweep_interval_s=options.sweep_interval_s,
        last_sweep=await _last_sweep(metadata),
        now=started_at,
        short=await _short(metadata),
    )
    progress = Progress("cycle")
    async with ProgressReporter(progress, stream=ctx.progress, account=ctx.account):
        result = await run_cycle(
            source,
            sink,
            plan,
            page_size=options.page_size,
            batch_size=options.batch_size,
            queue_pages=options.queue_pages,
            concurrency=ctx.concurrency,
            detail_budget=options.detail_budget,
            progress=progress,
            stop=ctx.stop,
        )
    if result.complete and plan.sweep:
        await metadata.set(CLOSED_SWEEP_KEY, _json({"completed_at": started_at.isoformat()}))
    stuck: dict[int, int] = {}
    short: list[int] = []  # listed whole by the next cycle
    if result.complete:
        known = await _stuck(metadata)
        # Listed whole and still short, or short by no more than when a whole listing
        # could not settle it: another whole listing would find nothing either.
        stuck = {
            s: gap for s, gap in result.gaps.items()
            if s in plan.whole or (s in known and gap <= known[s])
        }  # fmt: skip
        short = [s for s in result.short if s not in stuck]
        await _note_short(metadata, short)
        if stuck or known:
            await metadata.set(STUCK_KEY, _json(stuck))
    closed = (
        "swept completely"
        if plan.sweep
        else f"listed from {plan.window_from.isoformat()} (emission date)"
    )
    report = await _report(
        "incremental cycle", source, sink, ctx, started_at, api_before,
        listed=result.listed, details=result.details, pages=result.pages,
        api_totals=result.totals, complete=result.complete, vanished=result.vanished,
        relisted=len(result.relisted),
        short=short,
        facts={"closed_statuses": closed},
        also=[_short_even_whole(code, gap) for code, gap in sorted(stuck.items())],
    )  # fmt: skip
    if report.outcome is Outcome.OK:
        await metadata.set(INCREMENTAL_KEY, _json({"finished_at": report.finished_at.isoformat()}))
    return report


async def _report(
    title: str,
    source: OrderSource,
    sink: OrderSink,
    ctx: RunContext,
    started_at: dt.datetime,
    api_before: ApiStats,
    *,
    listed: MergeStats,
    details: MergeStats,
    pages: int,
    api_totals: dict[int, int | None],
    complete: bool,
    vanished: int | None = None,
    relisted: int = 0,
    short: Sequence[int] = (),
    facts: dict[str, str | bool | None] | None = None,
    also: Sequence[str] = (),
) -> RunReport:
    mirror = await sink.counts_by_status()
    counts: dict[str, int | float] = {"pages": pages, **merge_counts(listed, details)}
    if vanished is not None:
        counts["vanished"] = vanished
    counts["relisted"] = relisted
    counts["detail_backlog"] = await sink.detail_backlog_size()
    codes = sorted(set(api_totals) | set(mirror))
    interrupted = ctx.stop.is_set() or not complete
    return RunReport(
        mode="sync",
        account=ctx.account,
        started_at=started_at,
        finished_at=ctx.clock(),
        outcome=Outcome.INTERRUPTED if interrupted else Outcome.OK,
        title=title,
        counts=counts,
        by_status={c: {"api": api_totals.get(c), "mirror": mirror.get(c, 0)} for c in codes},
        facts=facts or {},
        notes=[*(_still_short(code) for code in short), *also],
        api=source.api_stats().since(api_before),
        census=Census(mirror, int(counts["detail_backlog"])),
    )


def _still_short(code: int) -> str:
    # The API counts orders of it that no page carried, even listed again (pages that
    # shifted, or ties in Tiny's sort order): the counts by status show by how many.
    return (f"status {status_name(code)} is still short of the API's count after it was "
            "listed again, by as many orders as its counts by status show: the next run "
            "lists it whole")  # fmt: skip


def _short_even_whole(code: int, gap: int) -> str:
    return (f"status {status_name(code)}: Tiny counts {gap} order(s) more than its pages "
            "show, even listed whole (an id listed twice?): not listed whole at every "
            "cycle for that; the daily sweep lists it")  # fmt: skip


async def _stuck(metadata: Metadata) -> dict[int, int]:
    raw = await metadata.get(STUCK_KEY)
    return {int(k): int(v) for k, v in orjson.loads(raw).items()} if raw else {}


async def _note_short(metadata: Metadata, statuses: list[int]) -> None:
    """Statuses still short after settling: the next cycle lists them completely."""
    if statuses or await metadata.get(SHORT_KEY):
        await metadata.set(SHORT_KEY, _json(statuses))


async def _short(metadata: Metadata) -> list[int]:
    raw = await metadata.get(SHORT_KEY)
    return [int(s) for s in orjson.loads(raw)] if raw else []


def _json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


async def _last_sweep(metadata: Metadata) -> dt.datetime | None:
    raw = await metadata.get(CLOSED_SWEEP_KEY)
    if not raw:
        return None
    return dt.datetime.fromisoformat(orjson.loads(raw)["completed_at"])
