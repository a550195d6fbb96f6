"""Issue 12, where a first load's PostgreSQL time goes: the cost of each part of the
mirror's tables, row by row.

What it measures
    The same ``--orders`` listed orders (the simulator's generator, parsed by
    ``parse_list_item``) and their first-sighting history rows are COPYed, by one
    connection, into copies of the mirror's tables with one part added at a time. Each
    copy is made from the live schema (``CREATE TABLE ... (LIKE ordens_servico INCLUDING
    DEFAULTS INCLUDING CONSTRAINTS)``, then each index by its own ``pg_get_indexdef``),
    so the figures follow ``schema.sql``. For each variant, the best of ``--runs``:
    PostgreSQL backend CPU µs a row (from ``/proc``: the server must run on this
    machine), the client's CPU µs a row (asyncpg encoding the rows), and the wall clock.

    * orders: the raw COPY ceiling (bench_merge's unlogged table without indexes); the
      same columns unlogged; logged without indexes; with the primary key; with each
      secondary index alone; with every index (as shipped); the same with the payload
      stored as ``json`` instead of ``jsonb`` (what parsing it costs); with keys that do
      not start with the text ``account`` (the primary key as ``(id, account)``, then the
      status index as ``(situacao, data_emissao, account)`` too), and with ``account`` in
      the ``C`` collation;
    * history: as shipped (primary key ``(account, id_os, seq)``); keyed
      ``(id_os, account, seq)``; as it was before
      2026-12-06 (key ``seq`` and an index by order); with no index;
    * both tables as shipped, in transactions of 2,000, 5,000 and 10,000 orders and in one.

    The difference between two variants is what that part costs a row. The load itself
    runs two connections at once, beside Python: ``bench_scale.py`` measures that.

    .venv/bin/python bench/bench_components.py [--orders 100000] [--runs 5]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from _common import parser, print_table, scratch_database, upsert_args, write_json
from _profile import process_cpu_s
from bench_merge import CEILING_TABLE, raw_items
from bench_scale import ACCOUNT, HISTORY_COLUMNS, ORDER_COLUMNS, history_rows

from asyncsync.options import BATCH_ORDERS
from asyncsync.records import parse_list_item

#: The history as it was before 2026-12-06 (schema.sql rekeys such a table once).
OLD_HISTORY_KEYS = (
    "ALTER TABLE part_h ADD PRIMARY KEY (seq)",
    "CREATE INDEX ON part_h (account, id_os, changed_at)",
)

#: The list item kept as text PostgreSQL only validates, as a measure of what parsing it
#: into jsonb costs (the mirror keeps jsonb: reports query it).
AS_JSON = "ALTER TABLE part_o ALTER payload TYPE json"

#: Keys that do not start with the text ``account`` (its comparisons, and the offsets of
#: the columns after it, are most of a B-tree insertion's work): what they would save.
ID_FIRST = "CREATE UNIQUE INDEX ON part_o (id, account)"
STATUS_FIRST = "CREATE INDEX ON part_o (situacao, data_emissao, account)"
HISTORY_ID_FIRST = "ALTER TABLE part_h ADD PRIMARY KEY (id_os, account, seq)"
C_ACCOUNT = 'ALTER TABLE part_o ALTER account TYPE text COLLATE "C"'

Setup = Callable[[asyncpg.Connection], Awaitable[None]]

#: The scratch copy each of the mirror's tables is measured in.
COPY_OF = {"ordens_servico": "part_o", "ordem_status_history": "part_h"}


async def index_defs(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    """Every index of ``table`` by name, as ``CREATE INDEX`` statements on ``part_<x>``."""
    rows = await conn.fetch(
        "SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS ddl"
        " FROM pg_index WHERE indrelid = $1::regclass",
        table,
    )
    target = COPY_OF[table]
    out = {}
    for r in rows:
        ddl = re.sub(rf" ON (\S+\.)?{table} ", f" ON {target} ", r["ddl"])
        out[r["name"]] = ddl.replace(f"INDEX {r['name']} ", "INDEX ")
    return out


def copy_of(table: str, *, unlogged: bool = False, indexes: Sequence[str] = ()) -> Setup:
    target = COPY_OF[table]

    async def setup(conn: asyncpg.Connection) -> None:
        kind = "UNLOGGED TABLE" if unlogged else "TABLE"
        await conn.execute(
            f"CREATE {kind} {target} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        for ddl in indexes:
            await conn.execute(ddl)

    return setup


def statements(*ddl: str) -> Setup:
    async def setup(conn: asyncpg.Connection) -> None:
        for s in ddl:
            await conn.execute(s)

    return setup


async def measure(
    conn: asyncpg.Connection,
    setups: Sequence[Setup],
    copies: Sequence[tuple[str, list[tuple[Any, ...]], Sequence[str] | None]],
    batch: int,
    rows: int,
    runs: int,
) -> dict[str, Any]:
    """Best of ``runs``: PostgreSQL CPU, client CPU and wall µs a row."""
    pid = conn.get_server_pid()
    best: dict[str, Any] = {}
    for _ in range(runs):
        await conn.execute("DROP TABLE IF EXISTS part_o, part_h, bench_copy_ceiling")
        for setup in setups:
            await setup(conn)
        await conn.reload_schema_state()  # a variant may give a column another type
        await conn.execute("CHECKPOINT")
        pg0, cpu0, wall0 = process_cpu_s(pid), time.process_time(), time.perf_counter()
        for start in range(0, rows, batch):
            async with conn.transaction():
                for table, records, columns in copies:
                    await conn.copy_records_to_table(
                        table, records=records[start : start + batch], columns=columns
                    )
        wall = time.perf_counter() - wall0
        client = time.process_time() - cpu0
        pg1 = process_cpu_s(pid)
        pg = None if pg0 is None or pg1 is None else pg1 - pg0
        got = {
            "pg_us": None if pg is None else pg * 1e6 / rows,
            "client_us": client * 1e6 / rows,
            "wall_us": wall * 1e6 / rows,
        }
        if not best or got["wall_us"] < best["wall_us"]:
            best = got
    await conn.execute("DROP TABLE IF EXISTS part_o, part_h, bench_copy_ceiling")
    return best


async def run(orders: int, runs: int, dsn: str) -> list[dict[str, Any]]:
    # Hours ago: a request is always observed before its merge (a later stamp is capped).
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    records = [parse_list_item(item, t0) for item in raw_items(orders, 1)]
    rows = [upsert_args(ACCOUNT, r) for r in records]
    history = history_rows(records)
    out: list[dict[str, Any]] = []
    async with scratch_database(dsn, "components") as scratch:
        conn = await asyncpg.connect(scratch)
        try:
            o_idx = await index_defs(conn, "ordens_servico")
            h_idx = await index_defs(conn, "ordem_status_history")
            pkey = o_idx.pop("ordens_servico_pkey")
            stale = o_idx["idx_ordens_servico_detail_stale"]
            orders_copy = [("part_o", rows, ORDER_COLUMNS)]
            history_copy = [("part_h", history, HISTORY_COLUMNS)]
            both = orders_copy + history_copy
            whole = [pkey, *o_idx.values()]
            variants: list[tuple[str, str, list[Setup], Any, int]] = [
                ("orders", "raw COPY ceiling (bench_merge's unlogged table)",
                 [statements(CEILING_TABLE)], [("bench_copy_ceiling", rows, None)], orders),
                ("orders", "its columns and defaults, unlogged, no index",
                 [copy_of("ordens_servico", unlogged=True)], orders_copy, orders),
                ("orders", "logged, no index", [copy_of("ordens_servico")], orders_copy, orders),
                ("orders", "+ primary key", [copy_of("ordens_servico", indexes=[pkey])],
                 orders_copy, orders),
                *[("orders", f"logged, {name} alone",
                   [copy_of("ordens_servico", indexes=[ddl])], orders_copy, orders)
                  for name, ddl in o_idx.items()],
                ("orders", "every index (as shipped)",
                 [copy_of("ordens_servico", indexes=whole)], orders_copy, orders),
                ("orders", "every index, payload json (not jsonb: kept unparsed)",
                 [copy_of("ordens_servico", indexes=whole), statements(AS_JSON)],
                 orders_copy, orders),
                ("orders", "every index, primary key (id, account)",
                 [copy_of("ordens_servico", indexes=[ID_FIRST, *o_idx.values()])],
                 orders_copy, orders),
                ("orders", "every index, no key led by account",
                 [copy_of("ordens_servico", indexes=[ID_FIRST, STATUS_FIRST, stale])],
                 orders_copy, orders),
                ("orders", 'every index, account COLLATE "C"',
                 [copy_of("ordens_servico"), statements(C_ACCOUNT, *whole)], orders_copy, orders),
                ("history", "no index", [copy_of("ordem_status_history")], history_copy, orders),
                ("history", "as shipped: " + ", ".join(h_idx),
                 [copy_of("ordem_status_history", indexes=list(h_idx.values()))],
                 history_copy, orders),
                ("history", "key (id_os, account, seq)",
                 [copy_of("ordem_status_history"), statements(HISTORY_ID_FIRST)],
                 history_copy, orders),
                ("history", "before 2026-12-06: key seq + index by order",
                 [copy_of("ordem_status_history"), statements(*OLD_HISTORY_KEYS)],
                 history_copy, orders),
                *[("both", f"as shipped, transactions of {b:,}" + (" (the product's)"
                   if b == BATCH_ORDERS else ""),
                   [copy_of("ordens_servico", indexes=whole),
                    copy_of("ordem_status_history", indexes=list(h_idx.values()))],
                   both, b)
                  for b in sorted({2000, BATCH_ORDERS, 10000, orders})],
            ]  # fmt: skip
            for group, label, setups, copies, batch in variants:
                got = await measure(conn, setups, copies, batch, orders, runs)
                shown = "-" if got["pg_us"] is None else f"{got['pg_us']:.2f}"
                print(f"  {group}: {label}: PostgreSQL {shown} µs a row", flush=True)
                out.append({"group": group, "variant": label, **got})
        finally:
            await conn.close()
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--orders", type=int, help="orders COPYed (default 100000; quick 20000)")
    p.add_argument("--runs", type=int, help="runs of each variant, best kept (default 5; quick 2)")
    args = p.parse_args()
    orders = args.orders or (20_000 if args.quick else 100_000)
    runs = args.runs or (2 if args.quick else 5)
    print(f"bench_components: {orders:,} orders, best of {runs} runs, one connection")
    results = asyncio.run(run(orders, runs, args.dsn))
    base: dict[str, float | None] = {}

    def us(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    table = []
    for r in results:
        first = base.setdefault(r["group"], r["pg_us"])
        delta = None if first is None or r["pg_us"] is None else r["pg_us"] - first
        table.append([r["group"], r["variant"], us(r["pg_us"]),
                      "-" if delta is None else f"{delta:+.2f}",
                      us(r["client_us"]), us(r["wall_us"])])  # fmt: skip
    print()
    print_table(
        ["table", "variant", "PostgreSQL µs/row", "± first of its table", "client µs/row",
         "wall µs/row"],
        table,
        f"COPY of {orders:,} orders and their history rows, part by part (best of {runs})",
    )  # fmt: skip
    write_json(args.json_out, {"orders": orders, "runs": runs, "results": results})


if __name__ == "__main__":
    main()
