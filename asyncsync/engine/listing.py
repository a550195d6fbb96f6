"""The listing engine: concurrent paginated fetches feeding one writer through a queue.

Producers page through :class:`Partition` s (a status, optionally an emission window)
and put pages on a bounded queue, so memory stays bounded whatever the number of
orders. One writer batches the pages, parses each batch and hands it to the sink, which
merges it with its failures and checkpoints in one transaction. The writer is a
pipeline: up to ``merges_in_flight`` batches merge while it parses the next one, so
Python's work (parsing, hashing, encoding COPY data) overlaps PostgreSQL's, and the
database works on more than one batch at a time (the sink serializes batches that share
an order).

Two paging shapes:

* ``streaming`` (full sync): once the first page reports ``paginacao.total``, the rest
  of the partition's pages are requested concurrently;
* ``checkpointed`` (backfill): pages go one after another and each waits for its merge,
  whose transaction also stores the partition's checkpoint. A crash re-fetches at most
  one page per partition in flight.

A stop event drains gracefully: producers stop asking, the writer merges what arrived.
A request still waiting for its turn at the account's pace when the stop comes is not sent
(:class:`~asyncsync.errors.RequestWithheld`): the fetcher that asked for it stops there,
and the others' pages already on their way are merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import orjson

from ..errors import RecordError, RequestWithheld, TinyAuthError, TinyError, TinyOutage
from ..options import BATCH_ORDERS
from ..progress import Progress
from ..records import (
    FailureRecord,
    OrderRecord,
    canonical_json,
    failure_from,
    item_id,
    parse_list_item,
)
from ..seams import Checkpoint, ListQuery, MergeStats, OrderSink, OrderSource, Page
from ..status import ALL_STATUSES, parse_situacao
from ..tasks import run_all, unwrap
from .listed import ListedIds, ListedIdsBuilder

log = logging.getLogger(__name__)

ALL_CODES = tuple(int(code) for code in ALL_STATUSES)


@dataclass(frozen=True, slots=True)
class Partition:
    """A slice of the listing: one status, optionally one emission-date window."""

    situacao: int
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    key: str | None = None  # sync_metadata key of its checkpoint (checkpointed paging)
    start_offset: int = 0
    resume_id: int | None = None  # the id last merged, at start_offset - 1 (checkpointed)

    def query(self, offset: int, limit: int) -> ListQuery:
        return ListQuery(self.situacao, offset, limit, self.date_from, self.date_to)


@dataclass
class ListingResult:
    """What a listing run saw and did."""

    stats: MergeStats = field(default_factory=MergeStats)
    pages: int = 0
    seen: ListedIds = field(default_factory=ListedIds)  # ids of every status (track_seen)
    failed: set[int] = field(default_factory=set)  # ids of list items that failed (track_seen)
    complete: set[Partition] = field(default_factory=set)  # partitions paged to the end
    totals: dict[Partition, int | None] = field(default_factory=dict)


@dataclass
class _Item:
    partition: Partition
    page: Page
    checkpoint: Checkpoint | None
    done: asyncio.Future[None] | None


#: A batch is merged once its records' JSON passes this many characters, whatever their
#: number: 5,000 list items of 100 kB each held 2 GB (each is held several times over:
#: the answer, the parsed item, its JSON, the COPY buffer), four times the container's
#: memory limit (sweep L). Ordinary items (about 1 kB) never reach it.
BATCH_CHARS = 16 << 20


@dataclass
class _Batch:
    """Pages parsed into what one ``merge_listed`` call takes."""

    items: list[_Item] = field(default_factory=list)
    records: list[OrderRecord] = field(default_factory=list)
    failures: list[FailureRecord] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    chars: int = 0  # of the records' and failures' raw JSON: see BATCH_CHARS


async def page_through(
    source: OrderSource,
    part: Partition,
    *,
    page_size: int,
    workers: int,
    stop: asyncio.Event,
    on_page: Callable[[Page], Awaitable[None]],
) -> None:
    """Hand every page of ``part`` to ``on_page``, the first one first.

    Once the first page reports ``paginacao.total``, the other offsets are shared by
    ``workers`` concurrent fetchers (so at most that many pages wait on a slow
    ``on_page``), stepping by the first page's size: a server may cap ``limit`` below
    ours. A page answered empty before that total is asked again once, and empty again
    it ends them: a total that lies high (or orders that left while the partition was
    paged) costs no request for every offset up to it, and a page lost on the way once
    costs no later one. Without a total, pages follow one another, each starting on the
    last order of the one before, until one is empty or holds that order alone
    (:func:`_page_without_total`), and so they do past a total whose last page is full
    (or comes without a total): a total that lies low hides no order, and a true one
    costs one request more when it is a multiple of the page size (the server's, where
    it caps ``limit``: after the first page, a page as long as the first is full). No
    page is asked for once ``stop`` is set, nor sent: a fetcher whose request still
    waited for its turn then stops, and once the pages already on their way are handed
    over, page_through returns or raises :class:`~asyncsync.errors.RequestWithheld`.
    """
    if stop.is_set():
        return
    first = await source.list_orders(part.query(part.start_offset, page_size), stop=stop)
    await on_page(first)
    if first.is_last:
        return
    step = len(first.items)
    start = part.start_offset + step
    # No total, or a full page at it: a total that lies low would hide the orders past
    # it, so the pages go on one after another, as without a total, until one ends.
    if first.total is None or start >= first.total:
        await _page_without_total(source, part, first, page_size, step, stop, on_page)
        return

    async def fetch(offset: int) -> Page:
        page = await source.list_orders(part.query(offset, page_size), stop=stop)
        if page.items or stop.is_set():
            return page
        return await source.list_orders(part.query(offset, page_size), stop=stop)

    total = first.total
    beyond: Page | None = None  # the total's last page, when it says more may follow
    if step < page_size:  # a server's cap on limit, or all there is: the total may lie
        if stop.is_set():
            return
        second = await fetch(start)
        await on_page(second)
        if ends(second, step) or stop.is_set():
            return
        start += step
        if start >= total:  # no offset left for the workers: straight on from it
            beyond = second
    offsets = iter(range(start, total, step))
    emptied = False

    async def worker() -> None:
        nonlocal emptied, beyond
        for offset in offsets:
            if stop.is_set() or emptied:
                return
            try:
                page = await fetch(offset)
            except RequestWithheld:
                return  # stopped: the other fetchers' pages on their way still come
            emptied = emptied or not page.items
            if offset + step >= total and not ends(page, step):
                beyond = page
            await on_page(page)

    await run_all(worker() for _ in range(workers))
    if beyond is not None and not emptied:
        await _page_without_total(source, part, beyond, page_size, step, stop, on_page)


def ends(page: Page, full: int) -> bool:
    """Whether nothing comes after ``page``, ``full`` items making a full page: its
    :attr:`Page.is_last`, unless it holds ``full`` items or more (a server capping
    ``limit`` answers that many to every page but the last, fewer than asked: at a total
    that lies low, more may follow)."""
    return page.is_last and (not page.items or len(page.items) < full)


#: Times a listing starts a partition over after its pages shifted down under it.
RESTARTS = 2


def past_seam(page: Page) -> Page:
    """``page`` without its first item: a page asked from one offset before the last
    order already handed over, found there (the seam), is handed over from the next
    order on, so each order listed is received, merged and counted once (a true total
    that is a multiple of the page size counted its last order twice: orders_listed and
    the listing's progress past the total)."""
    q = page.query
    query = replace(q, offset=q.offset + 1, limit=max(q.limit - 1, 0))
    return replace(page, query=query, items=page.items[1:])


async def _page_without_total(
    source: OrderSource,
    part: Partition,
    first: Page,
    page_size: int,
    full: int,
    stop: asyncio.Event,
    on_page: Callable[[Page], Awaitable[None]],
) -> None:
    """The pages after ``first`` when the API sends no ``paginacao`` (or one that may lie
    low): no total can show that orders left the partition while it was paged, and every
    later order moved down past a seam, unlisted. So each page starts on the last order of
    the one before. Another order there, one not seen yet (or none), says the pages
    shifted down: the partition is listed again from its start (twice at most; then the
    cycles' vanished-order details and the sweep are left to find the rest). One seen
    already says they shifted up: orders seen twice, none lost. The order there as
    expected, handed over with the page before, is not handed over again
    (:func:`past_seam`). The listing ends when only that last order is left, or with a
    page that :func:`ends` (``full`` items making a full page)."""
    page, restarts = first, 0
    offset = first.query.offset + len(first.items)
    while not stop.is_set():
        seen = {item_id(item) for item in page.items}
        seam = item_id(page.items[-1])
        at = offset if seam is None else offset - 1
        page = await source.list_orders(part.query(at, page_size), stop=stop)
        head = item_id(page.items[0]) if page.items else None
        await on_page(past_seam(page) if seam is not None and head == seam else page)
        if seam is not None and head != seam and head not in seen and restarts < RESTARTS:
            restarts += 1
            log.info("%s shifted while it was paged (no paginacao): listed again", part)
            if stop.is_set():
                return
            page = await source.list_orders(part.query(part.start_offset, page_size), stop=stop)
            await on_page(page)
            if ends(page, full):
                return
            offset = part.start_offset + len(page.items)
            continue
        if ends(page, full) or (seam is not None and head == seam and len(page.items) == 1):
            return
        offset = at + len(page.items)


async def status_totals(
    source: OrderSource,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    *,
    statuses: Sequence[int] = ALL_CODES,
    stop: asyncio.Event | None = None,
) -> dict[int, int | None]:
    """``paginacao.total`` of ``statuses`` (one single-item request each); None where the
    API gave none, the request failed (authentication failures and outages propagate) or
    ``stop`` withheld it."""
    totals: dict[int, int | None] = {}

    async def one(situacao: int) -> None:
        query = ListQuery(situacao, 0, 1, date_from, date_to)
        try:
            page = await source.list_orders(query, stop=stop)
            totals[situacao] = page.total
        except (TinyAuthError, TinyOutage):
            raise
        except (TinyError, RequestWithheld):
            totals[situacao] = None

    await run_all(one(s) for s in statuses)
    return dict(sorted(totals.items()))


def listed_failure(
    exc: RecordError, raw: object, situacao: int, *, wrapped: bool = False
) -> FailureRecord:
    """The failure of a list item that could not be mapped. When the item's own
    ``situacao`` does not say the status it was listed under (an unknown code, none, not
    an object at all), ``dados_api`` is ``{"list_item": ..., "listed_as": <status>}``:
    the API counts the item in that status's total, and so must the mirror's count of what
    it knows (``integrity_tracked_counts``), or the status looks short at every cycle and
    is listed again whole each time. ``wrapped`` (the integrity check's): the item is
    under ``"list_item"`` whatever its status."""
    failure = failure_from(exc)
    try:
        own = isinstance(raw, Mapping) and int(parse_situacao(raw.get("situacao"))) == situacao
    except ValueError:
        own = False
    item = orjson.loads(failure.raw) if failure.raw else None
    if own or failure.raw is None:
        if not wrapped:
            return failure
        dados: dict[str, object] = {"list_item": item}
    else:
        dados = {"list_item": item, "listed_as": situacao}
    try:
        return FailureRecord(failure.order_id, failure.error, canonical_json(dados))
    except orjson.JSONEncodeError:  # an item as deep as orjson writes, one level deeper
        dados["list_item"] = failure.raw  # its text, as a deeper one's (records.storable)
        return FailureRecord(failure.order_id, failure.error, canonical_json(dados))


def checkpoint_value(next_offset: int, complete: bool, last_id: int | None = None) -> str:
    value: dict[str, object] = {"offset": next_offset, "complete": complete}
    if last_id is not None:
        value["last_id"] = last_id
    return orjson.dumps(value).decode()


class ListingEngine:
    """Lists partitions from an OrderSource into an OrderSink."""

    def __init__(
        self,
        source: OrderSource,
        sink: OrderSink,
        *,
        page_size: int = 100,
        batch_size: int = BATCH_ORDERS,
        queue_pages: int = 32,
        partitions_in_flight: int = 8,
        progress: Progress | None = None,
        stop: asyncio.Event | None = None,
        pages_in_flight: int = 16,
        track_seen: bool = False,
        merges_in_flight: int = 2,
    ) -> None:
        self._source = source
        self._sink = sink
        self._page_size = page_size
        self._batch_size = batch_size
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=queue_pages)
        self._in_flight = asyncio.Semaphore(partitions_in_flight)
        self.progress = progress or Progress("listing")
        self._stop = stop or asyncio.Event()
        # Pages requested but not yet queued, per streaming partition: bounds memory.
        self._pages_in_flight = pages_in_flight
        self._seen = ListedIdsBuilder() if track_seen else None
        # Batches handed to the sink and not yet committed: bounds memory and connections.
        self._merge_slots = asyncio.Semaphore(max(1, merges_in_flight))
        self._merging = 0
        self.result = ListingResult()

    async def run(self, partitions: Sequence[Partition], *, checkpointed: bool) -> ListingResult:
        """Fetch every partition and merge everything; returns what was seen."""
        self.progress.partitions_total = (self.progress.partitions_total or 0) + len(partitions)
        await unwrap(self._run(partitions, checkpointed))
        if self._seen is not None:  # a sweep's million ids: ~0.5 s, off the event loop
            self.result.seen = await asyncio.to_thread(self._seen.build)
        return self.result

    async def _run(self, partitions: Sequence[Partition], checkpointed: bool) -> None:
        async with asyncio.TaskGroup() as outer:
            # If the writer dies, the group cancels the producers blocked on the queue.
            writer = outer.create_task(self._writer(), name="listing-writer")
            try:
                async with asyncio.TaskGroup() as tg:
                    for part in partitions:
                        tg.create_task(self._produce(part, checkpointed), name=f"list:{part}")
            except Exception:
                # A partition failed for good (its page unreadable, Tiny down): the pages
                # the others fetched are merged before the run fails with it. They were
                # thrown away with the writer, and a full sync that failed on one status
                # kept 25 orders of 2,000, the next run no further (sweep L).
                if not writer.done():
                    await self._queue.put(None)
                    await asyncio.wait({writer})
                raise
            await self._queue.put(None)

    async def _produce(self, part: Partition, checkpointed: bool) -> None:
        async with self._in_flight:
            if self._stop.is_set():
                return
            try:
                if checkpointed:
                    await self._page_sequentially(part)
                else:
                    await self._page_streaming(part)
            except RequestWithheld:
                return  # stopped before its next request went out: not complete
            if not self._stop.is_set():
                self.result.complete.add(part)
                self.progress.partitions_done += 1

    async def _fetch(self, part: Partition, offset: int) -> Page:
        page = await self._source.list_orders(part.query(offset, self._page_size), stop=self._stop)
        self.result.pages += 1
        self.progress.pages += 1
        return page

    async def _resume_at(self, part: Partition) -> int:
        """Where a resumed partition goes on: its stored offset while the order merged
        last is still just before it; else (orders before it left the partition while
        no run was paging it, and later ones moved down past the offset) from the start."""
        offset = part.start_offset
        if offset == 0 or part.resume_id is None:
            return offset
        if await self._seam_holds(part, offset, part.resume_id):
            return offset
        log.info("%s shifted since its checkpoint at offset %d: listed again from the start",
                 part.key, offset)  # fmt: skip
        return 0

    async def _seam_holds(self, part: Partition, offset: int, order_id: int) -> bool:
        """Whether ``order_id`` is still just before ``offset`` (one single-item request):
        if not, orders before it left the partition and later ones moved down past it."""
        seam = await self._source.list_orders(part.query(offset - 1, 1), stop=self._stop)
        return bool(seam.items) and item_id(seam.items[0]) == order_id

    async def _page_sequentially(self, part: Partition) -> None:
        offset = await self._resume_at(part)
        last_total: int | None = None
        last_id: int | None = None
        restarts = 0
        # Without paginacao (or past a full page at it: a total that lies low) no total
        # shows orders leaving: each page then starts on the last order of the one before
        # (as _page_without_total does), and another order there, one that page did not
        # show (or none), says the pages shifted down.
        overlap = False
        shown: set[int | None] = set()
        full: int | None = None  # a full page's items: the first page's, a server may cap
        while not self._stop.is_set():
            at = offset - 1 if overlap else offset
            page = await self._fetch(part, at)
            self.result.totals[part] = page.total
            shrunk = page.total is not None and last_total is not None and page.total < last_total
            seam, seam_id = offset, last_id
            head = item_id(page.items[0]) if page.items else None
            moved_down = overlap and head != seam_id and head not in shown
            merged = past_seam(page) if overlap and head == seam_id else page
            last = page.is_last if full is None else ends(page, full)
            end = last or (overlap and head == seam_id and len(page.items) == 1)
            offset = at + len(page.items)
            full = full or len(page.items) or None
            last_total = page.total
            last_id = item_id(page.items[-1]) if page.items else None
            overlap = last_id is not None and (page.total is None or offset >= page.total)
            shown = {item_id(item) for item in page.items} - {None}
            assert part.key is not None, "checkpointed partitions need a key"
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            # Orders left the partition while it was paged: if the ones before this page
            # moved down, the order that was at the seam is on no page. Start over then
            # (twice at most: a partition that keeps moving is left to the cycles).
            look = restarts < RESTARTS and shrunk and seam_id is not None
            holds: bool | None = None
            if look and not moved_down and not self._stop.is_set() and seam_id is not None:
                with contextlib.suppress(RequestWithheld):  # the stop came: below
                    holds = await self._seam_holds(part, seam, seam_id)
            if look and self._stop.is_set():
                # Told to stop: no look at the seam now. The checkpoint stays before this
                # page (merged all the same), so a resumed run looks there first.
                cp = Checkpoint(part.key, checkpoint_value(seam, False, seam_id))
                await self._queue.put(_Item(part, merged, cp, done))
                await done
                return
            if restarts < RESTARTS and (moved_down or holds is False):
                log.info("%s shifted while it was paged: listed again", part.key)
                restarts += 1
                offset, last_total, last_id, overlap = 0, None, None, False
                cp = Checkpoint(part.key, checkpoint_value(0, False))
                await self._queue.put(_Item(part, merged, cp, done))
                await done  # this page is good: merged, the partition restarts
                continue
            cp = Checkpoint(part.key, checkpoint_value(offset, end, last_id))
            await self._queue.put(_Item(part, merged, cp, done))
            await done  # merged and checkpointed together
            if end:
                return

    async def _page_streaming(self, part: Partition) -> None:
        async def queue(page: Page) -> None:
            self.result.pages += 1
            self.progress.pages += 1
            if part not in self.result.totals and page.total is not None:
                # The first page tells how many orders the partition holds: the bar's total.
                self.progress.records_total = (self.progress.records_total or 0) + page.total
            # The newest total: what the listing should have found by its end.
            if page.total is not None or part not in self.result.totals:
                self.result.totals[part] = page.total
            await self._queue.put(_Item(part, page, None, None))

        await page_through(
            self._source,
            part,
            page_size=self._page_size,
            workers=self._pages_in_flight,
            stop=self._stop,
            on_page=queue,
        )

    async def _writer(self) -> None:
        # A failed merge cancels the writer and the merges still in flight (their
        # transactions roll back), then surfaces through the outer task group.
        async with asyncio.TaskGroup() as merges:
            batch = _Batch()
            while True:
                item = await self._queue.get()
                if item is not None:
                    # Parsed as it comes, a page at a time (~1 ms): a whole batch at once
                    # would hold the event loop for tens of ms, every answer waiting.
                    self._parse(item, batch)
                # Merge when the batch is full, when a producer waits for its checkpoint,
                # or when nothing else is queued and the database is idle (while merges
                # are in flight, more pages make a fuller batch rather than a tiny one).
                flush = (
                    item is None
                    or len(batch.records) + len(batch.failures) >= self._batch_size
                    or batch.chars >= BATCH_CHARS
                    or item.done is not None
                    or (self._queue.empty() and self._merging == 0)
                )
                if flush and batch.items:
                    await self._merge_slots.acquire()  # parsed: overlaps the merges in flight
                    self._merging += 1
                    merges.create_task(self._merge(batch), name="listing-merge")
                    batch = _Batch()
                if item is None:
                    return

    def _parse(self, item: _Item, batch: _Batch) -> None:
        """Add ``item``'s page, parsed, to ``batch``."""
        batch.items.append(item)
        if item.checkpoint is not None:
            batch.checkpoints.append(item.checkpoint)
        records, failures = batch.records, batch.failures
        first, first_failure = len(records), len(failures)
        for raw in item.page.items:
            try:
                records.append(parse_list_item(raw, item.page.observed_at))
            except RecordError as exc:
                failures.append(listed_failure(exc, raw, item.page.query.situacao))
                if self._seen is not None:
                    self.result.failed.add(failures[-1].order_id)
        batch.chars += sum(len(rec.payload) for rec in records[first:])
        batch.chars += sum(len(f.raw or "") for f in failures[first_failure:])
        if self._seen is not None:
            self._seen.extend(rec.id for rec in records[first:])

    async def _merge(self, batch: _Batch) -> None:
        try:
            stats = await self._sink.merge_listed(batch.records, batch.failures, batch.checkpoints)
        except BaseException as exc:
            for i in batch.items:
                if i.done is not None and not i.done.done():
                    i.done.set_exception(exc if isinstance(exc, Exception) else RuntimeError())
            raise
        finally:
            self._merging -= 1
            self._merge_slots.release()
        self.result.stats = self.result.stats + stats
        self.progress.records += stats.received
        self.progress.failures += len(batch.failures)
        for i in batch.items:
            if i.done is not None and not i.done.done():
                i.done.set_result(None)
