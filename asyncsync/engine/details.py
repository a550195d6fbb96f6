"""The enrichment pass: details (``dataConclusao`` and the rest), most useful first.

Listings make the mirror complete in ids, statuses and dates at 100 orders a request;
details cost a request each, so they are fetched afterwards and only where needed:
orders whose listing changed since their last detail (``detail_stale``), open and
recently changed ones first. Progress lives in the database itself, so the pass is
resumable by construction: whatever was merged is no longer in the backlog.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import (
    RecordError,
    TinyAuthError,
    TinyError,
    TinyNotFound,
    TinyOutage,
    TinyRateLimited,
    TinyUnavailable,
)
from ..progress import Progress
from ..records import DetailRecord, FailureRecord, canonical_json, failure_from, parse_detail
from ..seams import MergeStats, OrderSink, OrderSource
from ..tasks import run_all

log = logging.getLogger(__name__)


@dataclass
class DetailOutcome:
    """Details of a set of ids, sorted into what the sink needs."""

    details: list[DetailRecord] = field(default_factory=list)
    failures: list[FailureRecord] = field(default_factory=list)  # the record is at fault
    missing: list[int] = field(default_factory=list)  # 404
    unavailable: list[int] = field(default_factory=list)  # 5xx/429/timeouts: try again later
    raw: dict[int, object] = field(default_factory=dict)  # id -> parsed JSON body
    outage: TinyOutage | None = None  # the circuit opened: no more requests went out

    def raise_outage(self) -> None:
        """After merging what arrived: end the pass if Tiny went down during it."""
        if self.outage is not None:
            raise self.outage


def failure_for(order_id: int, exc: TinyError) -> FailureRecord:
    """The import_failures row for a detail request that failed (with the body, if any)."""
    body: str = getattr(exc, "body", "")
    raw = canonical_json({"status": getattr(exc, "status", None), "body": body}) if body else None
    return FailureRecord(order_id=order_id, error=f"{type(exc).__name__}: {exc}", raw=raw)


async def fetch_details(
    source: OrderSource,
    ids: Iterable[int],
    *,
    concurrency: int = 16,
    stop: asyncio.Event | None = None,
) -> DetailOutcome:
    """Fetch and parse details of ``ids``; per-order problems become failures, not errors.

    Each is tried once; those that failed transiently are tried again, with the client's
    retries and backoff, after all the others.

    Only what is wrong with the order itself is a failure (a 401 on it alone, a body that
    is not its detail). A detail that could not be had because Tiny was unavailable (5xx,
    429, timeouts, after retries) is no fault of the record: it is listed as
    ``unavailable`` and stays in the backlog for a later pass. Authentication failures
    and an open circuit (:class:`~asyncsync.errors.TinyOutage`) are not per order: they
    stop the pass: authentication failures propagate at once; after an outage no new
    request starts and what already arrived is returned with ``outage`` set, to be merged
    before the caller calls :meth:`DetailOutcome.raise_outage`. Once ``stop`` is set no new
    request starts either.
    """
    out = DetailOutcome()
    gate = asyncio.Semaphore(concurrency)
    later: list[int] = []  # failed transiently on the first try: retried after the rest

    async def one(order_id: int, first_try: bool) -> None:
        async with gate:
            if (stop is not None and stop.is_set()) or out.outage is not None:
                return
            try:
                detail = await source.get_order(order_id, retry=not first_try)
            except TinyNotFound:
                out.missing.append(order_id)
                return
            except TinyOutage as exc:
                out.outage = out.outage or exc
                return
            except TinyAuthError:
                raise
            except (TinyUnavailable, TinyRateLimited):
                (later if first_try else out.unavailable).append(order_id)
                return
            except TinyError as exc:
                out.failures.append(failure_for(order_id, exc))
                return
        try:
            out.details.append(parse_detail(detail.body, order_id, detail.observed_at))
            out.raw[order_id] = detail.body
        except RecordError as exc:
            out.failures.append(failure_from(exc))

    # Healthy details first; a failing one is retried (with backoff) only once the others
    # are in, so its retries never hold back the healthy ones.
    await run_all(one(order_id, True) for order_id in ids)
    await run_all(one(order_id, False) for order_id in later)
    return out


class Enricher:
    """Fetches details for the sink's backlog until it is empty or the budget is spent."""

    def __init__(
        self,
        source: OrderSource,
        sink: OrderSink,
        *,
        concurrency: int = 16,
        chunk: int = 200,
        progress: Progress | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._source = source
        self._sink = sink
        self._concurrency = concurrency
        self._chunk = chunk
        self.progress = progress or Progress("details")
        self._stop = stop or asyncio.Event()

    async def run(self, budget: int | None = None) -> MergeStats:
        """Enrich up to ``budget`` orders (None: the whole backlog)."""
        total = MergeStats()
        attempted: set[int] = set()
        while not self._stop.is_set():
            want = self._chunk if budget is None else min(self._chunk, budget - len(attempted))
            if want <= 0:
                break
            ids = await self._sink.detail_backlog(want, exclude=attempted)
            if not ids:
                break
            attempted.update(ids)
            out = await fetch_details(
                self._source, ids, concurrency=self._concurrency, stop=self._stop
            )
            stats = await self._sink.merge_details(out.details, out.failures, out.missing)
            total = total + stats + MergeStats(unavailable=len(out.unavailable))
            self.progress.details += len(out.details) + len(out.failures) + len(out.missing)
            self.progress.failures += len(out.failures)
            out.raise_outage()
        return total


async def enrich_backlog(
    source: OrderSource,
    sink: OrderSink,
    *,
    concurrency: int,
    budget: int | None,
    progress: Progress,
    stop: asyncio.Event,
) -> MergeStats:
    """The details pass after a listing: show what it will fetch on ``progress`` (the
    backlog, within the budget, after the details already counted), then work it."""
    backlog = await sink.detail_backlog_size()
    progress.details_total = progress.details + (
        backlog if budget is None else min(backlog, budget)
    )
    enricher = Enricher(source, sink, concurrency=concurrency, progress=progress, stop=stop)
    return await enricher.run(budget)
