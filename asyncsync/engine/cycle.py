"""An incremental cycle: every status change visible after one cycle, for the least quota.

Tiny's service-order listing has no updated-since filter and there are no webhooks, so
changes are found by listing, shaped by where orders move:

* **open statuses** (0, 1, 2, 5, 6 by default) are listed completely: they are few, and
  every move into them shows up there;
* an order the mirror holds as open but that no listing of this cycle returned has moved
  (to a closed status, or been deleted): its detail is fetched, which says where, and
  one in a closed status is listed on its emission day (its list item as it is now);
* **closed statuses** (3, 4, 7) are listed over a recent emission window (orders created
  already closed), and swept completely on a slower schedule (closed → closed moves);
* details are fetched only for orders that are new or whose listed fields changed.

Offset pagination is not a snapshot: an order skipped because the pages shifted looks
"vanished" and gets its detail fetched, so nothing skipped stays skipped; an order seen
twice is merged once, and an older observation never overwrites a newer one, so repeats
never duplicate history.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..options import BATCH_ORDERS, DetailBudget
from ..progress import Progress
from ..records import DetailRecord, parse_date
from ..seams import MergeStats, OrderSink, OrderSource
from .details import enrich_backlog, fetch_details
from .listing import ListingEngine, Partition
from .settle import settle


@dataclass(frozen=True)
class CyclePlan:
    """What one cycle lists."""

    open_statuses: tuple[int, ...]
    closed_statuses: tuple[int, ...]
    window_from: dt.date  # closed statuses are listed from this emission date on
    sweep: bool  # list closed statuses completely this time
    whole: tuple[int, ...] = ()  # closed statuses listed completely anyway (short last time)

    def listed_whole(self, situacao: int) -> bool:
        return self.sweep or situacao in self.open_statuses or situacao in self.whole

    def partitions(self) -> list[Partition]:
        return [
            Partition(s) if self.listed_whole(s) else Partition(s, date_from=self.window_from)
            for s in (*self.open_statuses, *self.closed_statuses)
        ]


def plan_cycle(
    open_statuses: Sequence[int],
    closed_statuses: Sequence[int],
    *,
    recent_days: int,
    sweep_interval_s: float,
    last_sweep: dt.datetime | None,
    now: dt.datetime,
    short: Sequence[int] = (),
) -> CyclePlan:
    """The plan for a cycle at ``now``; a sweep is due when the last one is old enough.
    ``short``: closed statuses the last run left short, listed completely this time. A
    last sweep later than ``now`` was stamped by a clock that ran ahead: it says nothing
    of when the next one is due (waiting for it would put the sweep off by as long as the
    clock was ahead), so one is due now."""
    elapsed_s = None if last_sweep is None else (now - last_sweep).total_seconds()
    due = elapsed_s is None or elapsed_s < 0 or elapsed_s >= sweep_interval_s
    # One extra day: Tiny's dates are Brazilian local dates, ``now`` is UTC.
    window_from = (now - dt.timedelta(days=recent_days + 1)).date()
    whole = tuple(s for s in short if s in closed_statuses)
    return CyclePlan(tuple(open_statuses), tuple(closed_statuses), window_from, due, whole)


def moved_days(
    details: Sequence[DetailRecord], raw: Mapping[int, object], open_statuses: Sequence[int]
) -> list[Partition]:
    """The single-day partitions that list the orders whose detail shows a closed status:
    their status, on the emission day their detail gives (none: left to the sweep)."""
    days: set[Partition] = set()
    for d in details:
        body = raw.get(d.id)
        if d.situacao in open_statuses or not isinstance(body, Mapping):
            continue
        try:
            day = parse_date(body.get("data"), "data")
        except ValueError:
            continue
        if day is not None:
            days.add(Partition(d.situacao, day, day))
    return sorted(days, key=lambda p: (p.situacao, p.date_from or dt.date.min))


@dataclass
class CycleResult:
    """What a cycle found and what it cost."""

    plan: CyclePlan
    listed: MergeStats = field(default_factory=MergeStats)
    details: MergeStats = field(default_factory=MergeStats)
    pages: int = 0
    vanished: int = 0  # held as open, absent from every listing: detail fetched
    complete: bool = False  # every partition listed to its end
    totals: dict[int, int | None] = field(default_factory=dict)  # complete partitions only
    relisted: list[int] = field(default_factory=list)  # statuses listed again: short
    short: list[int] = field(default_factory=list)  # still short: the next cycle lists them
    gaps: dict[int, int] = field(default_factory=dict)  # of each still short: API − mirror


async def run_cycle(
    source: OrderSource,
    sink: OrderSink,
    plan: CyclePlan,
    *,
    page_size: int = 100,
    batch_size: int = BATCH_ORDERS,
    queue_pages: int = 32,
    concurrency: int = 16,
    detail_budget: DetailBudget = None,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
) -> CycleResult:
    """List, find the vanished open orders, fetch their details, then enrich the changed."""
    stop = stop or asyncio.Event()
    progress = progress or Progress("cycle")
    result = CycleResult(plan)
    parts = plan.partitions()

    def engine(track_seen: bool = False) -> ListingEngine:
        return ListingEngine(
            source,
            sink,
            page_size=page_size,
            batch_size=batch_size,
            queue_pages=queue_pages,
            partitions_in_flight=len(parts),
            progress=progress,
            stop=stop,
            track_seen=track_seen,
        )

    listing = await engine(track_seen=True).run(parts, checkpointed=False)
    result.listed, result.pages = listing.stats, listing.pages
    result.complete = len(listing.complete) == len(parts)
    result.totals = {
        p.situacao: t
        for p, t in listing.totals.items()
        if p.date_from is None and p.date_to is None
    }
    if result.complete:  # a partial listing would make everything look vanished
        vanished = listing.seen.unlisted(await sink.ids_in_statuses(plan.open_statuses))
        result.vanished = len(vanished)
        if vanished:
            progress.details_total = (progress.details_total or 0) + len(vanished)
            out = await fetch_details(source, sorted(vanished), concurrency=concurrency, stop=stop)
            # A list item that failed is still broken: its detail does not resolve it.
            broken = listing.failed & vanished
            merged = await sink.merge_details(
                out.details, out.failures, out.missing, unresolved=broken
            )
            result.details = result.details + merged + MergeStats(unavailable=len(out.unavailable))
            progress.details += len(vanished)
            out.raise_outage()
            # The detail says where an order went, not what its list item says now (the
            # value, the client): those that went to a closed status are listed on their
            # emission day, one single-day page each, and merged now, not at the sweep.
            days = moved_days(out.details, out.raw, plan.open_statuses)
            if days:
                caught = await engine().run(days, checkpointed=False)
                result.listed = result.listed + caught.stats
                result.pages += caught.pages
        # Drift leftovers: statuses listed whole are checked against their own totals,
        # closed ones listed over the window against a fresh total (one request each).
        windowed = [s for s in plan.closed_statuses if not plan.listed_whole(s)]
        settled = await settle(
            source, sink, engine, result.totals, ask=windowed, rounds=1, stop=stop
        )
        result.listed = result.listed + settled.listed
        result.pages += settled.pages
        result.relisted = sorted({p.situacao for p in settled.relisted})
        result.short = [s.situacao for s in settled.left]
        result.gaps = {s.situacao: s.api - s.known for s in settled.left}
        if not settled.answered:  # what was short may still be: listed whole next time
            result.short = sorted({*result.short, *plan.whole})
    if not stop.is_set():
        result.details = result.details + (
            await enrich_backlog(
                source,
                sink,
                concurrency=concurrency,
                budget=detail_budget,
                progress=progress,
                stop=stop,
                listed=listing.seen,
            )
        )
    return result
