"""The pipelined merge: batches merging at once stay exact, and the hash lookup probes.

The listing writer keeps several batches merging while it parses the next; the sink
serializes batches that share an order. These tests mix new, changed, unchanged, moved
and repeated orders across concurrent batches and check the rows and the history exactly.
The details pass merges a chunk while the next chunk's requests are in flight.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import random
from collections import Counter
from typing import Any

import orjson
import pytest

from asyncsync.engine.details import Enricher
from asyncsync.engine.listed import ListedIds, ListedIdsBuilder
from asyncsync.engine.listing import ListingEngine, Partition
from asyncsync.progress import Progress
from asyncsync.records import parse_list_item
from asyncsync.seams import ApiStats, Detail, ListQuery, MergeStats, Page
from asyncsync.simulator.data import Quirks, SimConfig, generate_orders
from asyncsync.simulator.render import Renderer
from asyncsync.store import Database
from asyncsync.store.database import sql
from asyncsync.store.orders import PgOrderStore

from .mirror import history

T1 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T2, T3 = T1 + dt.timedelta(hours=1), T1 + dt.timedelta(hours=2)
OPEN = [0, 1, 2, 5, 6]


def item(order_id: int, situacao: int, valor: str = "10.00") -> dict[str, Any]:
    return {"id": order_id, "situacao": situacao, "data": "2025-12-01", "valor": valor}


class PagedSource:
    """An OrderSource over fixed listings: status -> [(item, observed_at)], 100 a page."""

    def __init__(self, listings: dict[int, list[tuple[dict[str, Any], dt.datetime]]]) -> None:
        self._listings = listings

    async def list_orders(self, query: ListQuery, **_: object) -> Page:
        await asyncio.sleep(0)  # let pages of other statuses interleave
        rows = self._listings.get(query.situacao, [])
        chunk = rows[query.offset : query.offset + query.limit]
        observed = max((at for _, at in chunk), default=T1)
        return Page(query, tuple(i for i, _ in chunk), len(rows), observed)

    async def get_order(self, order_id: int, **_: object) -> Detail:
        raise AssertionError("listing only")

    def api_stats(self) -> ApiStats:
        return ApiStats()


def listings(orders: dict[int, tuple[int, str]], at: dt.datetime) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for order_id, (situacao, valor) in sorted(orders.items()):
        out.setdefault(situacao, []).append((item(order_id, situacao, valor), at))
    return out


async def list_all(sink: PgOrderStore, source: PagedSource) -> ListingEngine:
    engine = ListingEngine(source, sink, batch_size=250, merges_in_flight=3, track_seen=True)
    await engine.run([Partition(s) for s in range(8)], checkpointed=False)
    return engine


async def test_pipelined_listing_of_new_changed_and_moved_orders_is_exact(db) -> None:
    sink = Database(db).account("default", open_statuses=OPEN).orders
    first = {i: (i % 8, "10.00") for i in range(1, 3001)}
    await list_all(sink, PagedSource(listings(first, T1)))
    assert Counter(old for _, old, _ in await history(db)) == Counter({None: 3000})

    second = dict(first)
    moved = {i: (i % 8, (i % 8 + 3) % 8) for i in range(1, 3001, 10)}
    for i, (_, new) in moved.items():
        second[i] = (new, "10.00")
    revalued = [i for i in range(7, 3001, 7) if i not in moved]
    for i in revalued:
        second[i] = (second[i][0], "12.34")
    for i in range(3001, 3601):
        second[i] = (i % 8, "10.00")
    pages = listings(second, T2)
    # Order 11 moved while its old status was being paged: the old listing still shows it
    # (observed earlier, T2); its new status's listing shows it at T3. The stale sighting
    # must neither win nor record a change backwards, whichever batch merges first.
    old11, new11 = moved[11]
    pages[new11] = [(it, T3) if it["id"] == 11 else (it, at) for it, at in pages[new11]]
    pages[old11].append((item(11, old11), T2))
    engine = await list_all(sink, PagedSource(pages))

    stats = engine.result.stats
    assert list(engine.result.seen) == sorted(second)  # order 11, listed twice, once
    assert stats.inserted == 600 and stats.first_sightings == 600
    assert stats.changed == len(moved) + len(revalued)
    assert stats.status_changes == len(moved)
    rows = await db.fetch("SELECT id, situacao, valor::text AS valor FROM ordens_servico")
    assert {r["id"]: (r["situacao"], r["valor"]) for r in rows} == second
    got = Counter(await history(db))
    want = Counter({(i, None, first[i][0]): 1 for i in first})
    want.update((i, None, second[i][0]) for i in range(3001, 3601))
    want.update((i, old, new) for i, (old, new) in moved.items())
    assert got == want


async def test_a_batch_of_large_records_is_merged_by_its_size_not_its_count(
    db, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5,000 list items of 100 kB held 2 GB before their merge: a batch counted orders
    # only (sweep L). Past BATCH_CHARS of JSON it merges, whatever its count.
    from asyncsync.engine import listing as module

    monkeypatch.setattr(module, "BATCH_CHARS", 1_000_000)
    sink = Database(db).account("default", open_statuses=OPEN).orders
    sizes: list[int] = []
    merge = sink.merge_listed

    async def counted(records, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(len(records))
        return await merge(records, *args, **kwargs)

    sink.merge_listed = counted  # type: ignore[method-assign]
    big = {i: (3, "10.00") for i in range(1, 601)}
    pages = {s: [({**it, "observacoes": "x" * 50_000}, at) for it, at in rows]
             for s, rows in listings(big, T1).items()}  # fmt: skip
    engine = ListingEngine(PagedSource(pages), sink, batch_size=5000, page_size=10)
    await engine.run([Partition(3)], checkpointed=False)
    assert sum(sizes) == 600 and max(sizes) <= 30, sizes  # 1 MB is 20 of them and a page
    assert await db.fetchval("SELECT count(*) FROM ordens_servico") == 600


def test_the_ids_a_listing_read_answer_as_the_set_of_them_would() -> None:
    # Sorted runs merged when the listing ends: repeats across runs and within one (a
    # page starting on the order the one before ended on, an order in two statuses).
    rng = random.Random(3)
    read = [rng.randrange(1, 500) for _ in range(1000)]
    builder = ListedIdsBuilder(run=64)
    for at in range(0, len(read), 50):
        builder.extend(read[at : at + 50])
    listed = builder.build()
    assert list(listed) == sorted(set(read)) and len(listed) == len(set(read))
    probe = set(range(-1, 502))
    assert {i for i in probe if i in listed} == probe & set(read)
    assert listed.unlisted(probe) == probe - set(read)
    assert "7" not in listed and None not in listed
    builder.extend([read[0], 10**12])  # built again after more: the new ids join once
    assert list(builder.build()) == sorted({*read, 10**12})
    assert list(listed) == sorted(set(read))  # the value built before is unchanged
    empty = ListedIdsBuilder().build()
    assert len(empty) == 0 and 1 not in empty and empty.unlisted([1, 2]) == {1, 2}
    assert list(ListedIds()) == [] and ListedIds().unlisted(()) == set()


async def test_overlapping_batches_merged_at_once_keep_the_order_they_were_asked_in(db) -> None:
    sink = Database(db).account("default", open_statuses=OPEN).orders
    a = [parse_list_item(item(i, 0), T1) for i in range(1, 1001)]
    b = [parse_list_item(item(500, 6), T2)] + [
        parse_list_item(item(i, 1), T2) for i in range(1001, 1501)
    ]
    stale = [parse_list_item(item(500, 5), T1 + dt.timedelta(minutes=30))]
    # Without the claims, b would also see 500 as new and fail on the primary key.
    sa, sb, sc = await asyncio.gather(
        sink.merge_listed(a), sink.merge_listed(b), sink.merge_listed(stale)
    )
    assert (sa.inserted, sb.inserted, sb.changed, sb.status_changes) == (1000, 500, 1, 1)
    assert (sc.changed, sc.unchanged, sc.status_changes) == (0, 1, 0)
    assert await db.fetchval("SELECT situacao FROM ordens_servico WHERE id = 500") == 6
    assert [h for h in await history(db) if h[0] == 500] == [(500, None, 0), (500, 0, 6)]
    assert await db.fetchval("SELECT count(*) FROM ordens_servico") == 1500


async def test_the_hash_lookup_probes_the_primary_key_and_never_scans_the_mirror(db) -> None:
    sink = Database(db).account("default", open_statuses=OPEN).orders
    for start in range(1, 40_001, 10_000):
        await sink.merge_listed(
            [parse_list_item(item(i, i % 8), T1) for i in range(start, start + 10_000)]
        )
    # Never analyzed: the planner knows nothing of the ids (the case where a join would
    # hash the whole table for every batch).
    batch = [parse_list_item(item(i, 3), T2) for i in range(20_001, 25_001)]
    args = ([r.id for r in batch], [r.hash for r in batch], [r.observed_at for r in batch])
    async with db.acquire() as conn:
        plan = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + sql("find_changed"), "default", *args, False
        )
    nodes, stack = [], [orjson.loads(plan)[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    reads = [n for n in nodes if n.get("Relation Name") == "ordens_servico"]
    assert reads and all(n["Node Type"] == "Index Scan" for n in reads)
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in reads) == 5000


class DetailSource:
    """An OrderSource answering every detail after a pause; counts requests in flight."""

    def __init__(self, log: list[str]) -> None:
        self._log = log

    async def list_orders(self, query: ListQuery, **_: object) -> Page:
        raise AssertionError("details only")

    async def get_order(self, order_id: int, **_: object) -> Detail:
        self._log.append("fetch")
        await asyncio.sleep(0.001)
        return Detail(order_id, {"id": order_id, "situacao": 3}, T2)

    def api_stats(self) -> ApiStats:
        return ApiStats()


class BacklogSink:
    """The part of OrderSink the details pass uses, over an in-memory backlog."""

    def __init__(self, backlog: list[int], log: list[str], fail_at: int | None = None) -> None:
        self.backlog = backlog
        self.merged: list[int] = []
        self.merging = 0
        self.most_merging = 0
        self._log = log
        self._fail_at = fail_at

    async def detail_backlog(self, limit: int, exclude: Any = ()) -> list[int]:
        skip = set(exclude)
        return [i for i in self.backlog if i not in skip and i not in self.merged][:limit]

    async def detail_backlog_size(self) -> int:
        return len(self.backlog)

    async def merge_details(
        self, details: Any, failures: Any = (), missing: Any = (), listed: Any = ()
    ) -> Any:
        self.merging += 1
        self.most_merging = max(self.most_merging, self.merging)
        self._log.append("merge start")
        try:
            await asyncio.sleep(0.02)  # long enough for the next chunk's requests to start
            if self._fail_at is not None and len(self.merged) >= self._fail_at:
                raise RuntimeError("merge failed")
            self.merged.extend(d.id for d in details)
            return MergeStats(details=len(details))
        finally:
            self._log.append("merge end")
            self.merging -= 1


async def test_the_details_pass_fetches_the_next_chunk_while_one_merges() -> None:
    log: list[str] = []
    sink = BacklogSink(list(range(1, 1001)), log)
    stats = await Enricher(DetailSource(log), sink, concurrency=16, chunk=200).run()
    assert stats.details == 1000 and sorted(sink.merged) == list(range(1, 1001))
    assert len(sink.merged) == len(set(sink.merged))  # each order merged once
    assert sink.most_merging == 1  # merges one at a time, in order
    # Requests went out while a merge was in flight (the pipeline), not only between them.
    inside = depth = 0
    for event in log:
        depth += {"merge start": 1, "merge end": -1}.get(event, 0)
        inside += event == "fetch" and depth > 0
    assert inside >= 200


async def test_a_failed_details_merge_stops_the_pass_with_its_error() -> None:
    log: list[str] = []
    sink = BacklogSink(list(range(1, 1001)), log, fail_at=400)
    with pytest.raises(RuntimeError, match="merge failed"):
        await Enricher(DetailSource(log), sink, concurrency=16, chunk=200).run()
    assert sorted(sink.merged) == list(range(1, 401))
    await asyncio.sleep(0.05)  # nothing keeps running behind the error
    assert sink.merging == 0


async def test_the_details_bar_moves_with_each_answer_not_with_each_merge() -> None:
    # At a real plan's pace a chunk takes longer than the rate's window: a bar that moved
    # only when a chunk merged would read 0/s most of the time.
    log: list[str] = []
    sink = BacklogSink(list(range(1, 301)), log)
    progress = Progress("details")
    seen: list[tuple[int, int]] = []  # (answers counted, orders merged) after each fetch

    class Watched(DetailSource):
        async def get_order(self, order_id: int, **options: object) -> Detail:
            seen.append((progress.details, len(sink.merged)))
            return await super().get_order(order_id, **options)

    await Enricher(Watched(log), sink, concurrency=4, chunk=100, progress=progress).run()
    assert progress.details == 300
    counted_ahead = [counted for counted, merged in seen if counted > merged]
    assert len(counted_ahead) > 100  # the count ran ahead of the merges
    assert all(b >= a for (a, _), (b, _) in itertools.pairwise(seen))  # and never back


def test_the_simulators_items_keep_the_content_hashes_every_mirror_holds() -> None:
    """A changed hash makes every existing mirror re-write every row at its next sync: the
    payloads and hashes of the simulator's items, in every form its quirks answer (and
    with a NUL and a non-normal form), are pinned to what they have always been."""
    today = dt.date(2026, 1, 1)
    every_form = Quirks(situacao_style="unstable", zero_dates=True, money_as_string=True,
                        ids_as_strings=True)  # fmt: skip
    digest = hashlib.blake2b(digest_size=16)
    for quirks in (Quirks(), every_form):
        config = SimConfig(orders=400, seed=7, today=today, quirks=quirks)
        render = Renderer(quirks, config.seed).list_item
        # As the client reads them: off the wire, not the renderer's own objects.
        items = orjson.loads(orjson.dumps([render(o) for o in generate_orders(config)]))
        items += [{**items[0], "numeroOrdemServico": "1\x002"}, {**items[1], "valor": "7,5"}]
        for record in (parse_list_item(i, T1) for i in items):
            digest.update(record.hash + record.payload.encode() + b"\n")
    assert digest.hexdigest() == "f231f4da4dd277f87ac523ca152977f4"
