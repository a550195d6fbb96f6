"""Peak RSS of the daily sweep: an incremental cycle that lists every status whole.

What it measures
    A cycle keeps the id of every order its listing read (an open order the mirror holds
    that no listing returned has moved; a 404 for a listed order is an import failure,
    not a deletion). An hourly cycle lists few orders; the daily sweep lists the closed
    statuses whole, so at a million orders it holds a million ids, where a full sync
    keeps none (issue 12: its peak RSS stays flat in the number of orders).

    For each size (100k and 1M orders by default) a Tiny simulator runs in a process of
    its own (``bench_memory.py``'s), and one scratch database takes, in turn, runs of
    ``asyncsync --mode sync --detail-budget 0`` in child processes of their own, each
    reporting its peak resident set size (``VmHWM``):

    * full sync: on the empty database; the baseline, which keeps no ids;
    * sweep: the sweep made due (its ``closed_sweep`` stamp deleted from
      ``sync_metadata``): an incremental cycle listing every status whole;
    * hourly: the sweep just done: open statuses whole, closed ones over the recent window.

    ``--against DIR`` also runs the sweep and the hourly cycle with the ``asyncsync``
    package of DIR (a ``git worktree`` of another commit): old and new code on the same
    database in one sitting.

How to read the output
    Peak RSS in MiB per run and size, and each cycle's excess over the full sync: the
    listing, the writer and its merges are the same, so the sweep's excess is mostly the
    ids it keeps. The parent checks each run's report (its title, the closed statuses
    swept or not, every order listed).

    .venv/bin/python bench/bench_sweep.py [--quick] [--sizes 100000,1000000] [--against DIR]
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
from _common import describe_dsn, parser, print_table, scratch_database, write_json
from bench_memory import Simulator, run_child

from asyncsync.jobs.sync import CLOSED_SWEEP_KEY

#: (run, what its report says of the closed statuses; None: a full sync)
RUNS = (("full sync", None), ("sweep", "swept completely"), ("hourly", "listed from"))


async def make_sweep_due(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM sync_metadata WHERE chave = $1", CLOSED_SWEEP_KEY)
    finally:
        await conn.close()


async def last_run(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT title, outcome, (counts ->> 'orders_listed')::int AS listed,"
            " report -> 'facts' ->> 'closed_statuses' AS closed"
            " FROM sync_runs ORDER BY id DESC LIMIT 1"
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


async def one_run(
    run: str, closed: str | None, n: int, sim: Simulator, dsn: str, code: str | None
) -> dict[str, Any]:
    if run == "sweep":
        await make_sweep_due(dsn)
    result = await asyncio.to_thread(run_child, "asyncsync", sim.conn, dsn, code=code)
    report = await last_run(dsn)
    title = "full sync" if closed is None else "incremental cycle"
    said = report["closed"] or ""
    if (report["outcome"], report["title"]) != ("ok", title) or not said.startswith(closed or ""):
        raise SystemExit(f"{run} at {n:,} did not run as meant: {report}")
    if run != "hourly" and report["listed"] < n:
        raise SystemExit(f"{run} at {n:,} listed {report['listed']:,} orders of {n:,}")
    print(
        f"  {run:9} {n:>9,} orders ({Path(result['package']).parent}): peak RSS "
        f"{result['peak_kib'] / 1024:6.1f} MiB, {report['listed']:,} listed, "
        f"{result['seconds']} s",
        flush=True,
    )
    return {**result, "listed": report["listed"]}


async def measure(
    admin_dsn: str, sizes: list[int], codes: list[str | None]
) -> dict[tuple[str, str | None, int], dict[str, Any]]:
    out: dict[tuple[str, str | None, int], dict[str, Any]] = {}
    for n in sizes:
        with Simulator(n) as sim:
            async with scratch_database(admin_dsn, "sweep") as dsn:
                for run, closed in RUNS:
                    for code in codes[:1] if closed is None else codes:
                        out[(run, code, n)] = await one_run(run, closed, n, sim, dsn, code)
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", help="comma list of order counts (default 100000,1000000)")
    p.add_argument(
        "--against", help="also run the cycles with the asyncsync package of this directory"
    )
    args = p.parse_args()
    default = "5000,20000" if args.quick else "100000,1000000"
    sizes = sorted(int(x) for x in (args.sizes or default).split(","))
    codes: list[str | None] = [None]
    if args.against:
        codes.append(str(Path(args.against).resolve()))
    print(f"bench_sweep: peak RSS of a sweep, {' and '.join(f'{n:,}' for n in sizes)} orders")
    print(f"PostgreSQL: {describe_dsn(args.dsn)}; simulator and runs in separate processes\n")
    results = asyncio.run(measure(args.dsn, sizes, codes))
    print()
    mib = 1024.0
    rows: list[list[object]] = []
    for run, closed in RUNS:
        for code in codes[:1] if closed is None else codes:
            peaks = [results[(run, code, n)]["peak_kib"] / mib for n in sizes]
            full = [results[("full sync", None, n)]["peak_kib"] / mib for n in sizes]
            excess = [a - b for a, b in zip(peaks, full, strict=True)]
            rows.append([run, code or "this tree", *peaks, *excess])
    print_table(
        ["run", "code", *(f"{n:,} orders" for n in sizes),
         *(f"− full sync at {n:,}" for n in sizes)],
        rows,
        "peak RSS of the asyncsync process, MiB (simulator not included)",
    )  # fmt: skip
    write_json(args.json_out, {
        "sizes": sizes,
        "peak_mib": {f"{run} {code or 'this tree'} {n}": r["peak_kib"] / mib
                     for (run, code, n), r in results.items()},
        "seconds": {f"{run} {code or 'this tree'} {n}": r["seconds"]
                    for (run, code, n), r in results.items()},
    })  # fmt: skip


if __name__ == "__main__":
    main()
