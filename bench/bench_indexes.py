"""Issue 12, an index strategy that was measured and left out: a first load with the
mirror's secondary indexes dropped and built after it, against the same load with
them in place.

What it measures
    In interleaved rounds, each against the raw COPY ceiling of the same round
    (``bench_merge.ceiling``: an unlogged table without indexes):

    * the first load as shipped: ``merge_listed``, ``--in-flight`` batches at once, into
      emptied tables that keep every index;
    * the same load with ``idx_ordens_servico_situacao_data``,
      ``idx_ordens_servico_detail_stale`` dropped first, then built again from
      ``schema.sql``'s own statements, at once on connections of their own: the load
      alone, the build, and the whole. (The history has no secondary index since
      2026-12-06: its primary key is the index by order.)

    .venv/bin/python bench/bench_indexes.py [--orders 100000] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from pathlib import Path
from typing import Any

import asyncpg
from _common import parser, per_s, print_table, scratch_database, write_json
from bench_merge import ceiling, empty_tables, raw_items
from bench_scale import ACCOUNT, sink_load

from asyncsync.records import parse_list_item
from asyncsync.status import OPEN_STATUSES
from asyncsync.store import Database
from asyncsync.store.database import connect_pool

SECONDARY = (
    "idx_ordens_servico_situacao_data",
    "idx_ordens_servico_detail_stale",
)
SCHEMA = Path(__file__).resolve().parent.parent / "schema.sql"


def index_statements() -> list[str]:
    """``schema.sql``'s CREATE INDEX statement of each secondary index."""
    text = SCHEMA.read_text(encoding="utf-8")
    found = []
    for name in SECONDARY:
        match = re.search(rf"CREATE INDEX IF NOT EXISTS {name}\s+ON [^;]+;", text)
        if match is None:
            raise SystemExit(f"schema.sql has no CREATE INDEX for {name}")
        found.append(match.group(0))
    return found


async def build(pool: asyncpg.Pool, statement: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute("SET maintenance_work_mem = '256MB'")
        await conn.execute(statement)


async def run(orders: int, rounds: int, batch: int, in_flight: int, dsn: str) -> dict[str, Any]:
    # Hours ago: a request is always observed before its merge (a later stamp is capped).
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    records = [parse_list_item(item, t0) for item in raw_items(orders, 1)]
    creates = index_statements()
    out: list[dict[str, Any]] = []
    async with (
        scratch_database(dsn, "indexes") as scratch,
        connect_pool(scratch, max_size=max(in_flight, len(creates)) + 1) as pool,
    ):
        statuses = [int(s) for s in OPEN_STATUSES]
        sink = Database(pool).account(ACCOUNT, open_statuses=statuses).orders
        for i in range(rounds):
            async with pool.acquire() as conn:
                c = await ceiling(conn, records)
                await empty_tables(conn)
            ceiling_s = per_s(c.rows, c.seconds)
            kept = await sink_load(sink, records, batch, in_flight)
            async with pool.acquire() as conn:
                await empty_tables(conn)
                for name in SECONDARY:
                    await conn.execute(f"DROP INDEX {name}")
            started = time.perf_counter()
            await sink_load(sink, records, batch, in_flight)
            loaded = time.perf_counter()
            await asyncio.gather(*(build(pool, s) for s in creates))
            built = time.perf_counter()
            async with pool.acquire() as conn:
                await empty_tables(conn)
            deferred = per_s(orders, built - started)
            row = {
                "round": i + 1,
                "ceiling_rows_s": ceiling_s,
                "indexes_kept_rows_s": kept["rows_s"],
                "indexes_dropped_load_rows_s": per_s(orders, loaded - started),
                "build_s": round(built - loaded, 3),
                "indexes_dropped_whole_rows_s": deferred,
            }
            print(f"  round {i + 1}: kept {kept['rows_s']:,}/s, dropped and built "
                  f"{deferred:,}/s (build {row['build_s']} s)", flush=True)  # fmt: skip
            out.append(row)
    return {"orders": orders, "batch": batch, "in_flight": in_flight, "rounds": out}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--orders", type=int, help="orders loaded (default 100000; quick 20000)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--batch", type=int, default=5000, help="orders per merge_listed batch")
    p.add_argument("--in-flight", type=int, default=2, help="batches merging at once")
    args = p.parse_args()
    orders = args.orders or (20_000 if args.quick else 100_000)
    figures = asyncio.run(run(orders, args.rounds, args.batch, args.in_flight, args.dsn))
    rows = []
    for r in figures["rounds"]:
        c, kept = r["ceiling_rows_s"], r["indexes_kept_rows_s"]
        whole = r["indexes_dropped_whole_rows_s"]
        rows.append([r["round"], c, kept, round(kept / c, 2), r["indexes_dropped_load_rows_s"],
                     r["build_s"], whole, round(whole / c, 2)])  # fmt: skip
    print_table(
        ["round", "raw COPY rows/s", "indexes kept rows/s", "× COPY", "dropped: load rows/s",
         "build s", "dropped + built rows/s", "× COPY"],
        rows,
        f"first load of {orders:,} orders, {args.in_flight} batches of {args.batch:,} in flight",
    )  # fmt: skip
    write_json(args.json_out, figures)


if __name__ == "__main__":
    main()
