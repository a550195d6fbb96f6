"""Scaling out: orders/s and accounts served by 1, 2 and 4 ``asyncsync serve`` worker
processes on 20 and 200 accounts, side by side in one run, with the bound that was hit.

Every account has its own simulator (its quota, its rotating tokens, its orders), all
served by this process; the accounts are added to a scratch database, then W workers
start together:

* first syncs: the time until every account's mirror holds all its orders with their
  details (a full sync: listings, then one request per order): orders/s and requests/s;
* steady state: then, for ``--steady`` seconds, cycles every ``--interval``: the longest
  gap between two cycles of an account, and the accounts whose every gap kept to the
  interval (+2 s): "accounts served".

The bound: the requests/s the quotas allow (the sum over the accounts) against those
achieved; the machine's CPU (``/proc/stat``) and how it split between the workers, this
process (the simulators) and PostgreSQL; the worker slots. The quotas bind when the
achieved rate is within 75 % of theirs (a limiter sends its account's first request alone
until the quota is known); else CPU when the machine is near 100 %; else the slots when
there are more accounts than the workers run at once.

    .venv/bin/python bench/bench_workers.py          # ~10 min; --quick: 20 accounts, 1 and 2
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parser, scratch_database

from asyncsync.accounts import AccountConfig
from asyncsync.simulator import SimConfig, TinySimulator
from asyncsync.store import open_database

QUOTA_PER_MINUTE = 600  # each account's plan
SLOTS = 50  # units a worker runs at once


@dataclass
class Result:
    accounts: int
    workers: int
    orders: int
    sync_s: float
    requests: int
    synced: int  # accounts whose first sync completed
    served: int  # of those, accounts whose every steady-state gap kept the interval
    max_gap_s: float
    cpu: float  # machine busy share during the first syncs
    split: dict[str, float]  # CPU seconds by consumer during the first syncs

    @property
    def orders_s(self) -> float:
        return self.orders / self.sync_s

    @property
    def requests_s(self) -> float:
        return self.requests / self.sync_s

    def bound(self) -> str:
        allowed = self.accounts * QUOTA_PER_MINUTE / 60
        if self.requests_s >= 0.75 * allowed:
            return f"the quotas ({self.requests_s:.0f} of {allowed:.0f} req/s)"
        top = max(self.split, key=lambda k: self.split[k])
        if self.cpu >= 0.85:
            return f"CPU ({self.cpu:.0%} of 2 cores; most: {top})"
        if self.accounts > self.workers * SLOTS:
            return f"the slots ({self.workers}×{SLOTS} accounts at once; CPU {self.cpu:.0%})"
        return f"latency/waits (CPU {self.cpu:.0%}, quotas {self.requests_s / allowed:.0%})"


def busy() -> tuple[float, float]:
    """(busy, total) jiffies of the machine."""
    parts = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def postgres_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "") == "postgres"]


async def run(admin_dsn: str, accounts: int, workers: int, orders: int, steady_s: float,
              interval_s: float) -> Result:  # fmt: skip
    sims: dict[str, TinySimulator] = {}
    for i in range(accounts):
        sim = TinySimulator(SimConfig(orders=orders, seed=i, rate_limit_per_minute=QUOTA_PER_MINUTE,
                                      latency_s=0.005))  # fmt: skip
        await sim.start()
        sims[f"a{i:03d}"] = sim
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
    env.pop("DATABASE_URL", None)
    try:
        async with scratch_database(admin_dsn, "workers", schema=True) as dsn:
            async with open_database(dsn, Path("/nonexistent")) as database:
                for key, sim in sims.items():
                    env[f"R_{key}"] = sim.valid_refresh_token() or ""
                    await database.registry.put(AccountConfig(
                        key=key, api_base_url=sim.base_url, token_url=sim.token_url,
                        client_id=sim.config.client_id, client_secret=sim.config.client_secret,
                        refresh_token_env=f"R_{key}",
                    ))  # fmt: skip
            return await measure(dsn, sims, env, workers, orders, steady_s, interval_s)
    finally:
        for sim in sims.values():
            await sim.aclose()


async def measure(dsn: str, sims: dict[str, TinySimulator], env: dict[str, str], workers: int,
                  orders: int, steady_s: float, interval_s: float) -> Result:  # fmt: skip
    args = ["serve", "--database-url", dsn, "--interval", str(interval_s), "--slots",
            str(SLOTS), "--integrity-interval", "0", "--log-level", "WARNING"]  # fmt: skip
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    me = psutil.Process()
    pg = postgres_processes()
    cpu0 = {"workers": 0.0, "simulators (bench)": cpu_seconds([me]), "postgres": cpu_seconds(pg)}
    b0, t0j = busy()
    started = time.monotonic()
    quiet = asyncio.subprocess.DEVNULL
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asyncsync", *args, env=env, stdout=quiet, stderr=quiet
        )
        for _ in range(workers)
    ]
    ps = [psutil.Process(p.pid) for p in procs]
    total = orders * len(sims)
    deadline = started + 600
    done_at = None
    synced = 0
    worker_cpu = 0.0
    try:
        while time.monotonic() < deadline:
            synced = await pool.fetchval(
                "SELECT count(*) FROM (SELECT account FROM ordens_servico WHERE NOT detail_stale "
                "GROUP BY account HAVING count(*) = $1) a", orders)  # fmt: skip
            worker_cpu = cpu_seconds(ps)
            if synced == len(sims):
                done_at = time.monotonic()
                break
            await asyncio.sleep(0.5)
        sync_s = (done_at or time.monotonic()) - started
        b1, t1j = busy()
        split = {
            "workers": worker_cpu,
            "simulators (bench)": cpu_seconds([me]) - cpu0["simulators (bench)"],
            "postgres": cpu_seconds(postgres_processes()) - cpu0["postgres"],
        }
        requests = sum(s.stats.requests_total for s in sims.values())
        steady_from = dt.datetime.now(dt.UTC)
        await asyncio.sleep(steady_s)
        rows = await pool.fetch(
            "SELECT account, started_at FROM sync_runs WHERE mode = 'sync' AND started_at >= $1 "
            "ORDER BY account, started_at", steady_from)  # fmt: skip
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            await asyncio.wait_for(p.wait(), 60)
        await pool.close()
    starts: dict[str, list[dt.datetime]] = {}
    for r in rows:
        starts.setdefault(r["account"], []).append(r["started_at"])
    served, worst = 0, 0.0
    for key in sims:
        times = [steady_from, *starts.get(key, []), steady_from + dt.timedelta(seconds=steady_s)]
        gap = max((b - a).total_seconds() for a, b in itertools.pairwise(times))
        worst = max(worst, gap)
        served += gap <= interval_s + 2.0
    return Result(len(sims), workers, total if done_at else synced * orders, sync_s, requests,
                  synced, served, worst, (b1 - b0) / max(t1j - t0j, 1), split)  # fmt: skip


async def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steady", type=float, default=30.0, help="seconds of steady state")
    p.add_argument("--interval", type=float, default=10.0, help="serve --interval, seconds")
    args = p.parse_args()
    plans = [(20, 100), (200, 30)]
    counts = [1, 2, 4]
    if args.quick:
        plans, counts = [(20, 50)], [1, 2]
    results = []
    for accounts, orders in plans:
        for workers in counts:
            r = await run(args.dsn, accounts, workers, orders, args.steady, args.interval)
            results.append(r)
            print(f"  {accounts} accounts × {orders} orders, {workers} workers: "
                  f"{r.sync_s:.1f} s", flush=True)  # fmt: skip
    print(f"\nquota {QUOTA_PER_MINUTE}/min per account; {SLOTS} slots per worker; steady state "
          f"{args.steady:.0f} s at --interval {args.interval:.0f}")  # fmt: skip
    head = (f"{'accounts':>8} {'workers':>7} {'orders/s':>9} {'req/s':>7} {'synced':>7} "
            f"{'served':>7} {'max gap':>8} {'CPU':>5}  bound; CPU s: workers/sims/pg")  # fmt: skip
    print(head)
    for r in results:
        split = "/".join(f"{v:.0f}" for v in r.split.values())
        print(f"{r.accounts:>8} {r.workers:>7} {r.orders_s:>9.1f} {r.requests_s:>7.1f} "
              f"{r.synced:>7} {r.served:>7} {r.max_gap_s:>7.1f}s {r.cpu:>5.0%}  "
              f"{r.bound()}; {split}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
