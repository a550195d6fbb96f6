"""Issue 12, end to end: the product against a simulator that answers in 20 ms.

What it measures
    A simulator runs in a process of its own (``python -m asyncsync.simulator``) with
    ``--latency-ms`` per answer and a quota so large it never binds.

    * Listing only, at each size: the product's command, ``python -m asyncsync --mode sync
      --detail-budget 0 --max-concurrency C``, in a process of its own against a fresh
      database; the wall clock of the whole command (interpreter start-up, schema, token,
      listing, merge, report), orders/s, and the CPU seconds that the command and the
      simulator spent over it (``100%`` of one core = the wall clock).
    * Baseline, same simulator: a serial loader like the old scripts — one request at a time, each
      page upserted with one ``executemany`` — on at most ``--serial-orders`` orders.
    * A detail per order: after a listing-only sync of ``--detail-orders`` orders, the
      product's details pass (``enrich_backlog``, as ``--mode sync`` runs it) at each
      concurrency of ``--concurrency`` (requests in flight), orders/s; its peer, the same
      requests alone (``fetch_details``, nothing merged): what HTTP allows here.

    .venv/bin/python bench/bench_e2e.py [--quick] [--sizes 20000,100000]
                                        [--concurrency 8,16,32] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import os
import resource
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import orjson
from _common import (
    OLD_UPSERT,
    common_options,
    compile_package,
    describe_dsn,
    parser,
    per_s,
    print_table,
    upsert_args,
    write_json,
)
from _common import scratch_database as scratch
from _profile import BACKENDS, process_cpu_s
from bench_backfill import Sim, simulator

from asyncsync.engine.details import enrich_backlog, fetch_details
from asyncsync.progress import Progress
from asyncsync.records import parse_list_item
from asyncsync.runtime import open_runtime

UNBOUND_QUOTA = 10_000_000


def sim_args(orders: int, latency_ms: float) -> argparse.Namespace:
    # What bench_backfill's simulator() reads; refresh tokens do not rotate, so the
    # baseline can use the same credentials after the product's run.
    return argparse.Namespace(
        orders=orders, seed=1, quota=UNBOUND_QUOTA, latency_ms=latency_ms, no_rotate=True
    )


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def count_orders(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ordens_servico"))
    finally:
        await conn.close()


async def cli_sync(sim: Sim, dsn: str, concurrency: int, sim_pid: int) -> dict[str, Any]:
    """``python -m asyncsync --mode sync --detail-budget 0`` in a child process, timed."""
    argv = [
        sys.executable, "-m", "asyncsync", "--mode", "sync", "--detail-budget", "0",
        "--database-url", dsn, "--api-base-url", sim.base_url, "--token-url", sim.token_url,
        "--client-id", sim.client_id, "--client-secret", sim.client_secret,
        "--refresh-token", sim.refresh_token, "--rate-limit", str(UNBOUND_QUOTA),
        "--max-concurrency", str(concurrency), "--log-level", "WARNING",
    ]  # fmt: skip
    sim_before, cpu_before = process_cpu_s(sim_pid), children_cpu_s()
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    watch = asyncio.create_task(backend_cpu(dsn))
    out, err = await proc.communicate()
    wall = time.perf_counter() - started
    watch.cancel()
    pg_cpu = await watch
    sim_after = process_cpu_s(sim_pid)
    if proc.returncode != 0:
        raise SystemExit(f"asyncsync exited {proc.returncode}:\n{out.decode()}\n{err.decode()}")
    return {
        "wall_s": wall,
        "cli_cpu_s": children_cpu_s() - cpu_before,
        "sim_cpu_s": None if sim_before is None or sim_after is None else sim_after - sim_before,
        "pg_cpu_s": pg_cpu,
        "rows": await count_orders(dsn),
    }


async def backend_cpu(dsn: str, every_s: float = 0.05) -> float | None:
    """CPU seconds of the PostgreSQL backends serving ``dsn``'s database while this task
    runs (sampled: a backend's last ``every_s`` before it exits is missed); None when the
    server is not on this machine. Returns when cancelled."""
    seen: dict[int, float] = {}
    conn = await asyncpg.connect(dsn)
    me = conn.get_server_pid()
    readable = True
    try:
        while True:
            for row in await conn.fetch(BACKENDS):
                if row["pid"] != me:
                    cpu = process_cpu_s(row["pid"])
                    if cpu is None:
                        readable = False
                    else:
                        seen[row["pid"]] = cpu
            await asyncio.sleep(every_s)
    except asyncio.CancelledError:
        pass
    finally:
        await conn.close()
    return sum(seen.values()) if readable else None


async def serial_loader(sim: Sim, dsn: str, cap: int) -> dict[str, Any]:
    """One request at a time, every status, each page upserted by one executemany."""
    started = time.perf_counter()
    loaded = 0
    db = await asyncpg.connect(dsn)
    try:
        async with aiohttp.ClientSession() as http:
            form = {
                "grant_type": "refresh_token",
                "client_id": sim.client_id,
                "client_secret": sim.client_secret,
                "refresh_token": sim.refresh_token,
            }
            async with http.post(sim.token_url, data=form) as resp:
                auth = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
            for status in range(8):
                offset = 0
                while loaded < cap:
                    params = {"situacao": str(status), "limit": "100", "offset": str(offset)}
                    observed = dt.datetime.now(dt.UTC)
                    url = f"{sim.base_url}/ordem-servico"
                    async with http.get(url, params=params, headers=auth) as resp:
                        items = orjson.loads(await resp.read())["itens"]
                    rows = [upsert(parse_list_item(i, observed)) for i in items]
                    async with db.transaction():
                        await db.executemany(OLD_UPSERT, rows)
                    loaded += len(items)
                    offset += len(items)
                    if len(items) < 100:
                        break
    finally:
        await db.close()
    wall = time.perf_counter() - started
    return {"rows": loaded, "wall_s": wall, "orders_s": per_s(loaded, wall)}


def upsert(record: Any) -> tuple[Any, ...]:
    return upsert_args("default", record)


async def details_pass(sim: Sim, dsn: str, concurrency: int) -> dict[str, Any]:
    """The product's details pass over every listed order, ``concurrency`` in flight."""
    common = common_options(
        dsn, api_base_url=sim.base_url, token_url=sim.token_url, client_id=sim.client_id,
        client_secret=sim.client_secret, refresh_token=sim.refresh_token, token_file=None,
        rate_limit_per_minute=UNBOUND_QUOTA, max_concurrency=concurrency,
    )  # fmt: skip
    async with open_runtime(common) as rt:
        await reset_details(dsn)
        ctx = rt.context(asyncio.Event(), progress=io.StringIO())
        sim_before, cpu_before = process_cpu_s(sim.pid), time.process_time()
        started = time.perf_counter()
        stats = await enrich_backlog(
            rt.client, rt.store.orders, concurrency=ctx.concurrency, budget=None,
            progress=Progress("details"), stop=ctx.stop,
        )  # fmt: skip
        wall = time.perf_counter() - started
        cpu, sim_after = time.process_time() - cpu_before, process_cpu_s(sim.pid)
        # The peer: the same requests with nothing merged, what HTTP alone allows.
        ids = await rt.store.orders.ids_in_statuses(list(range(8)))
        started = time.perf_counter()
        fetched = await fetch_details(rt.client, sorted(ids), concurrency=ctx.concurrency)
        fetch_wall = time.perf_counter() - started
    sim_cpu = None if sim_before is None or sim_after is None else sim_after - sim_before
    return {"concurrency": concurrency, "details": stats.details, "wall_s": wall,
            "orders_s": per_s(stats.details, wall), "cpu_s": cpu, "sim_cpu_s": sim_cpu,
            "fetch_only_s": per_s(len(fetched.details), fetch_wall)}  # fmt: skip


async def reset_details(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE ordens_servico SET detail_stale = true, detalhe = NULL")
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> None:
    sizes = [int(x) for x in args.sizes.split(",")]
    levels = [int(x) for x in args.concurrency.split(",")]
    print(f"bench_e2e: listing {sizes} orders at {args.list_concurrency} in flight, details of "
          f"{args.detail_orders:,} orders at {levels} in flight; simulator latency "
          f"{args.latency_ms:g} ms, quota unbound")  # fmt: skip
    print(f"PostgreSQL: {describe_dsn(args.dsn)}; machine: {os.cpu_count()} CPUs\n", flush=True)
    compile_package()  # the command starts from bytecode, as an installed one does
    listing: list[dict[str, Any]] = []
    for n in sizes:
        async with simulator(sim_args(n, args.latency_ms)) as sim:
            async with scratch(args.dsn, "e2e") as dsn:
                figures = await cli_sync(sim, dsn, args.list_concurrency, sim.pid)
            async with scratch(args.dsn, "e2e_serial") as dsn:
                serial = await serial_loader(sim, dsn, min(n, args.serial_orders))
        figures.update(orders=n, orders_s=per_s(n, figures["wall_s"]), serial=serial)
        listing.append(figures)
        print(f"  {n:,} orders: {figures['orders_s']:,}/s (serial {serial['orders_s']:,}/s)",
              flush=True)  # fmt: skip
    details: list[dict[str, Any]] = []
    async with (
        simulator(sim_args(args.detail_orders, args.latency_ms)) as sim,
        scratch(args.dsn, "e2e_details") as dsn,
    ):
        await cli_sync(sim, dsn, args.list_concurrency, sim.pid)
        for level in levels:
            details.append(await details_pass(sim, dsn, level))
            print(f"  details at {level} in flight: {details[-1]['orders_s']:,}/s", flush=True)
    print()
    render(args, listing, details)
    if args.json_out:
        write_json(args.json_out, {"latency_ms": args.latency_ms, "listing": listing,
                                   "details": details})  # fmt: skip


def render(args: argparse.Namespace, listing: list[Any], details: list[Any]) -> None:
    def share(cpu: float | None, wall: float) -> str:
        return "-" if cpu is None else f"{cpu:.1f} s ({100 * cpu / wall:.0f}%)"

    print_table(
        ["orders", "asyncsync orders/s", "wall s (whole command)", "asyncsync CPU",
         "simulator CPU", "PostgreSQL CPU", "serial loader orders/s", "× serial"],
        [[f["orders"], f["orders_s"], round(f["wall_s"], 2), share(f["cli_cpu_s"], f["wall_s"]),
          share(f["sim_cpu_s"], f["wall_s"]), share(f["pg_cpu_s"], f["wall_s"]),
          f["serial"]["orders_s"],
          f"{f['orders_s'] / max(f['serial']['orders_s'], 1):.1f}×"] for f in listing],
        f"listing only, end to end: --max-concurrency {args.list_concurrency}, simulator "
        f"latency {args.latency_ms:g} ms (serial loader on at most {args.serial_orders:,})",
    )  # fmt: skip
    base = details[0]["orders_s"] or 1
    print_table(
        ["requests in flight", "details", "seconds", "orders/s", f"× {levels_label(details)}",
         "asyncsync CPU", "simulator CPU", "requests alone, orders/s", "pass ÷ requests alone"],
        [[d["concurrency"], d["details"], round(d["wall_s"], 2), d["orders_s"],
          f"{d['orders_s'] / base:.2f}×", share(d["cpu_s"], d["wall_s"]),
          share(d["sim_cpu_s"], d["wall_s"]), d["fetch_only_s"],
          f"{d['orders_s'] / max(d['fetch_only_s'], 1):.2f}×"] for d in details],
        f"a detail per order: the product's details pass over {args.detail_orders:,} orders",
    )  # fmt: skip


def levels_label(details: list[Any]) -> str:
    return f"{details[0]['concurrency']} in flight"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", help="orders listed (default 20000,100000; quick 20000)")
    p.add_argument("--list-concurrency", type=int, default=32, help="requests in flight, listing")
    p.add_argument("--concurrency", default="8,16,32", help="requests in flight, details")
    p.add_argument("--detail-orders", type=int, help="orders for details (5000; quick 2000)")
    p.add_argument("--serial-orders", type=int, help="serial baseline cap (20000; quick 5000)")
    p.add_argument("--latency-ms", type=float, default=20.0, help="simulator latency")
    args = p.parse_args()
    quick = args.quick
    args.sizes = args.sizes or ("20000" if quick else "20000,100000")
    args.detail_orders = args.detail_orders or (2000 if quick else 5000)
    args.serial_orders = args.serial_orders or (5000 if quick else 20000)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
