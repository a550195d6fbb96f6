"""Issue 2: "memory stays bounded whatever the number of orders" — peak RSS of a full sync.

What it measures
    For each size (20k and 100k orders by default) a Tiny simulator runs in its own
    process (``python -m asyncsync.simulator --port 0 --orders N --rate-limit 1000000
    --no-rotate``; its memory grows with N, so it must not be counted), and each loader
    runs in a child process of its own against a fresh scratch database. A child reports
    its own peak resident set size (``VmHWM``, counted from its exec) when it
    is done; the parent checks that the database then holds all N orders.

    * asyncsync: the product's CLI, ``asyncsync.cli.main(["--mode", "sync",
      "--detail-budget", "0", ...])`` — a full sync, listings only (no detail requests);
    * baseline, a naive loader: every page of every status fetched with aiohttp into one
      list, then parsed with ``parse_list_item`` into a second list, then written with
      one ``executemany`` upsert in a single transaction.

    Each loader is also run with its imports only (no work), the floor its peak starts from.

How to read the output
    Peak RSS in MiB per loader and size, the growth from the smaller to the larger size
    and that growth per 10k orders. Bounded memory means asyncsync's growth stays near
    zero while the naive loader's grows roughly linearly with N. Peaks are of whole
    processes (interpreter, libraries, allocator slack), so compare the growth, not the
    absolute figures.

    .venv/bin/python bench/bench_memory.py [--quick] [--sizes 20000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Only the standard library at the top: a child process imports what its loader needs
# and nothing else, so its floor is its own.

LOADERS = ("asyncsync", "naive")
PAGE = 100
RESULT_PREFIX = "BENCH_RESULT "


def _peak_kib() -> int:
    """Peak RSS of this process since its exec, in KiB: Linux's ``VmHWM``. (``ru_maxrss``
    of a child started by vfork + exec counts its parent's peak too; it is the fallback
    where ``/proc`` is missing.)"""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(x.split()[1]) for x in status if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _report(**fields: Any) -> None:
    print(RESULT_PREFIX + json.dumps({"peak_kib": _peak_kib(), **fields}), flush=True)


# --- children --------------------------------------------------------------------------


def child_asyncsync(conn: dict[str, str], dsn: str, imports_only: bool) -> None:
    from asyncsync import cli

    if imports_only:
        import asyncsync.modes.sync  # noqa: F401  (what --mode sync imports at run time)

        _report(code=0)
        return
    argv = [
        "--mode", "sync", "--detail-budget", "0", "--database-url", dsn,
        "--api-base-url", conn["base_url"], "--token-url", conn["token_url"],
        "--client-id", conn["client_id"], "--client-secret", conn["client_secret"],
        "--refresh-token", conn["refresh_token"], "--rate-limit", "1000000",
        "--log-level", "WARNING", "--data-dir", tempfile.gettempdir(),
    ]  # fmt: skip
    started = time.perf_counter()
    code = cli.main(argv)
    seconds = round(time.perf_counter() - started, 1)
    _report(code=code, seconds=seconds, package=str(Path(cli.__file__).parent))


def child_naive(conn: dict[str, str], dsn: str, imports_only: bool) -> None:
    import datetime as dt

    import aiohttp
    import asyncpg
    import orjson
    from _common import OLD_UPSERT, upsert_args

    from asyncsync.records import parse_list_item

    if imports_only:
        _report(code=0)
        return

    async def load() -> None:
        items: list[Any] = []
        async with aiohttp.ClientSession() as session:
            form = {
                "grant_type": "refresh_token",
                "client_id": conn["client_id"],
                "client_secret": conn["client_secret"],
                "refresh_token": conn["refresh_token"],
            }
            async with session.post(conn["token_url"], data=form) as resp:
                headers = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
            for status in range(8):
                offset = 0
                while True:
                    params = {"situacao": str(status), "limit": str(PAGE), "offset": str(offset)}
                    url = conn["base_url"] + "/ordem-servico"
                    async with session.get(url, params=params, headers=headers) as resp:
                        page = orjson.loads(await resp.read())["itens"]
                    items.extend(page)
                    offset += len(page)
                    if len(page) < PAGE:
                        break
        now = dt.datetime.now(dt.UTC)
        records = [parse_list_item(item, now) for item in items]
        db = await asyncpg.connect(dsn)
        try:
            async with db.transaction():
                await db.executemany(OLD_UPSERT, [upsert_args("default", r) for r in records])
        finally:
            await db.close()

    started = time.perf_counter()
    asyncio.run(load())
    _report(code=0, seconds=round(time.perf_counter() - started, 1))


def child_main(args: argparse.Namespace) -> None:
    conn = json.loads(args.conn) if args.conn else {}
    run = child_asyncsync if args.child == "asyncsync" else child_naive
    run(conn, args.child_dsn or "", args.imports_only)


# --- parent ----------------------------------------------------------------------------


class Simulator:
    """``python -m asyncsync.simulator`` in a process of its own, stopped by its pid."""

    def __init__(self, orders: int) -> None:
        self.orders = orders
        self.proc: subprocess.Popen[str] | None = None
        self.conn: dict[str, str] = {}

    def __enter__(self) -> Simulator:
        cmd = [
            sys.executable, "-m", "asyncsync.simulator", "--port", "0",
            "--orders", str(self.orders), "--rate-limit", "1000000", "--no-rotate",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "tiny simulator: base_url=... orders=N"
        if not line.startswith("tiny simulator:"):
            self.__exit__()
            raise SystemExit(f"the simulator did not start: {line!r}")
        pairs = (part.split("=", 1) for part in line.split()[2:])
        self.conn = {key: value for key, value in pairs}
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_child(
    loader: str,
    conn: dict[str, str] | None,
    dsn: str | None,
    imports_only: bool = False,
    code: str | None = None,
) -> dict[str, Any]:
    """Run ``loader`` in a child process and return what it reported. ``code``: a
    directory whose ``asyncsync`` package the child imports instead of the installed one
    (a ``git worktree`` of another commit, for old and new side by side)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", loader]
    if conn is not None:
        cmd += ["--conn", json.dumps(conn)]
    if dsn is not None:
        cmd += ["--child-dsn", dsn]
    if imports_only:
        cmd.append("--imports-only")
    env = None if code is None else {**os.environ, "PYTHONPATH": code}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            if result.get("code") == 0:
                return result
    raise SystemExit(
        f"{loader} child failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n"
        f"{done.stderr[-4000:]}"
    )


async def count_orders(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ordens_servico"))
    finally:
        await conn.close()


async def measure(
    admin_dsn: str, sizes: Sequence[int], naive_max: int
) -> dict[tuple[str, int], dict[str, Any]]:
    from _common import scratch_database

    out: dict[tuple[str, int], dict[str, Any]] = {}
    for n in sizes:
        with Simulator(n) as sim:
            for loader in LOADERS:
                if loader == "naive" and n > naive_max:
                    continue  # it holds every page at once: minutes and gigabytes
                async with scratch_database(admin_dsn, f"memory_{loader}") as dsn:
                    result = await asyncio.to_thread(run_child, loader, sim.conn, dsn)
                    result["rows"] = await count_orders(dsn)
                out[(loader, n)] = result
                print(
                    f"  {loader:9} {n:>7,} orders: peak RSS {result['peak_kib'] / 1024:6.1f} MiB, "
                    f"{result['rows']:,} rows in the database, {result['seconds']} s",
                    flush=True,
                )
    return out


def parent_main(args: argparse.Namespace) -> None:
    from _common import describe_dsn, print_table

    default = "5000,20000" if args.quick else "20000,100000"
    sizes = sorted(int(x) for x in (args.sizes or default).split(","))
    print(f"bench_memory: full sync, listings only, {' and '.join(f'{n:,}' for n in sizes)} orders")
    print(f"PostgreSQL: {describe_dsn(args.dsn)}; simulator and loaders in separate processes\n")
    floors = {loader: run_child(loader, None, None, imports_only=True) for loader in LOADERS}
    results = asyncio.run(measure(args.dsn, sizes, args.naive_max))
    print()
    lo, hi = sizes[0], sizes[-1]
    mib = 1024.0
    rows: list[list[object]] = []
    names = {
        "asyncsync": "asyncsync --mode sync --detail-budget 0",
        "naive": "naive: all pages in a list, then insert",
    }
    for loader in LOADERS:
        got = [n for n in sizes if (loader, n) in results]
        peaks = [results[(loader, n)]["peak_kib"] / mib if n in got else None for n in sizes]
        first, last = got[0], got[-1]
        growth = (results[(loader, last)]["peak_kib"] - results[(loader, first)]["peak_kib"]) / mib
        per_10k = growth / ((last - first) / 10_000) if last > first else 0.0
        rows.append([names[loader], floors[loader]["peak_kib"] / mib, *peaks, growth, per_10k])
    print_table(
        ["loader", "imports only", *(f"{n:,} orders" for n in sizes),
         f"growth {lo:,}→{hi:,}", "growth per 10k orders"],
        rows,
        "peak RSS of the loader process, MiB (simulator not included)",
    )  # fmt: skip
    from _common import write_json

    write_json(args.json_out, {
        "sizes": sizes,
        "peak_mib": {f"{loader} {n}": r["peak_kib"] / mib for (loader, n), r in results.items()},
        "floor_mib": {loader: f["peak_kib"] / mib for loader, f in floors.items()},
        "seconds": {f"{loader} {n}": r["seconds"] for (loader, n), r in results.items()},
    })  # fmt: skip
    bad = [k for k, r in results.items() if r["rows"] != k[1]]
    if bad:
        print(f"warning: database row counts differ from the orders listed for {bad}")


def main() -> None:
    if "--child" in sys.argv:  # a loader process: nothing imported beyond its needs
        p = argparse.ArgumentParser()
        p.add_argument("--child", choices=LOADERS, required=True)
        p.add_argument("--conn")
        p.add_argument("--child-dsn")
        p.add_argument("--imports-only", action="store_true")
        child_main(p.parse_args())
        return
    from _common import parser

    p = parser(__doc__)
    p.add_argument(
        "--sizes", help="comma list of order counts (default 20000,100000; quick 5000,20000)"
    )
    p.add_argument(
        "--naive-max", type=int, default=200_000, help="largest size the naive loader runs at"
    )
    parent_main(p.parse_args())


if __name__ == "__main__":
    main()
