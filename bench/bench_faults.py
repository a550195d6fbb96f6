"""Failing details cost little: a full sync with a fifth of detail requests answering 500,
side by side with the same sync when every request succeeds (same orders, same seed).

A detail that fails is tried again only after the healthy ones (its retries and their
backoff never hold a request slot the others could use), so the target is at most about
twice the clean time. Against the bundled simulator with 20 ms of latency and a quota
that does not bind; each side in its own scratch database.
"""

from __future__ import annotations

import asyncio
import io
import time

from _common import common_for, describe_dsn, parser, print_table, scratch_database

from asyncsync.jobs.sync import full_sync
from asyncsync.options import CycleOptions
from asyncsync.runtime import open_runtime
from asyncsync.simulator import SimConfig, TinySimulator


async def one(dsn: str, orders: int, error_rate: float) -> tuple[float, int, int]:
    """(seconds, requests sent, details left unavailable) of one full sync."""
    config = SimConfig(orders=orders, seed=5, latency_s=0.02, rate_limit_per_minute=600_000)
    async with TinySimulator(config) as sim, scratch_database(dsn, "faults") as db:
        sim.detail_error_rate = error_rate
        common = common_for(sim, db)
        started = time.perf_counter()
        async with open_runtime(common) as rt:
            ctx = rt.context(asyncio.Event(), progress=io.StringIO())
            store = rt.store
            report = await full_sync(rt.client, store.orders, store.metadata, CycleOptions(), ctx)
        return time.perf_counter() - started, report.api.total, report.count("details_unavailable")


async def main() -> None:
    args = parser(__doc__).parse_args()
    orders = 1000 if args.quick else 4000
    print(f"bench_faults: {orders:,} orders, 20 ms latency; PostgreSQL {describe_dsn(args.dsn)}")
    clean = await one(args.dsn, orders, 0.0)
    failing = await one(args.dsn, orders, 0.2)
    ratio = failing[0] / clean[0]
    print_table(
        ["details", "seconds", "requests", "left unavailable", "× clean"],
        [
            ["all succeed", round(clean[0], 2), clean[1], clean[2], 1.0],
            ["20% answer 500", round(failing[0], 2), failing[1], failing[2], round(ratio, 2)],
        ],
        f"full sync of {orders:,} orders with a detail each (target: ≤ 2× clean)",
    )
    print(f"target ≤ 2.0× clean: {'reached' if ratio <= 2.0 else 'NOT reached'} ({ratio:.2f}×)")


if __name__ == "__main__":
    asyncio.run(main())
