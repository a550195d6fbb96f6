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
    failures: list[FailureRecord] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    raw: dict[int, object] = field(default_factory=dict)  # id -> parsed JSON body


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

    Authentication failures are not per order: they propagate and stop the run. Once
    ``stop`` is set no new request starts; what already arrived is returned, to be merged.
    """
    out = DetailOutcome()
    gate = asyncio.Semaphore(concurrency)

    async def one(order_id: int) -> None:
        async with gate:
            if stop is not None and stop.is_set():
                return
            try:
                detail = await source.get_order(order_id)
            except TinyNotFound:
                out.missing.append(order_id)
                return
            except TinyAuthError:
                raise
            except TinyError as exc:
                out.failures.append(failure_for(order_id, exc))
                return
        try:
            out.details.append(parse_detail(detail.body, order_id, detail.observed_at))
            out.raw[order_id] = detail.body
        except RecordError as exc:
            out.failures.append(failure_from(exc))

    await run_all(one(order_id) for order_id in ids)
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
        """Enrich up to ``budget`` orders (None: the whole backlog).

        A chunk merges while the next one's requests are in flight, so the requests do
        not stop while PostgreSQL writes (one merge at a time, in order)."""
        total = MergeStats()
        attempted: set[int] = set()
        merging: asyncio.Task[MergeStats] | None = None
        try:
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
                if merging is not None:
                    total = total + await merging
                merging = asyncio.create_task(self._merge(out), name="details-merge")
        except BaseException:
            if merging is not None:
                merging.cancel()  # a no-op once it has finished
                merging.add_done_callback(_retrieved)
            raise
        if merging is not None:
            total = total + await merging
        return total

    async def _merge(self, out: DetailOutcome) -> MergeStats:
        stats = await self._sink.merge_details(out.details, out.failures, out.missing)
        self.progress.details += len(out.details) + len(out.failures) + len(out.missing)
        self.progress.failures += len(out.failures)
        return stats


def _retrieved(task: asyncio.Task[MergeStats]) -> None:
    """Mark an abandoned merge's outcome as seen: the error being raised is the one told."""
    if not task.cancelled():
        task.exception()


async def enrich_backlog(
    source: OrderSource,
    sink: OrderSink,
    *,
    concurrency: int,
    budget: int | None,
    progress: Progress,
    stop: asyncio.Event,
) -> MergeStats:
    """The details pass after a listing: show the backlog on ``progress``, then work it."""
    progress.details_total = await sink.detail_backlog_size()
    # A chunk's last round of requests runs below the concurrency, and each chunk costs a
    # backlog query: sixteen rounds a chunk keep both under a tenth of the pass.
    enricher = Enricher(
        source,
        sink,
        concurrency=concurrency,
        chunk=max(200, 16 * concurrency),
        progress=progress,
        stop=stop,
    )
    return await enricher.run(budget)
