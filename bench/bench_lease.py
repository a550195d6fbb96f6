"""Per-account quota under many workers: the lease against what it replaces.

One Tiny account (a simulator with a real 60-second quota window) has more work than
its quota allows (a 3,000-order first sync and two years of backfill months on the
queue). Measured over ``--seconds``:

* lease: three ``asyncsync serve`` processes, all picking units of that account; the
  lease lets one process at a time talk to its API (the others put the unit back);
* no lease: three clients of the account, each with its own limiter (what three
  processes would do without the lease), listing as fast as they are let;
* shared limiter: the price of the alternative, a token bucket in one PostgreSQL row
  that every request of the account takes a token from (three sessions, eight requests
  in flight each): the round trip it adds to every request.

The figures: the most requests the simulator accepted in one window (``window_peak``,
against the quota), the requests it refused (429), the quota used; and for the lease,
database statements per API request (two per unit picked: take and release the lease, or
take it and name its holder).

    .venv/bin/python bench/bench_lease.py           # ~5 min; --quick: one window each
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parser, scratch_database

from asyncsync.accounts import AccountConfig
from asyncsync.client import TinyClient
from asyncsync.client.tokens import MemoryTokenStore
from asyncsync.errors import TinyError
from asyncsync.options import TinyOptions
from asyncsync.runtime import make_client
from asyncsync.seams import ListQuery
from asyncsync.simulator import SimConfig, TinySimulator
from asyncsync.store import open_database
from asyncsync.work.units import Kind, Unit

QUOTA = 300  # requests per 60-second window


def sim_config() -> SimConfig:
    return SimConfig(orders=3000, seed=5, rate_limit_per_minute=QUOTA, latency_s=0.02)


def figures(sim: TinySimulator, seconds: float) -> dict[str, float]:
    s = sim.stats
    accepted = s.requests_total - s.rate_limited
    return {
        "window_peak": s.window_peak,
        "rate_limited": s.rate_limited,
        "accepted_per_min": accepted / seconds * 60,
        "refresh_stale": s.stale_refresh_uses,
    }


async def with_lease(admin_dsn: str, seconds: float) -> dict[str, float]:
    async with TinySimulator(sim_config()) as sim, scratch_database(admin_dsn, "lease") as dsn:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
        env["R_ACME"] = sim.valid_refresh_token() or ""
        async with open_database(dsn, Path("/nonexistent")) as database:
            await database.registry.put(AccountConfig(
                key="acme", api_base_url=sim.base_url, token_url=sim.token_url,
                client_id=sim.config.client_id, client_secret=sim.config.client_secret,
                refresh_token_env="R_ACME",
            ))  # fmt: skip
            month, months = dt.date.today().replace(day=1), []
            for _ in range(24):
                months.append(Unit(Kind.BACKFILL, "acme", month).item())
                month = (month - dt.timedelta(days=1)).replace(day=1)
            await database.queue.enqueue(months)
        args = ["serve", "--database-url", dsn, "--slots", "8", "--background-slots", "3",
                "--log-level", "WARNING"]  # fmt: skip
        quiet = asyncio.subprocess.DEVNULL
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "asyncsync", *args, env=env, stdout=quiet, stderr=quiet
            )
            for _ in range(3)
        ]
        await asyncio.sleep(seconds)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            await asyncio.wait_for(p.wait(), 60)
        result = figures(sim, seconds)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        # Every pick of a unit tries the lease: a taken lease costs two statements (take,
        # release), a busy one two (take, name the holder).
        picks = await pool.fetchval("SELECT count(*) FROM pgqueuer_log WHERE status = 'picked'")
        await pool.close()
        result["statements_per_request"] = 2 * picks / max(sim.stats.requests_total, 1)
        result["picks"] = picks
        return result


async def without_lease(seconds: float) -> dict[str, float]:
    async with TinySimulator(sim_config()) as sim, aiohttp.ClientSession() as session:
        tiny = TinyOptions(api_base_url=sim.base_url, token_url=sim.token_url,
                           client_id=sim.config.client_id,
                           client_secret=sim.config.client_secret,
                           refresh_token=sim.valid_refresh_token(), max_concurrency=8)  # fmt: skip
        tokens = MemoryTokenStore()  # shared, like the database: only the limiters differ
        clients = [make_client(session, "acme", tiny, tiny.credentials(), tokens) for _ in range(3)]
        deadline = time.monotonic() + seconds

        async def lister(client: TinyClient, offset: int) -> None:
            while time.monotonic() < deadline:
                try:
                    await client.list_orders(ListQuery(situacao=3, offset=offset))
                except TinyError:  # a 429 that outlived its retries
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(lister(c, 100 * n) for c in clients for n in range(8)))
        return figures(sim, seconds)


async def shared_limiter(admin_dsn: str, requests: int) -> dict[str, float]:
    """A token bucket in one row: one UPDATE per request, from 3 sessions × 8 in flight."""
    async with scratch_database(admin_dsn, "bucket", schema=False) as dsn:
        pools = [await asyncpg.create_pool(dsn, min_size=8, max_size=8) for _ in range(3)]
        await pools[0].execute(
            "CREATE TABLE bucket (account text PRIMARY KEY, tokens float8, at timestamptz);"
            "INSERT INTO bucket VALUES ('acme', 1e9, clock_timestamp())"
        )
        take = (
            "UPDATE bucket SET tokens = least(1e9, tokens + extract(epoch FROM "
            "clock_timestamp() - at) * 1e6) - 1, at = clock_timestamp() "
            "WHERE account = 'acme' RETURNING tokens"
        )
        waits: list[float] = []

        async def one(pool: asyncpg.Pool, n: int) -> None:
            for _ in range(n):
                t = time.perf_counter()
                await pool.fetchval(take)
                waits.append(time.perf_counter() - t)

        started = time.perf_counter()
        each = requests // 24
        await asyncio.gather(*(one(p, each) for p in pools for _ in range(8)))
        took = time.perf_counter() - started
        for p in pools:
            await p.close()
    waits.sort()
    return {
        "p50_ms": statistics.median(waits) * 1000,
        "p95_ms": waits[int(0.95 * len(waits))] * 1000,
        "takes_per_s": len(waits) / took,
    }


async def main() -> None:
    p = parser(__doc__)
    p.add_argument("--seconds", type=float, default=125.0, help="per scenario")
    args = p.parse_args()
    seconds = 65.0 if args.quick else args.seconds
    lease = await with_lease(args.dsn, seconds)
    free = await without_lease(seconds)
    shared = await shared_limiter(args.dsn, 6000)
    print(f"one account, quota {QUOTA} per 60 s window, 3 processes, {seconds:.0f} s each")
    print(f"{'':<12} {'window_peak':>11} {'429s':>6} {'accepted/min':>13} {'stale refresh':>14}")
    for name, r in (("lease", lease), ("no lease", free)):
        print(f"{name:<12} {r['window_peak']:>11.0f} {r['rate_limited']:>6.0f} "
              f"{r['accepted_per_min']:>13.1f} {r['refresh_stale']:>14.0f}")  # fmt: skip
    print(f"lease: {lease['picks']:.0f} units picked, "
          f"{lease['statements_per_request']:.3f} database statements per API request")  # fmt: skip
    print(f"shared limiter (one row, 3 sessions × 8): a take costs p50 {shared['p50_ms']:.2f} ms, "
          f"p95 {shared['p95_ms']:.2f} ms, at most {shared['takes_per_s']:.0f} takes/s "
          "(one statement per API request)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
