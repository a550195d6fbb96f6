"""Issue 3: what one incremental cycle costs in API quota, and what it catches.

What it measures
    A simulator holds ``--orders`` service orders (100k by default). The product runs one
    full sync (listings only; then one SQL ``UPDATE ordens_servico SET detail_stale =
    false`` stands in for fetching the 100k details, which a cycle never refetches for
    unchanged orders anyway). The simulator then applies ``--changes`` status changes (a
    seeded mix of new orders, open→open, open→closed on orders emitted more than 30 days
    ago, closed→open and closed→closed), and the product runs

    * one hourly cycle (``incremental_sync`` with a sweep interval so large that no sweep
      is due): open statuses listed completely, closed ones over the recent window;
    * then the daily sweep cycle (sweep interval 0): closed statuses listed completely.

    Requests are counted by endpoint on the simulator (deltas of ``sim.stats``), so they
    include retries. A change counts as caught when, after the run, the mirror holds the
    order in its new status.

Baseline, same data, same run
    The old scripts' sync: "re-read the last 30 days every hour" — every status listed with
    ``dataInicialEmissao = today−30`` plus one detail request per order listed (that is
    how it records ``data_conclusao``). Its requests are really sent to the simulator
    (no database needed); it catches a change only if the order was emitted in the last
    30 days.

How to read the output
    The main table puts the approaches side by side: list and detail requests, their
    total, the minutes of a 120 req/min quota they use, and the changes caught. The
    formula check compares the cycle's measured cost with pages(open statuses) +
    pages(closed statuses since the window start) + one detail per changed order it can
    see. The sweep's extra details are explained below the table.

    .venv/bin/python bench/bench_incremental.py [--quick] [--orders N] [--changes N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import io
import math
import random
import sys
from collections import Counter
from collections.abc import Sequence

import aiohttp
import asyncpg
import orjson
from _common import (
    common_for,
    describe_dsn,
    parser,
    per_s,
    print_table,
    scratch_database,
    timed,
    write_json,
)

from asyncsync.clock import Clock, utcnow
from asyncsync.engine.cycle import plan_cycle
from asyncsync.jobs.sync import full_sync, incremental_sync
from asyncsync.options import CommonOptions, CycleOptions
from asyncsync.report import Outcome, RunReport
from asyncsync.runtime import open_runtime
from asyncsync.simulator import SimConfig, TinySimulator
from asyncsync.status import CLOSED_STATUSES, OPEN_STATUSES, Situacao

QUOTA_PER_MINUTE = 120
OLD_WINDOW_DAYS = 30
PAGE = 100  # the product's default page size, and the old scripts'
RATE = 1_000_000  # quota is counted, not enforced: nothing waits
#: Share of each kind of change in the mix (they add up to 1).
MIX: tuple[tuple[str, float], ...] = (
    ("new order", 0.15),
    ("open → open", 0.30),
    ("open → closed (emitted > 30 d ago)", 0.25),
    ("closed → open", 0.15),
    ("closed → closed", 0.15),
)


@dataclasses.dataclass(frozen=True)
class Change:
    kind: str
    order_id: int
    old: int | None
    new: int
    emitted: dt.date


def apply_changes(sim: TinySimulator, total: int, seed: int) -> list[Change]:
    """Apply ``total`` seeded status changes to distinct orders; return what was done."""
    rng = random.Random(seed)
    cutoff = dt.date.today() - dt.timedelta(days=OLD_WINDOW_DAYS)
    orders = sorted(sim.orders.values(), key=lambda o: o.id)
    opened = [o.id for o in orders if o.situacao in OPEN_STATUSES]
    old_open = [o.id for o in orders if o.situacao in OPEN_STATUSES and o.data < cutoff]
    closed = [o.id for o in orders if o.situacao in CLOSED_STATUSES]
    for pool in (opened, old_open, closed):
        rng.shuffle(pool)
    counts = [round(total * share) for _, share in MIX]
    counts[1] += total - sum(counts)
    used: set[int] = set()
    changes: list[Change] = []

    def take(pool: list[int]) -> int:
        while pool:
            order_id = pool.pop()
            if order_id not in used:
                used.add(order_id)
                return order_id
        raise SystemExit("not enough orders of that kind: use more --orders or fewer --changes")

    def move(kind: str, order_id: int, targets: Sequence[Situacao]) -> None:
        order = sim.orders[order_id]
        old = order.situacao
        new = rng.choice([s for s in targets if s != old])
        sim.set_status(order_id, new)
        changes.append(Change(kind, order_id, int(old), int(new), order.data))

    for (kind, _), n in zip(MIX, counts, strict=True):
        for _ in range(n):
            if kind == "new order":
                status = rng.choice(OPEN_STATUSES if rng.random() < 0.8 else CLOSED_STATUSES)
                order_id = sim.add_order(situacao=status)
                changes.append(Change(kind, order_id, None, int(status), sim.orders[order_id].data))
            elif kind == "open → open":
                move(kind, take(opened), OPEN_STATUSES)
            elif kind.startswith("open → closed"):
                move(kind, take(old_open), CLOSED_STATUSES)
            elif kind == "closed → open":
                move(kind, take(closed), OPEN_STATUSES)
            else:
                move(kind, take(closed), CLOSED_STATUSES)
    return changes


def snapshot(sim: TinySimulator) -> Counter[str]:
    return Counter(sim.stats.requests_by_endpoint)


def delta(sim: TinySimulator, before: Counter[str]) -> Counter[str]:
    after = snapshot(sim)
    return Counter({k: after[k] - before[k] for k in after if after[k] - before[k]})


async def run_sync(
    common: CommonOptions,
    cycle: CycleOptions,
    *,
    full: bool = False,
    now: dt.datetime | None = None,
) -> tuple[RunReport, float]:
    """One sync job on a fresh runtime, wired as ``--mode sync`` wires it (progress hidden),
    and the seconds the job took; ``now`` fixes the clock of an incremental cycle."""
    clock = utcnow if now is None else fixed_clock(now)
    async with open_runtime(common, open_statuses=cycle.open_statuses) as rt:
        ctx = rt.context(asyncio.Event(), progress=io.StringIO(), clock=clock)
        job = full_sync if full else incremental_sync
        with timed() as t:
            report = await job(rt.client, rt.store.orders, rt.store.metadata, cycle, ctx)
    return report, t.s


def fixed_clock(at: dt.datetime) -> Clock:
    """A clock that always says ``at``."""
    return lambda: at


async def mark_details_done(dsn: str) -> int:
    """Mark every listed order's detail as fetched; returns how many rows that touched."""
    conn = await asyncpg.connect(dsn)
    try:
        status = await conn.execute("UPDATE ordens_servico SET detail_stale = false")
    finally:
        await conn.close()
    return int(status.split()[-1])


async def caught(dsn: str, changes: Sequence[Change]) -> int:
    """How many changes the mirror shows: the order is there, in its new status."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, situacao FROM ordens_servico WHERE id = ANY($1::bigint[])",
            [c.order_id for c in changes],
        )
    finally:
        await conn.close()
    held = {r["id"]: r["situacao"] for r in rows}
    return sum(1 for c in changes if held.get(c.order_id) == c.new)


async def old_sync(sim: TinySimulator, since: dt.date) -> tuple[Counter[str], set[int]]:
    """The old scripts' hourly run: every status since ``since``, then a detail per order."""
    before = snapshot(sim)
    seen: set[int] = set()
    async with aiohttp.ClientSession() as session:
        form = {
            "grant_type": "refresh_token",
            "client_id": sim.config.client_id,
            "client_secret": sim.config.client_secret,
            "refresh_token": sim.valid_refresh_token() or "",
        }
        async with session.post(sim.token_url, data=form) as resp:
            token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        for status in Situacao:
            offset = 0
            while True:
                params = {
                    "situacao": str(int(status)),
                    "dataInicialEmissao": since.isoformat(),
                    "limit": str(PAGE),
                    "offset": str(offset),
                }
                url = sim.base_url + "/ordem-servico"
                async with session.get(url, params=params, headers=headers) as resp:
                    body = orjson.loads(await resp.read())
                items = body["itens"]
                seen.update(item["id"] for item in items)
                offset += len(items)
                total = body.get("paginacao", {}).get("total")
                if len(items) < PAGE or (total is not None and offset >= total):
                    break
        gate = asyncio.Semaphore(8)

        async def detail(order_id: int) -> None:
            async with (
                gate,
                session.get(f"{sim.base_url}/ordem-servico/{order_id}", headers=headers) as resp,
            ):
                await resp.read()

        async with asyncio.TaskGroup() as tg:
            for order_id in sorted(seen):
                tg.create_task(detail(order_id))
    return delta(sim, before), seen


def pages(n: int) -> int:
    """Pages to list ``n`` orders (an empty listing still costs one request)."""
    return max(1, math.ceil(n / PAGE))


def minutes(requests: int) -> float:
    return requests / QUOTA_PER_MINUTE


def row(name: str, req: Counter[str], got: int, of: int) -> list[object]:
    total = req["list"] + req["detail"]
    return [name, req["list"], req["detail"], total, minutes(total), f"{got}/{of}"]


async def run(args: argparse.Namespace) -> None:
    orders: int = args.orders or (20_000 if args.quick else 100_000)
    n_changes: int = args.changes
    seed: int = args.seed
    print(f"bench_incremental: {orders:,} simulated orders (seed {seed}), {n_changes} changes")
    print(f"PostgreSQL: {describe_dsn(args.dsn)}; quota shown at {QUOTA_PER_MINUTE} req/min\n")
    with timed() as t:
        sim = TinySimulator(SimConfig(orders=orders, seed=seed, rate_limit_per_minute=RATE))
    n_open = sum(1 for o in sim.orders.values() if o.situacao in OPEN_STATUSES)
    print(f"simulator: {len(sim.orders):,} orders generated in {t.s:.1f} s, {n_open:,} open")
    async with sim:
        async with scratch_database(args.dsn, "incremental") as dsn:
            common = common_for(sim, dsn, rate_limit_per_minute=RATE)
            hourly = CycleOptions(sweep_interval_s=1e12)

            listings_only = dataclasses.replace(hourly, detail_budget=0)
            full, full_s = await run_sync(common, listings_only, full=True)
            skipped = await mark_details_done(dsn)
            listed = full.count("orders_listed")
            print(
                f"full sync (listings only): {listed:,} orders in {full_s:.1f} s "
                f"({per_s(listed, full_s):,} orders/s, {dict(full.api.requests)})"
            )
            print(
                f"details of the {skipped:,} listed orders NOT fetched: "
                "`UPDATE ordens_servico SET detail_stale = false` marks them done instead "
                "(a cycle never refetches an unchanged order's detail anyway)\n"
            )

            changes = apply_changes(sim, n_changes, seed)
            mix = Counter(c.kind for c in changes)
            now = dt.datetime.now(dt.UTC)
            plan = plan_cycle(
                hourly.open_statuses,
                hourly.closed_statuses,
                recent_days=hourly.recent_days,
                sweep_interval_s=hourly.sweep_interval_s,
                last_sweep=now,
                now=now,
            )

            before = snapshot(sim)
            cycle, cycle_s = await run_sync(common, hourly, now=now)
            cycle_req = delta(sim, before)
            cycle_caught = await caught(dsn, changes)

            daily = dataclasses.replace(hourly, sweep_interval_s=0.0)
            before = snapshot(sim)
            sweep, sweep_s = await run_sync(common, daily)
            sweep_req = delta(sim, before)
            sweep_caught = await caught(dsn, changes)

        since = dt.date.today() - dt.timedelta(days=OLD_WINDOW_DAYS)
        with timed() as t_old:
            old_req, old_seen = await old_sync(sim, since)
        old_caught = sum(1 for c in changes if c.order_id in old_seen)

    print_table(
        ["kind of change", "count", "emitted before the 30-day window"],
        [[k, mix[k], sum(1 for c in changes if c.kind == k and c.emitted < since)] for k, _ in MIX]
        + [["total", len(changes), sum(1 for c in changes if c.emitted < since)]],
        f"changes applied by the simulator (seeded, seed {seed})",
    )
    window = plan.window_from.isoformat()
    print_table(
        ["approach", "list requests", "detail requests", "total",
         f"minutes of quota at {QUOTA_PER_MINUTE} req/min", f"changes caught / {len(changes)}"],
        [
            row("asyncsync hourly cycle", cycle_req, cycle_caught, len(changes)),
            row("asyncsync daily sweep (run next)", sweep_req, sweep_caught, len(changes)),
            row("old scripts: last 30 days every hour", old_req, old_caught, len(changes)),
        ],
        "one run after the changes — requests counted by the simulator",
    )  # fmt: skip
    print(
        f"  hourly cycle: open statuses listed completely, closed ones emitted ≥ {window}\n"
        "  daily sweep: open and closed statuses listed completely; caught is cumulative\n"
        f"  old scripts: all 8 statuses emitted ≥ {since.isoformat()}, "
        "then one detail per order listed\n"
    )
    state = sim.orders.values()
    open_pages = sum(pages(sum(1 for o in state if o.situacao == s)) for s in OPEN_STATUSES)
    closed_pages = sum(
        pages(sum(1 for o in state if o.situacao == s and o.data >= plan.window_from))
        for s in CLOSED_STATUSES
    )
    visible = sum(
        1
        for c in changes
        if c.old is None
        or c.old in OPEN_STATUSES
        or c.new in OPEN_STATUSES
        or c.emitted >= plan.window_from
    )
    measured = cycle_req["list"] + cycle_req["detail"]
    formula = open_pages + closed_pages + visible
    print(
        f"formula check (hourly cycle): pages(open) {open_pages} + pages(closed since {window}) "
        f"{closed_pages} + changed orders it can see {visible} = {formula}; "
        f"measured {cycle_req['list']} + {cycle_req['detail']} = {measured} "
        f"({'equal' if formula == measured else f'off by {measured - formula:+d}'})"
    )
    all_closed = sum(pages(sum(1 for o in state if o.situacao == s)) for s in CLOSED_STATUSES)
    gone = cycle.count("vanished")
    cc_old = sum(
        1 for c in changes if c.old in CLOSED_STATUSES and c.new in CLOSED_STATUSES
        and c.emitted < plan.window_from
    )  # fmt: skip
    print(
        f"formula check (sweep): pages(open) {open_pages} + pages(closed, all) {all_closed} = "
        f"{open_pages + all_closed} list requests, measured {sweep_req['list']}; details "
        f"{sweep_req['detail']} = {cc_old} closed→closed changes older than the window "
        f"(the {gone} orders the hourly cycle found gone from the open listings already have "
        "their detail: the sweep catching up on their listing does not refetch it)"
        if sweep_req["detail"] == cc_old
        else f"sweep details: measured {sweep_req['detail']}, expected {cc_old}"
    )
    old_window = sum(1 for o in state if o.data >= since)
    print(
        f"old scripts' baseline: {old_window:,} orders emitted since {since.isoformat()}, "
        f"{old_req['list']} list pages over the 8 statuses + one detail each; "
        f"it misses every change to an order emitted before that date"
    )
    per_day_asyncsync = 23 * (cycle_req["list"] + cycle_req["detail"]) + sum(
        sweep_req[k] for k in ("list", "detail")
    )
    per_day_old = 24 * (old_req["list"] + old_req["detail"])
    print(
        f"derived, per day at one run an hour with this much change: asyncsync 23 cycles + 1 "
        f"sweep = {per_day_asyncsync:,} requests ({minutes(per_day_asyncsync):.0f} min of "
        f"quota), old scripts 24 runs = {per_day_old:,} ({minutes(per_day_old):.0f} min)"
    )
    print(
        f"\nwall time: hourly cycle {cycle_s:.1f} s, sweep cycle {sweep_s:.1f} s, "
        f"old scripts' run {t_old.s:.1f} s (simulator without latency: quota, not time, is the "
        "cost that matters); cycle status changes recorded "
        f"{history_rows(cycle)}, sweep {history_rows(sweep)}"
    )
    _check(cycle, sweep)
    write_json(args.json_out, {
        "orders": orders, "changes": len(changes),
        "cycle": {"requests": measured, "caught": cycle_caught},
        "sweep": {"requests": sweep_req["list"] + sweep_req["detail"], "caught": sweep_caught},
        "old_scripts": {"requests": old_req["list"] + old_req["detail"], "caught": old_caught},
        "formula": formula,
    })  # fmt: skip


def history_rows(report: RunReport) -> str:
    """History rows a run added: status changes, plus first sightings of new orders."""
    changes, first = report.count("status_changes"), report.count("first_sightings")
    return f"{changes + first} ({changes} changes + {first} first sightings)"


def _check(*reports: RunReport) -> None:
    for report in reports:
        if report.outcome is not Outcome.OK:
            print(f"warning: a {report.title} run did not complete", file=sys.stderr)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--orders", type=int, help="simulated orders (default 100000, quick 20000)")
    p.add_argument("--changes", type=int, default=200, help="status changes before the cycle")
    p.add_argument("--seed", type=int, default=1, help="simulator and change-mix seed")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
