"""The enrichment pass: details (``dataConclusao`` and the rest), most useful first.

Listings make the mirror complete in ids, statuses and dates at 100 orders a request;
details cost a request each, so they are fetched afterwards and only where needed:
orders whose listing changed since their last detail (``detail_stale``), open and
recently changed ones first. Progress lives in the database itself, so the pass is
resumable by construction: whatever was merged is no longer in the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from ..errors import (
    RecordError,
    RequestWithheld,
    TinyAuthError,
    TinyError,
    TinyNotFound,
    TinyOutage,
    TinyRateLimited,
    TinyUnavailable,
)
from ..options import DetailBudget
from ..progress import Progress
from ..records import DetailRecord, FailureRecord, canonical_json, failure_from, parse_detail
from ..seams import MergeStats, OrderSink, OrderSource
from ..tasks import run_all

log = logging.getLogger(__name__)

#: Tries of one detail that fails transiently, and the pause before the second (doubling).
ATTEMPTS, FIRST_PAUSE_S = 5, 0.25


@dataclass(frozen=True, slots=True, order=True)
class Waiting:
    """A detail that failed transiently, waiting for its next try."""

    due: float  # loop time of the next try
    tie: int
    order_id: int = field(compare=False)
    tries: int = field(compare=False)


@dataclass
class DetailOutcome:
    """Details of a set of ids, sorted into what the sink needs."""

    details: list[DetailRecord] = field(default_factory=list)
    failures: list[FailureRecord] = field(default_factory=list)  # the record is at fault
    missing: list[int] = field(default_factory=list)  # 404
    unavailable: list[int] = field(default_factory=list)  # 5xx/429/timeouts: try again later
    unavailable_because: TinyError | None = None  # the last of them: what Tiny answered
    raw: dict[int, object] = field(default_factory=dict)  # id -> parsed JSON body
    outage: TinyOutage | None = None  # the circuit opened: no more requests went out
    carry: list[Waiting] = field(default_factory=list)  # still pausing (without ``drain``)

    def raise_outage(self) -> None:
        """After merging what arrived: end the pass if Tiny went down during it."""
        if self.outage is not None:
            raise self.outage


#: What one attempt at a detail came to (see ``fetch_details``).
_ANSWERED, _AGAIN, _UNANSWERED = object(), object(), object()


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
    attempts: int = ATTEMPTS,
    first_pause_s: float = FIRST_PAUSE_S,
    carry: Iterable[Waiting] = (),
    drain: bool = True,
    answered: Callable[[], None] | None = None,
) -> DetailOutcome:
    """Fetch and parse details of ``ids``; per-order problems become failures, not errors.

    Only what is wrong with the order itself is a failure (a 401 on it alone, a body that
    is not its detail). A detail Tiny could not serve (5xx, 429, a timeout) is no fault of
    the record: it goes back in the queue after a pause (0.25 s, 0.5 s, …), behind the ids
    not tried yet, so its retries never hold a request slot the healthy ones could use;
    after ``attempts`` tries it is listed as ``unavailable`` and stays in the backlog for a
    later pass. Authentication failures propagate at once; after an outage
    (:class:`~asyncsync.errors.TinyOutage`) no new request starts and what already arrived
    is returned with ``outage`` set, to be merged before the caller calls
    :meth:`DetailOutcome.raise_outage`. Once ``stop`` is set no new request starts either,
    nor is one still waiting for its turn (or its retry) sent: its id is left as it was,
    in no list, neither a failure nor unavailable (nothing was asked of Tiny).

    Without ``drain`` it returns as soon as every id of ``ids`` is settled or pausing:
    the ones still pausing come back in ``carry``, for the caller to hand to its next call
    with more ids, so a pause never holds up a batch of healthy ones.

    ``answered`` is called as each order gets its answer (a detail, a failure, a 404), for
    progress that moves with the requests rather than with the merges.
    """
    out = DetailOutcome()
    loop = asyncio.get_running_loop()
    order = itertools.count()
    queue = [Waiting(0.0, next(order), order_id, 0) for order_id in ids]
    fresh = len(queue)  # ids of this call not settled or pausing yet
    queue += carry
    heapq.heapify(queue)
    left = len(queue)  # ids not settled yet (in the queue or in flight)
    moved = asyncio.Event()  # the queue changed, or an id was settled

    def halted() -> bool:
        return (stop is not None and stop.is_set()) or out.outage is not None

    def done() -> bool:
        if left == 0 or halted():
            return True
        # Not draining: stop once the fresh ids are through and nothing is due now.
        return not drain and fresh == 0 and (not queue or queue[0].due > loop.time())

    async def one(order_id: int, tries: int) -> bool:
        """Fetch one detail; True when it failed transiently and may be tried again."""
        answer = await attempt(order_id, tries)
        if answer is _ANSWERED and answered is not None:
            answered()
        return answer is _AGAIN

    async def attempt(order_id: int, tries: int) -> object:
        """_ANSWERED (a detail, a failure, a 404), _AGAIN, or _UNANSWERED (given up on)."""
        try:
            detail = await source.get_order(order_id, retry=False, repeat=tries > 0, stop=stop)
        except RequestWithheld:
            return _UNANSWERED  # stopped before it was sent: as it was
        except TinyNotFound:
            out.missing.append(order_id)
            return _ANSWERED
        except TinyOutage as exc:
            out.outage = out.outage or exc
            return _UNANSWERED
        except TinyAuthError:
            raise
        except (TinyUnavailable, TinyRateLimited) as exc:
            if tries + 1 < attempts:
                return _AGAIN
            out.unavailable.append(order_id)
            out.unavailable_because = exc
            return _UNANSWERED
        except TinyError as exc:
            out.failures.append(failure_for(order_id, exc))
            return _ANSWERED
        try:
            out.details.append(parse_detail(detail.body, order_id, detail.observed_at))
            out.raw[order_id] = detail.body
        except RecordError as exc:
            out.failures.append(failure_from(exc))
        return _ANSWERED

    async def worker() -> None:
        nonlocal left, fresh
        while not done():
            wait = queue[0].due - loop.time() if queue else None
            if wait is None or wait > 0:  # nothing due: wait for a change or the next due
                moved.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(moved.wait(), wait)
                continue
            item = heapq.heappop(queue)
            again = await one(item.order_id, item.tries)
            if item.tries == 0 and item.due == 0.0:
                fresh -= 1  # this call's own id: settled, or pausing now
            if again:
                due = loop.time() + first_pause_s * 2**item.tries
                heapq.heappush(queue, Waiting(due, next(order), item.order_id, item.tries + 1))
            else:
                left -= 1
            moved.set()

    await run_all(worker() for _ in range(max(1, min(concurrency, len(queue)))))
    out.carry = list(queue)
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
        listed: Collection[int] = (),
    ) -> None:
        self._source = source
        self._sink = sink
        self._concurrency = concurrency
        self._chunk = chunk
        self.progress = progress or Progress("details")
        self._stop = stop or asyncio.Event()
        # Ids a listing of this run showed: a 404 of theirs is no deletion (an order Tiny
        # lists but will not show), an import failure for the retries instead.
        self._listed = listed

    async def run(self, budget: int | None = None) -> MergeStats:
        """Enrich up to ``budget`` orders (None: the whole backlog).

        A chunk merges while the next one's requests are in flight, so the requests do
        not stop while PostgreSQL writes (one merge at a time, in order)."""
        total = MergeStats()
        attempted: set[int] = set()
        merging: asyncio.Task[MergeStats] | None = None
        carry: list[Waiting] = []  # failed transiently, pausing: tried again with the next
        try:
            while not self._stop.is_set():
                want = self._chunk if budget is None else min(self._chunk, budget - len(attempted))
                ids = await self._sink.detail_backlog(want, exclude=attempted) if want > 0 else []
                if not ids and not carry:
                    break
                attempted.update(ids)
                out = await fetch_details(
                    self._source, ids, concurrency=self._concurrency, stop=self._stop,
                    carry=carry, drain=not ids, answered=self._answered,
                )  # fmt: skip
                carry = out.carry
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

    def _answered(self) -> None:
        self.progress.details += 1  # as answers arrive: the rate follows the requests

    async def _merge(self, out: DetailOutcome) -> MergeStats:
        listed = [i for i in out.missing if i in self._listed]
        stats = await self._sink.merge_details(
            out.details, out.failures, out.missing, listed=listed
        )
        self.progress.failures += len(out.failures) + len(listed)
        out.raise_outage()  # merged first: what arrived before Tiny went down is kept
        return stats + MergeStats(unavailable=len(out.unavailable))


def _retrieved(task: asyncio.Task[MergeStats]) -> None:
    """Mark an abandoned merge's outcome as seen: the error being raised is the one told."""
    if not task.cancelled():
        task.exception()


async def enrich_backlog(
    source: OrderSource,
    sink: OrderSink,
    *,
    concurrency: int,
    budget: DetailBudget,
    progress: Progress,
    stop: asyncio.Event,
    listed: Collection[int] = (),
) -> MergeStats:
    """The details pass after a listing: show what it will fetch on ``progress`` (the
    backlog, within the budget, after the details already counted), then work it. A
    budget to ask is asked now, the listing's answers having announced the quota.
    ``listed``: the ids that listing showed (see :class:`Enricher`)."""
    if callable(budget):
        budget = budget()
    if stop.is_set() or budget == 0:  # no pass: no bar, and no backlog to count for one
        return MergeStats()
    backlog = await sink.detail_backlog_size()
    progress.details_total = progress.details + (
        backlog if budget is None else min(backlog, budget)
    )
    # A chunk's last round of requests runs below the concurrency, and each chunk costs a
    # backlog query: sixteen rounds a chunk keep both under a tenth of the pass.
    enricher = Enricher(
        source,
        sink,
        concurrency=concurrency,
        chunk=max(200, 16 * concurrency),
        progress=progress,
        stop=stop,
        listed=listed,
    )
    return await enricher.run(budget)
