"""Drift leftovers: a status the mirror knows fewer orders of than the API counts is found
and listed again, so orders skipped while pages shifted converge without a sweep.

Offset pagination is not a snapshot: an order that leaves a status while it is paged
shifts the later pages, and the order right after the boundary is never seen; an order
that moves into a status already listed is not seen there either. After a listing, each
status's ``paginacao.total`` is compared with what the mirror knows of it (its rows, plus
the open import failures of orders it lacks, which the API counts too).

A short status is not listed again whole when it is large: its emission dates are
bisected, one single-item request per level (the other half's total is the difference),
against the mirror's counts over the same dates, down to the months that hold the
missing orders, and only those are listed. A few dozen requests instead of the whole
status. What is still short after ``rounds`` is handed back for the next run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..clock import utcnow
from ..seams import MergeStats, OrderSink, OrderSource
from ..tasks import run_all
from .listing import ListingEngine, Partition, status_totals

#: A short status with at most this many orders is listed again whole.
WHOLE_BELOW = 1000
#: Bisection stops at date ranges this short (and at this depth).
LEAF_DAYS, MAX_DEPTH = 31, 14
#: Emission dates searched: from here to tomorrow (Tiny's dates are Brazilian local dates).
FIRST_DAY = dt.date(1990, 1, 1)


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A status whose API total exceeds what the mirror knows of it."""

    situacao: int
    api: int
    known: int


@dataclass
class Settled:
    """What settling listed, and what is still short."""

    listed: MergeStats = field(default_factory=MergeStats)
    pages: int = 0
    relisted: list[Partition] = field(default_factory=list)
    left: list[Shortfall] = field(default_factory=list)
    #: False: the stop came as fresh totals were asked, and withheld some: a status short
    #: before may be missing from ``left`` (its total unknown, not found equal).
    answered: bool = True


async def shortfalls(
    source: OrderSource,
    sink: OrderSink,
    totals: Mapping[int, int | None],
    ask: Sequence[int] = (),
    stop: asyncio.Event | None = None,
) -> list[Shortfall]:
    """Statuses short in the mirror: by ``totals`` (whole-status totals a listing saw)
    and by a fresh single-item request for each status in ``ask`` (none sent once
    ``stop`` is set)."""
    known_totals = dict(totals)
    known: dict[int, int] = {}

    async def fresh_totals() -> None:
        if ask:
            known_totals.update(await status_totals(source, statuses=ask, stop=stop))

    async def counted() -> None:
        known.update(await sink.known_by_status())

    await run_all([fresh_totals(), counted()])  # the API and the database at once
    return [
        Shortfall(s, total, known.get(s, 0))
        for s, total in sorted(known_totals.items())
        if total is not None and total > known.get(s, 0)
    ]


async def settle(
    source: OrderSource,
    sink: OrderSink,
    engine: Callable[[], ListingEngine],
    totals: Mapping[int, int | None],
    *,
    ask: Sequence[int] = (),
    rounds: int = 2,
    today: dt.date | None = None,
    stop: asyncio.Event | None = None,
) -> Settled:
    """Find short statuses and list what they miss again, at most ``rounds`` times (no
    request is sent once ``stop``, the run's, is set)."""
    last_day = (today or utcnow().date()) + dt.timedelta(days=1)
    out = Settled()
    short = await shortfalls(source, sink, totals, ask, stop)
    out.answered = not (ask and stop is not None and stop.is_set())
    for _ in range(rounds):
        if not short:
            break
        parts: list[Partition] = []
        for shortfall in short:
            parts += await locate(source, sink, shortfall, last_day, stop)
        out.relisted += parts
        listing = await engine().run(parts, checkpointed=False)
        out.listed, out.pages = out.listed + listing.stats, out.pages + listing.pages
        if len(listing.complete) < len(parts):
            break  # stopped: what is left is still short
        # Every status checked, not only the short ones: a relist that corrects a stale
        # row moves it out of another status, which may be short now.
        checked = sorted({*(s.situacao for s in short), *totals, *ask})
        short = await shortfalls(source, sink, {}, checked, stop)
        out.answered = not (stop is not None and stop.is_set())
    out.left = short
    return out


async def locate(
    source: OrderSource,
    sink: OrderSink,
    shortfall: Shortfall,
    last_day: dt.date,
    stop: asyncio.Event | None = None,
) -> list[Partition]:
    """The partitions of a short status to list again: whole when small, else the date
    ranges where the API counts more than the mirror holds."""
    situacao = shortfall.situacao
    if shortfall.api <= WHOLE_BELOW:
        return [Partition(situacao)]
    ranges = await _bisect(source, sink, situacao, FIRST_DAY, last_day, shortfall.api, 0, stop)
    return [Partition(situacao, lo, hi) for lo, hi in ranges] or [Partition(situacao)]


async def _bisect(
    source: OrderSource,
    sink: OrderSink,
    situacao: int,
    lo: dt.date,
    hi: dt.date,
    api_total: int,
    depth: int,
    stop: asyncio.Event | None,
) -> list[tuple[dt.date, dt.date]]:
    held = (await sink.counts_in_range(lo, hi)).get(situacao, 0)
    if api_total <= held:
        return []
    if (hi - lo).days <= LEAF_DAYS or depth >= MAX_DEPTH:
        return [(lo, hi)]
    mid = lo + (hi - lo) / 2
    first = (await status_totals(source, lo, mid, statuses=[situacao], stop=stop)).get(situacao)
    if first is None or first > api_total:
        return [(lo, hi)]  # no usable total: list the whole range
    later = mid + dt.timedelta(days=1)
    return [
        *await _bisect(source, sink, situacao, lo, mid, first, depth + 1, stop),
        *await _bisect(source, sink, situacao, later, hi, api_total - first, depth + 1, stop),
    ]
