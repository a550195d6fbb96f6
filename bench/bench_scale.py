"""Issue 12, the sink as the mirror grows: first load and re-sync rows/s at each size.

What it measures
    For each size (``--sizes``, 100k and 1M orders by default) the simulator's generator
    renders the raw list items (no HTTP) and ``parse_list_item`` builds the records. In a
    scratch database, timed one after another in the same run:

    * the ceiling: raw ``COPY`` of every row into an unlogged table without indexes;
    * the floor: the same rows and their history rows COPYed into the mirror's own
      tables (logged, with their indexes), ``--in-flight`` batches at once, nothing else;
    * ``PgOrderStore.merge_listed`` first load, one batch at a time, then with
      ``--in-flight`` batches merging at once (what the listing writer does);
    * re-syncs with 0% and 1% of the orders changed (pipelined like the writer);
    * the listing writer itself: the raw pages through ``ListingEngine`` (parse → hash →
      COPY → merge → history, pipelined), first load into emptied tables;
    * the baseline: asyncpg ``executemany`` of a naive upsert with history (bench_merge's),
      first load of the first ``--executemany-rows`` orders (capped: it is slow).

    For each first load the rate over the first and the last quarter of its batches shows
    whether a batch costs more as the table grows; ``EXPLAIN ANALYZE`` of the lookup for
    the last batch shows how ``ordens_servico`` is read. Where PostgreSQL runs on this
    machine, the CPU seconds of its backends (from ``/proc``) are set beside the client's
    CPU seconds and the wall clock: Python's work against time spent waiting on PostgreSQL.
    ``--profile`` also times the smallest size's first load statement by statement,
    samples PostgreSQL's backends with Linux ``perf`` over a pipelined first load (where
    the server's CPU goes, by function; skipped without ``perf`` or a local server), and
    runs the writer's first load under a profiler (pyinstrument when installed, else
    cProfile): where Python's time goes.

    .venv/bin/python bench/bench_scale.py [--quick] [--sizes 100000,1000000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from _common import (
    describe_dsn,
    parser,
    per_s,
    print_table,
    scratch_database,
    server_settings,
    write_json,
)
from _profile import BackendCpu, profiled, server_profile, statement_costs
from bench_merge import (
    COLUMNS,
    NAIVE_UPSERT,
    as_shipped,
    batches,
    ceiling,
    empty_tables,
    find_changed_plan,
    raw_items,
    upsert_args,
    vacuum,
    with_changed_status,
)

from asyncsync import collector
from asyncsync.engine.listing import ListingEngine, Partition
from asyncsync.options import BATCH_ORDERS
from asyncsync.records import OrderRecord, parse_list_item
from asyncsync.seams import ApiStats, Detail, ListQuery, Page
from asyncsync.status import OPEN_STATUSES
from asyncsync.store import Database
from asyncsync.store.database import connect_pool
from asyncsync.store.orders import PgOrderStore

ACCOUNT = "default"


class ItemSource:
    """An OrderSource over rendered list items, by status, without HTTP."""

    def __init__(self, items: Sequence[dict[str, Any]], observed_at: dt.datetime) -> None:
        self._by_status: dict[int, list[dict[str, Any]]] = {}
        for item in items:
            self._by_status.setdefault(int(str(item["situacao"])[0]), []).append(item)
        self._at = observed_at

    async def list_orders(self, query: ListQuery, **_: object) -> Page:
        await asyncio.sleep(0)  # a page answer is an await, as over HTTP
        rows = self._by_status.get(query.situacao, [])
        chunk = tuple(rows[query.offset : query.offset + query.limit])
        return Page(query, chunk, len(rows), self._at)

    async def get_order(self, order_id: int, **_: object) -> Detail:
        raise NotImplementedError("listing only")

    def api_stats(self) -> ApiStats:
        return ApiStats()


def quarters(sizes: Sequence[int], finished: Sequence[float]) -> tuple[int, int]:
    """rows/s over the first and the last quarter of the batches, from the moments each
    batch finished (seconds since the load started; batches may overlap)."""
    q = max(1, len(sizes) // 4)
    head = per_s(sum(sizes[:q]), finished[q - 1])
    tail = per_s(sum(sizes[-q:]), finished[-1] - finished[-q - 1] if len(sizes) > q else 0)
    return head, tail


async def sink_load(
    sink: PgOrderStore, records: Sequence[OrderRecord], size: int, in_flight: int
) -> dict[str, Any]:
    """``records`` through ``merge_listed`` in batches of ``size``, ``in_flight`` at once."""
    chunks = batches(records, size)
    finished: list[float] = [0.0] * len(chunks)
    slots = asyncio.Semaphore(in_flight)
    written = history = 0
    started = time.perf_counter()

    async def one(i: int, chunk: Sequence[OrderRecord]) -> None:
        nonlocal written, history
        try:
            stats = await sink.merge_listed(chunk)
        finally:
            slots.release()
        written += stats.inserted + stats.changed
        history += stats.first_sightings + stats.status_changes
        finished[i] = time.perf_counter() - started

    async with asyncio.TaskGroup() as tg:
        for i, chunk in enumerate(chunks):
            await slots.acquire()
            tg.create_task(one(i, chunk))
    seconds = time.perf_counter() - started
    head, tail = quarters([len(c) for c in chunks], sorted(finished))
    return {"rows": len(records), "seconds": seconds, "rows_s": per_s(len(records), seconds),
            "first_quarter": head, "last_quarter": tail, "written": written,
            "history": history}  # fmt: skip


ORDER_COLUMNS = ("account", *COLUMNS)  # upsert_args order
HISTORY_COLUMNS = ("account", "id_os", "status_antigo", "status_novo", "changed_at", "source")


def history_rows(records: Sequence[OrderRecord]) -> list[tuple[Any, ...]]:
    """The first-sighting history rows of ``records`` (:data:`HISTORY_COLUMNS` order)."""
    return [(ACCOUNT, r.id, None, r.situacao, r.observed_at, "list") for r in records]


async def ceiling_load(pool: asyncpg.Pool, records: Sequence[OrderRecord]) -> dict[str, Any]:
    """Raw COPY of every row into an unlogged table without indexes (bench_merge's)."""
    async with pool.acquire() as conn:
        c = await ceiling(conn, list(records))
    return {"rows": c.rows, "seconds": c.seconds, "rows_s": per_s(c.rows, c.seconds)}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, with every run's rate beside it (and, for loads
    timed by quarters, every run's last-quarter ÷ first-quarter rate)."""
    ranked = sorted(runs, key=lambda r: r["rows_s"])
    out = {**ranked[(len(ranked) - 1) // 2], "runs": [r["rows_s"] for r in runs]}
    if all(r.get("first_quarter") for r in runs):
        out["quarter_ratios"] = [round(r["last_quarter"] / r["first_quarter"], 2) for r in runs]
    return out


async def tables_load(
    pool: asyncpg.Pool, records: Sequence[OrderRecord], size: int, in_flight: int
) -> dict[str, Any]:
    """The floor of a first load: the rows and their first-sighting history COPYed into
    the mirror's own tables (logged, indexed), batch by batch, ``in_flight`` at once, and
    nothing else — no lookup, no claims, no failures or checkpoints."""
    chunks = iter(batches(records, size))

    async def copier() -> None:
        async with pool.acquire() as conn:
            for chunk in chunks:
                orders = [upsert_args(ACCOUNT, r) for r in chunk]
                history = history_rows(chunk)
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "ordens_servico", records=orders, columns=ORDER_COLUMNS
                    )
                    await conn.copy_records_to_table(
                        "ordem_status_history", records=history, columns=HISTORY_COLUMNS
                    )

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(in_flight):
            tg.create_task(copier())
    seconds = time.perf_counter() - started
    return {"rows": len(records), "seconds": seconds, "rows_s": per_s(len(records), seconds)}


async def writer_load(
    sink: PgOrderStore, items: Sequence[dict[str, Any]], size: int, in_flight: int
) -> dict[str, Any]:
    """The raw pages through the listing writer (parsing included)."""
    engine = ListingEngine(
        ItemSource(items, dt.datetime.now(dt.UTC)),
        sink,
        batch_size=size,
        merges_in_flight=in_flight,
    )
    started = time.perf_counter()
    await engine.run([Partition(s) for s in range(8)], checkpointed=False)
    seconds = time.perf_counter() - started
    stats = engine.result.stats
    return {"rows": len(items), "seconds": seconds, "rows_s": per_s(len(items), seconds),
            "written": stats.inserted + stats.changed,
            "history": stats.first_sightings + stats.status_changes}  # fmt: skip


async def executemany_load(conn: asyncpg.Connection, records: Sequence[OrderRecord]) -> float:
    await as_shipped(conn)
    started = time.perf_counter()
    for chunk in batches(records, 2000):
        async with conn.transaction():
            await conn.executemany(NAIVE_UPSERT, [upsert_args(ACCOUNT, r) for r in chunk])
    return time.perf_counter() - started


async def measured(
    cpu: BackendCpu, label: str, work: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Run ``work``, adding client CPU and PostgreSQL backend CPU seconds to its figures."""
    before = await cpu.sample()
    client = time.process_time()
    out = await work()
    out["client_cpu_s"] = time.process_time() - client
    out["pg_cpu_s"] = await cpu.since(before)
    out["path"] = label
    print(f"  {label}: {out['rows_s']:,} rows/s", flush=True)
    return out


async def one_size(args: argparse.Namespace, n: int) -> dict[str, Any]:
    print(f"size {n:,}: generating and parsing", flush=True)
    items = raw_items(n, args.seed)
    # Hours ago: a request is always observed before its merge (a later stamp is capped).
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    parse_started = time.perf_counter()
    first = [parse_list_item(item, t0) for item in items]
    parse_s = time.perf_counter() - parse_started
    same = [parse_list_item(item, t0 + dt.timedelta(hours=1)) for item in items]
    one_pct_items = [dict(item) for item in items]
    with_changed_status(one_pct_items, 0.01, args.seed)
    one_pct = [parse_list_item(item, t0 + dt.timedelta(hours=2)) for item in one_pct_items]
    del one_pct_items
    size, k = args.batch, args.in_flight
    out: dict[str, Any] = {"orders": n, "batch": size, "in_flight": k,
                           "parse_rows_s": per_s(n, parse_s), "paths": []}  # fmt: skip
    paths: list[dict[str, Any]] = out["paths"]
    async with (
        scratch_database(args.dsn, "scale") as dsn,
        connect_pool(dsn, max_size=k + 1) as pool,
    ):
        cpu = BackendCpu(pool)
        sink = Database(pool).account(ACCOUNT, open_statuses=[int(s) for s in OPEN_STATUSES]).orders
        # The ceiling, the floor and the pipelined first load are timed in interleaved
        # rounds and each reported by its median run: one run of the ceiling takes well
        # under a second and swings by a third from one run to the next on this machine.
        rounds: dict[str, list[dict[str, Any]]] = {"ceiling": [], "floor": [], "first": []}
        floor_label = f"raw COPY into the mirror's tables + history, {k} in flight (the floor)"
        for i in range(args.rounds):
            print(f"  round {i + 1} of {args.rounds}", flush=True)
            rounds["ceiling"].append(await measured(cpu, "raw COPY ceiling",
                                                    lambda: ceiling_load(pool, first)))  # fmt: skip
            async with pool.acquire() as conn:
                await empty_tables(conn)
            floor = await measured(cpu, floor_label, lambda: tables_load(pool, first, size, k))
            rounds["floor"].append(floor)
            async with pool.acquire() as conn:
                await empty_tables(conn)
            load = await measured(cpu, f"first load, {k} batches in flight",
                                  lambda: sink_load(sink, first, size, k))  # fmt: skip
            rounds["first"].append(load)
            if i + 1 < args.rounds:
                async with pool.acquire() as conn:
                    await empty_tables(conn)
        c = median_run(rounds["ceiling"])
        out["ceiling_rows_s"] = c["rows_s"]
        out["ceiling_client_cpu_s"] = c["client_cpu_s"]
        out["ceiling_pg_cpu_s"] = c["pg_cpu_s"]
        out["ceiling_runs"] = c["runs"]
        paths.append(median_run(rounds["floor"]))
        paths.append(median_run(rounds["first"]))
        async with pool.acquire() as conn:
            out["plan_end_of_load"] = await find_changed_plan(conn, first[-size:])
            await empty_tables(conn)
        paths.append(await measured(cpu, "first load, 1 batch at a time",
                                    lambda: sink_load(sink, first, size, 1)))  # fmt: skip
        async with pool.acquire() as conn:
            await vacuum(conn)
        paths.append(await measured(cpu, "re-sync 0% changed",
                                    lambda: sink_load(sink, same, size, k)))  # fmt: skip
        paths.append(await measured(cpu, "re-sync 1% changed",
                                    lambda: sink_load(sink, one_pct, size, k)))  # fmt: skip
        async with pool.acquire() as conn:
            await empty_tables(conn)
        paths.append(await measured(cpu, "listing writer, first load (parse included)",
                                    lambda: writer_load(sink, items, size, k)))  # fmt: skip
        async with pool.acquire() as conn:
            await vacuum(conn)
        paths.append(await measured(cpu, "listing writer, re-sync 0% (parse included)",
                                    lambda: writer_load(sink, items, size, k)))  # fmt: skip
        capped = first[: min(n, args.executemany_rows)]
        async with pool.acquire() as conn:
            await empty_tables(conn)
            seconds = await executemany_load(conn, capped)
        out["executemany_rows"] = len(capped)
        out["executemany_rows_s"] = per_s(len(capped), seconds)
        print(f"  executemany baseline: {out['executemany_rows_s']:,} rows/s", flush=True)
    return out


async def profile_writer(args: argparse.Namespace, n: int) -> None:
    """Where a first load's time goes: statement by statement (one batch at a time, so
    each backend's CPU belongs to one statement), PostgreSQL's functions under ``perf``
    (batches in flight, as the writer runs them), then the writer under a profiler."""
    items = raw_items(n, args.seed)
    # Hours ago: a request is always observed before its merge (a later stamp is capped).
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    records = [parse_list_item(item, t0) for item in items]
    async with (
        scratch_database(args.dsn, "scale_profile") as dsn,
        connect_pool(dsn, max_size=args.in_flight + 1) as pool,
    ):
        sink = Database(pool).account(ACCOUNT, open_statuses=[int(s) for s in OPEN_STATUSES]).orders
        with statement_costs() as costs:
            figures = await sink_load(sink, records, args.batch, 1)
        print_table(
            ["statement", "calls", "wall s", "client CPU s", "PostgreSQL CPU s",
             "PostgreSQL µs/row"],
            [[name, c.calls, round(c.wall_s, 2), round(c.client_cpu_s, 2),
              round(c.server_cpu_s, 2), round(1e6 * c.server_cpu_s / n, 1)]
             for name, c in sorted(costs.items(), key=lambda kv: -kv[1].wall_s)],
            f"first load of {n:,} orders by merge_listed, one batch at a time: "
            f"{figures['rows_s']:,} rows/s, {figures['seconds']:.2f} s wall",
        )  # fmt: skip
        async with pool.acquire() as conn:
            await empty_tables(conn)
        # Every connection of the pool opened now, so perf can follow all their backends.
        held = [await pool.acquire() for _ in range(args.in_flight + 1)]
        for c in held:
            await pool.release(c)
        pids = list(await BackendCpu(pool).sample() or ())
        k = args.in_flight
        with server_profile(pids, f"first load of {n:,} orders, {k} batches in flight") as sp:
            figures = await sink_load(sink, records, args.batch, k)
            sp.note(f"  {figures['rows_s']:,} rows/s, {figures['seconds']:.2f} s wall")
        async with pool.acquire() as conn:
            await empty_tables(conn)
        cpu = BackendCpu(pool)
        before = await cpu.sample()
        with profiled(f"listing writer, first load of {n:,} orders") as report:
            figures = await writer_load(sink, items, args.batch, args.in_flight)
            # Noted inside the block: the profile prints its notes when the block ends.
            report.note(
                f"wall {figures['seconds']:.2f} s; PostgreSQL backends' CPU "
                f"{await cpu.since(before)} s (None: server not on this machine)"
            )


def render(results: list[dict[str, Any]]) -> None:
    rows: list[list[object]] = []
    for r in results:
        c, e = r["ceiling_rows_s"], r["executemany_rows_s"]
        pg = r.get("ceiling_pg_cpu_s")
        rows.append([r["orders"], "raw COPY, unlogged, no index (ceiling)", c, 1.0, "-", "-",
                     round(r["orders"] / c, 2), round(r.get("ceiling_client_cpu_s", 0), 2),
                     "-" if pg is None else round(pg, 2)])  # fmt: skip
        rows.append([r["orders"], f"executemany naive upsert ({r['executemany_rows']:,} rows)",
                     e, e / c, "-", "-", "-", "-", "-"])  # fmt: skip
        for p in r["paths"]:
            q = f"{p['first_quarter']:,}→{p['last_quarter']:,}" if "first_quarter" in p else "-"
            pg = "-" if p["pg_cpu_s"] is None else round(p["pg_cpu_s"], 2)
            rows.append([r["orders"], p["path"], p["rows_s"], p["rows_s"] / c,
                         f"{p['rows_s'] / e:.1f}×", q, round(p["seconds"], 2),
                         round(p["client_cpu_s"], 2), pg])  # fmt: skip
    print_table(
        ["orders", "path", "rows/s", "× COPY", "× executemany", "first→last ¼ rows/s",
         "wall s", "client CPU s", "PostgreSQL CPU s"],
        rows,
        "merge throughput by mirror size (batches of "
        f"{results[0]['batch']:,}; in flight: batches merging at once)",
    )  # fmt: skip
    for r in results:
        runs = [("ceiling", r["ceiling_runs"])]
        runs += [(p["path"].split(",")[0], p["runs"]) for p in r["paths"] if "runs" in p]
        if len(runs[0][1]) > 1:
            text = "; ".join(f"{name} {', '.join(f'{x:,}' for x in rates)}" for name, rates in runs)
            print(f"{r['orders']:,}, each run in rows/s (the median is shown): {text}")
    print_table(
        ["orders", "plan of the lookup for the last batch", "rows estimated", "rows read", "ms"],
        [[r["orders"], *r["plan_end_of_load"]] for r in results],
        "the hashes-first lookup (find_changed.sql) at the end of each first load",
    )


async def run(args: argparse.Namespace) -> None:
    sizes = [int(x) for x in (args.sizes or ("20000,60000" if args.quick else
                                             "100000,1000000")).split(",")]  # fmt: skip
    args.rounds = args.rounds or (1 if args.quick else 3)
    print(
        f"bench_scale: sizes {sizes}, batches of {args.batch:,}, {args.in_flight} in flight, "
        f"{args.rounds} round(s) of the ceiling, the floor and the first load"
    )
    print(f"PostgreSQL: {describe_dsn(args.dsn)}, {await server_settings(args.dsn)}")
    print(f"machine: {os.cpu_count()} CPUs\n")
    if args.profile:
        await profile_writer(args, sizes[0])
    results = [await one_size(args, n) for n in sizes]
    print()
    render(results)
    write_json(args.json_out, {"sizes": results})


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", help="comma list of orders (default 100000,1000000; quick "
                   "20000,60000)")  # fmt: skip
    p.add_argument(
        "--batch", type=int, default=BATCH_ORDERS, help="orders per batch (the product's)"
    )
    p.add_argument("--in-flight", type=int, default=2, help="batches merging at once")
    p.add_argument("--executemany-rows", type=int, default=100_000, help="baseline cap")
    p.add_argument("--seed", type=int, default=1, help="generator seed")
    p.add_argument(
        "--rounds",
        type=int,
        help="interleaved runs of the ceiling, the floor and "
        "the pipelined first load, each reported by its median (default 3; quick 1)",
    )
    p.add_argument("--profile", action="store_true", help="profile the writer's first load")
    collector.tune()  # the product's process runs so (asyncsync.cli)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
