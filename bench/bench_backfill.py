"""Issue 4: the parallel checkpointed backfill vs a serial loader like the old scripts.

What it measures
    A simulator holds ``--orders`` service orders (100k by default) emitted from 2014 to
    today, with a fixed 60 s window of ``--quota`` requests and ``--latency-ms`` per
    answer. The product's backfill (:func:`asyncsync.jobs.backfill.backfill`, on the
    product's own runtime) loads every month from 2014-01 to this month into a fresh
    database: month × status partitions, ``--partitions`` in flight under one
    account-wide limiter set to the quota, each page merged with its checkpoint. Details
    are skipped (budget 0). Requests and 429s are counted by the simulator.

Baseline, same data, same run
    What the old ad-hoc ``fetch_historical_orders_*.py`` scripts plausibly do: one
    request at a time, month by month, status by status, offset paging (limit 100) until
    a short page; no limiter and no look at the rate headers; on a 429 it sleeps a fixed
    60 s and asks for the same page again; every order is written by its own autocommit
    upsert through asyncpg ``execute`` (the old "one UPDATE per order"); no checkpoint,
    no history. It parses with the product's ``parse_list_item``, so both sides pay the
    same per-order parsing. It runs against its own fresh simulator (same seed, same
    orders, a fresh quota window) and database, for at most ``--baseline-seconds``; if
    stopped there, the rest of its job is replayed on paper from where it stopped: its
    measured seconds per request and per order, the simulator's window as its last
    answer's rate headers reported it, and a 60 s sleep after each 429. The output says
    which figures are extrapolated.

    Each simulator is a ``python -m asyncsync.simulator`` subprocess, so serving pages
    does not compete with the measured side for its event loop.

    .venv/bin/python bench/bench_backfill.py [--quick] [--orders N] [--quota N]
                                             [--latency-ms MS] [--baseline-seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import logging
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
from _common import (
    OLD_UPSERT,
    common_options,
    describe_dsn,
    parser,
    print_table,
    scratch_database,
    upsert_args,
    write_json,
)

from asyncsync.jobs.backfill import backfill
from asyncsync.jobs.backfill_plan import DEFAULT_FIRST_MONTH, last_day, month_range
from asyncsync.options import BackfillOptions
from asyncsync.records import parse_list_item
from asyncsync.report import RunReport, render_text
from asyncsync.runtime import open_runtime

OLD_PAUSE_S = 60.0  # what a naive script sleeps on a 429
WINDOW_S = 60.0  # the simulator's quota window


@dataclass(frozen=True)
class Sim:
    """A simulator subprocess and what its announcement line said."""

    base_url: str
    token_url: str
    client_id: str
    client_secret: str
    refresh_token: str
    pid: int = 0  # of the simulator process

    async def stats(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        origin = self.base_url.rsplit("/public-api/", 1)[0]
        async with http.get(f"{origin}/_sim/stats") as resp:
            data: dict[str, Any] = await resp.json()
            return data


@asynccontextmanager
async def simulator(args: argparse.Namespace) -> AsyncIterator[Sim]:
    """``python -m asyncsync.simulator`` on a free port; SIGTERM (by pid) on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncsync.simulator", "--port", "0",
        "--orders", str(args.orders), "--seed", str(args.seed),
        "--rate-limit", str(args.quota), "--rate-window-s", str(WINDOW_S),
        "--latency-ms", str(args.latency_ms),
        *(["--no-rotate"] if getattr(args, "no_rotate", False) else []),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 300)).decode()
        if not line.startswith("tiny simulator:"):
            raise RuntimeError(f"the simulator did not start: {line!r}")
        said = dict(word.split("=", 1) for word in line.split() if "=" in word)
        yield Sim(
            said["base_url"],
            said["token_url"],
            said["client_id"],
            said["client_secret"],
            said["refresh_token"],
            proc.pid,
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@dataclass
class Figures:
    """One side's figures; ``extrapolated`` marks a capped run completed on paper."""

    wall_s: float
    requests: int
    listing_s: float  # the span over which requests/minute is measured
    throttled: int
    records: int
    extrapolated: bool = False
    note: str = ""

    def per_minute(self) -> float:
        return 60 * self.requests / self.listing_s if self.listing_s else 0.0


async def run_backfill(args: argparse.Namespace) -> tuple[Figures, RunReport]:
    async with (
        simulator(args) as sim,
        scratch_database(args.dsn, "backfill") as dsn,
        aiohttp.ClientSession() as http,
    ):
        common = common_options(
            dsn,
            api_base_url=sim.base_url,
            token_url=sim.token_url,
            client_id=sim.client_id,
            client_secret=sim.client_secret,
            refresh_token=sim.refresh_token,
            rate_limit_per_minute=args.quota,
        )
        options = BackfillOptions(
            date_from=DEFAULT_FIRST_MONTH,
            date_to=dt.date.today().replace(day=1),
            partitions=args.partitions,
            detail_budget=0,
        )
        started = time.monotonic()
        async with open_runtime(common) as rt:
            ctx = rt.context(asyncio.Event())
            report = await backfill(rt.client, rt.store.orders, rt.store.metadata, options, ctx)
        wall = time.monotonic() - started
        rows = await count_orders(dsn)
        stats = await sim.stats(http)
    figures = Figures(
        wall_s=wall,
        requests=int(stats["requests_total"]),
        listing_s=listing_seconds(report),
        throttled=int(stats["rate_limited"]),
        records=rows,
    )
    return figures, report


def listing_seconds(report: RunReport) -> float:
    """How long the backfill listed (census included)."""
    return float(report.counts.get("listing_s", 0.0))


async def count_orders(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ordens_servico"))
    finally:
        await conn.close()


@dataclass
class Sample:
    """What the serial loader measured before it finished or ran out of budget.

    Times are on the loader's clock (seconds since it started).
    """

    pages: int = 0
    records: int = 0
    requests: int = 0
    throttled: int = 0
    http_s: float = 0.0  # waiting for answers (429s included)
    insert_s: float = 0.0  # one statement per order
    sleep_s: float = 0.0  # the fixed pauses after 429s
    sleep_left_s: float = 0.0  # of a pause the budget cut short
    elapsed_s: float = 0.0
    window_end_s: float = WINDOW_S  # when the simulator's current window ends
    window_used: int = 0  # requests the simulator counted in it
    finished: bool = False

    def saw(self, headers: Mapping[str, str], now_s: float) -> None:
        """Place the simulator's window from an answer's rate headers."""
        limit = int(headers.get("X-RateLimit-Limit", "0"))
        self.window_used = limit - int(headers.get("X-RateLimit-Remaining", "0"))
        self.window_end_s = now_s + float(headers.get("X-RateLimit-Reset", WINDOW_S))


async def run_serial(args: argparse.Namespace, full_pages: int) -> Figures:
    """The old scripts' loader for at most ``--baseline-seconds``; the rest on paper."""
    async with (
        simulator(args) as sim,
        scratch_database(args.dsn, "serial") as dsn,
        aiohttp.ClientSession() as http,
    ):
        conn = await asyncpg.connect(dsn)
        try:
            sample = await serial_loader(sim, http, conn, args.baseline_seconds)
            rows = int(await conn.fetchval("SELECT count(*) FROM ordens_servico"))
        finally:
            await conn.close()
    if sample.finished:
        t = sample.elapsed_s
        return Figures(t, sample.requests, t, sample.throttled, rows)
    return extrapolate(sample, full_pages, args.orders, args.quota)


async def serial_loader(
    sim: Sim, http: aiohttp.ClientSession, conn: asyncpg.Connection, budget_s: float
) -> Sample:
    form = {
        "grant_type": "refresh_token",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "refresh_token": sim.refresh_token,
    }
    async with http.post(sim.token_url, data=form) as resp:
        auth = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
    sample = Sample()
    started = time.monotonic()
    url = f"{sim.base_url}/ordem-servico"
    for month in month_range(DEFAULT_FIRST_MONTH, dt.date.today()):
        for situacao in range(8):
            offset = 0
            while True:
                sample.elapsed_s = time.monotonic() - started
                left = budget_s - sample.elapsed_s
                if left <= 0:
                    return sample
                params = {
                    "situacao": str(situacao),
                    "dataInicialEmissao": month.isoformat(),
                    "dataFinalEmissao": last_day(month).isoformat(),
                    "limit": "100",
                    "offset": str(offset),
                }
                observed_at = dt.datetime.now(dt.UTC)
                sent = time.monotonic()
                async with http.get(url, params=params, headers=auth) as resp:
                    body, status = await resp.read(), resp.status
                    sample.saw(resp.headers, time.monotonic() - started)
                sample.requests += 1
                sample.http_s += time.monotonic() - sent
                if status == 429:
                    sample.throttled += 1
                    pause = min(OLD_PAUSE_S, left)
                    sample.sleep_s += pause
                    sample.sleep_left_s = OLD_PAUSE_S - pause
                    await asyncio.sleep(pause)
                    continue
                if status != 200:
                    raise RuntimeError(f"serial loader: HTTP {status}: {body[:200]!r}")
                items = orjson.loads(body)["itens"]
                sample.pages += 1
                sent = time.monotonic()
                for raw in items:
                    record = parse_list_item(raw, observed_at)
                    await conn.execute(OLD_UPSERT, *upsert_args("default", record))
                sample.insert_s += time.monotonic() - sent
                sample.records += len(items)
                if len(items) < 100:
                    break
                offset += 100
    sample.elapsed_s = time.monotonic() - started
    sample.finished = True
    return sample


def extrapolate(sample: Sample, full_pages: int, full_records: int, quota: int) -> Figures:
    """The rest of the serial job replayed from where the capped loader stopped.

    Each remaining page costs the measured seconds per request plus its share of the
    remaining orders at the measured seconds per order; the simulator's fixed window goes
    on from the state its last answer reported; a request past the quota is a 429 and
    then the loader's 60 s sleep (a sleep the budget cut short is finished first).
    """
    pages_left = full_pages - sample.pages
    per_request = sample.http_s / max(sample.requests, 1)
    per_record = sample.insert_s / sample.records if sample.records else 0.0
    page_cost = per_request + per_record * (full_records - sample.records) / max(pages_left, 1)
    t = sample.elapsed_s + sample.sleep_left_s
    window_end, used, pages, throttled = sample.window_end_s, sample.window_used, 0, 0
    while pages < pages_left:
        while t >= window_end:
            window_end, used = window_end + WINDOW_S, 0
        used += 1
        if used > quota:
            throttled += 1
            t += per_request + OLD_PAUSE_S
        else:
            pages += 1
            t += page_cost
    note = (
        f"serial loader stopped after {sample.elapsed_s:.0f} s at page {sample.pages:,} of "
        f"{full_pages:,} ({sample.records:,} orders, {sample.throttled} 429s, "
        f"{sample.sleep_s:.0f} s asleep); the other {pages_left:,} pages are replayed at its "
        f"measured {1000 * per_request:.1f} ms per request and {1000 * per_record:.2f} ms "
        f"per order against the simulator's window, with a {OLD_PAUSE_S:.0f} s sleep after "
        "each 429"
    )
    requests = sample.requests + pages + throttled
    return Figures(t, requests, t, sample.throttled + throttled, full_records, True, note)


def print_comparison(args: argparse.Namespace, fast: Figures, serial: Figures | None) -> None:
    sides = [("asyncsync backfill", fast)] + ([("serial (old scripts)", serial)] if serial else [])

    def row(label: str, cell: Any) -> list[object]:
        return [label, *(cell(f) for _, f in sides)]

    def est(f: Figures, text: str) -> str:
        return text + (" (extrapolated)" if f.extrapolated else "")

    rows = [
        row("wall time (s)", lambda f: est(f, f"{f.wall_s:,.1f}")),
        row("requests", lambda f: est(f, f"{f.requests:,}")),
        row("achieved req/min", lambda f: est(f, f"{f.per_minute():,.1f}")),
        row("achieved ÷ quota", lambda f: est(f, f"{100 * f.per_minute() / args.quota:.1f} %")),
        row("429s", lambda f: est(f, f"{f.throttled:,}")),
        row("records", lambda f: f"{f.records:,}"),
        row("records/s", lambda f: est(f, f"{f.records / f.wall_s:,.0f}")),
    ]
    if serial:
        rows.append(["speed-up", f"{serial.wall_s / fast.wall_s:.1f}×", "1.0×"])
    print_table(
        ["", *(name for name, _ in sides)],
        rows,
        f"backfill of {args.orders:,} orders, 2014-01..{dt.date.today():%Y-%m}: quota "
        f"{args.quota:,} req/min, latency {args.latency_ms:g} ms, {args.partitions} "
        f"partitions in flight, details skipped; PostgreSQL {describe_dsn(args.dsn)}",
    )
    if serial and serial.note:
        print(serial.note)


async def run(args: argparse.Namespace) -> None:
    print(f"asyncsync backfill: {args.orders:,} orders, quota {args.quota:,} req/min", flush=True)
    fast, report = await run_backfill(args)
    print(render_text(report) + "\n", flush=True)
    serial = None
    if args.baseline_seconds > 0:
        print(f"serial loader (old scripts), for at most {args.baseline_seconds:g} s", flush=True)
        serial = await run_serial(args, report.count("pages"))
    print()
    print_comparison(args, fast, serial)
    sides = {"asyncsync": fast, **({"serial": serial} if serial else {})}
    write_json(args.json_out, {
        "orders": args.orders, "quota": args.quota,
        **{name: {**dataclasses.asdict(f), "per_minute": f.per_minute()}
           for name, f in sides.items()},
    })  # fmt: skip


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--orders", type=int, help="orders in the simulator (100000; quick 10000)")
    p.add_argument("--quota", type=int, help="requests per minute (600; quick 3000)")
    p.add_argument("--latency-ms", type=float, default=50.0, help="simulated API latency")
    p.add_argument("--partitions", type=int, default=5, help="backfill partitions in flight")
    p.add_argument("--seed", type=int, default=1, help="simulator seed")
    p.add_argument(
        "--baseline-seconds", type=float, help="cap on the serial baseline (180; quick 60); 0 skips"
    )
    args = p.parse_args()
    preset = (10_000, 3000, 60.0) if args.quick else (100_000, 600, 180.0)
    for name, value in zip(("orders", "quota", "baseline_seconds"), preset, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
