"""Pages that drift while they are listed, answers whose form changes, details that fail
at random: the mirror converges, exactly, without a sweep or an integrity run."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import random
import signal

import pytest

from asyncsync.clock import utcnow
from asyncsync.simulator import Quirks, TinySimulator
from asyncsync.status import Situacao

from ..helpers import full_sync, incremental_sync
from ..mirror import diff, mirror
from .conftest import asyncsync, cli_env

NO_SWEEP = {"sweep_interval_s": 1e9}


def drifting(rate: float, seed: int, budget: int):  # type: ignore[no-untyped-def]
    """A page hook that moves a random order to another status now and then."""
    rng = random.Random(seed)
    left = {"n": budget}

    def move(sim: TinySimulator, params: dict[str, str]) -> None:
        if params.get("limit") == "1" or not left["n"]:
            return  # single-item total requests see a still world
        for _ in range(3):
            if left["n"] and rng.random() < rate:
                left["n"] -= 1
                victim = rng.choice(sorted(sim.orders))
                now = sim.orders[victim].situacao
                sim.set_status(victim, rng.choice([s for s in Situacao if s != now]))

    return move, left


async def history_chains(db) -> dict[int, list[tuple[int | None, int]]]:
    rows = await db.fetch(
        "SELECT id_os, status_antigo, status_novo FROM ordem_status_history ORDER BY seq"
    )
    chains: dict[int, list[tuple[int | None, int]]] = {}
    for r in rows:
        chains.setdefault(r["id_os"], []).append((r["status_antigo"], r["status_novo"]))
    return chains


def assert_consistent(chains, sim: TinySimulator) -> None:  # type: ignore[no-untyped-def]
    for order_id, chain in chains.items():
        assert chain[0][0] is None, chain  # first seen once
        for (_, new), (old, _next) in itertools.pairwise(chain):
            assert old == new, (order_id, chain)  # no gap, no step back
        assert chain[-1][1] == sim.orders[order_id].situacao


async def test_drift_leftovers_converge_in_two_cycles_without_a_sweep(
    simulator, runtime_for, db
) -> None:
    sim = await simulator(orders=3000, seed=41, max_limit=50)
    sim.on_list_page, left = drifting(rate=0.5, seed=7, budget=150)  # 5% of the orders
    async with runtime_for(sim) as rt:
        await full_sync(rt, page_size=50, **NO_SWEEP)
    assert left["n"] < 150  # orders really moved while the pages were read
    sim.on_list_page = None  # the drift stops
    for _ in range(2):
        async with runtime_for(sim) as rt:
            await incremental_sync(rt, page_size=50, **NO_SWEEP)
    assert diff(sim.snapshot(), await mirror(db)) == []
    assert_consistent(await history_chains(db), sim)


async def test_sigkill_in_the_detail_phase_under_drift_converges(
    simulator, database_url, runtime_for, db
) -> None:
    # 20 pages moving ~48 orders while listed (as 40 pages at 0.4 did); every detail left
    # at the kill is fetched at 50/s by the two syncs after it.
    sim = await simulator(orders=1000, seed=42, max_limit=50, rate_limit_per_minute=3000)
    sim.on_list_page, left = drifting(rate=0.8, seed=8, budget=100)
    env = cli_env(
        TINY_CLIENT_ID=sim.config.client_id, TINY_CLIENT_SECRET=sim.config.client_secret,
        TINY_REFRESH_TOKEN=sim.valid_refresh_token() or "",
    )  # fmt: skip
    proc = await asyncsync(
        "sync", "--database-url", database_url, "--api-base-url", sim.base_url,
        "--token-url", sim.token_url, "--log-format", "json", env=env,
    )  # fmt: skip
    # Details go at 50/s: kill once some have merged.
    for _ in range(600):
        fetched = await db.fetchval("SELECT count(*) FROM ordens_servico WHERE NOT detail_stale")
        if fetched and fetched > 100:
            break
        await asyncio.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    assert left["n"] < 100  # orders really moved while the pages were read
    sim.on_list_page = None
    for _ in range(2):
        async with runtime_for(sim) as rt:
            await incremental_sync(rt, page_size=50, **NO_SWEEP)
    assert diff(sim.snapshot(), await mirror(db)) == []
    assert_consistent(await history_chains(db), sim)


async def test_a_change_of_form_is_not_a_change(simulator, runtime_for, db) -> None:
    # situacao as 3, "3" or "3 - Finalizada", money as 1234.5 or "1.234,50", drawn anew
    # in every answer: the second sync finds nothing changed.
    quirks = Quirks(situacao_style="unstable", money_as_string=True, zero_dates=True)
    sim = await simulator(orders=1500, seed=43, quirks=quirks)
    async with runtime_for(sim) as rt:
        await full_sync(rt)
    async with runtime_for(sim) as rt:
        again = await full_sync(rt)
    assert (again.count("changed"), again.count("details_fetched")) == (0, 0)
    assert again.count("unchanged") == 1500
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_details_failing_at_random_still_arrive(simulator, runtime_for, db) -> None:
    # A fifth of detail requests answer 500: each is tried again after the healthy ones,
    # nothing is blamed on the records, and the mirror is exact.
    sim = await simulator(orders=1000, seed=44)
    sim.detail_error_rate = 0.2
    async with runtime_for(sim, max_retries=4) as rt:
        report = await full_sync(rt)
    assert report.outcome == "ok" and sim.stats.injected_errors > 100
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0
    left = report.count("details_unavailable")
    # Every detail request beyond an order's first is a retry, and the report says so.
    repeats = report.api.requests["detail"] - report.count("details_fetched") - left
    assert report.api.retries == repeats > 100
    if left:  # 0.2^5 per order: rarely one is left, for the next pass
        async with runtime_for(sim, max_retries=4) as rt:
            await incremental_sync(rt)
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_a_relist_that_shifts_another_status_short_converges_in_two_cycles(
    simulator, runtime_for, db
) -> None:
    # Between cycles: X (2020-01) 3 → 7, Y (2016) 7 → 3, and N created already closed in 3,
    # emitted 2020-01. Relisting Y's range corrects Y and leaves 7 short (X); 7 must be
    # checked again at once, not only the status that was short before.
    sim = await simulator(orders=2000, seed=701)
    no_sweep = {"sweep_interval_s": 1e9}
    async with runtime_for(sim) as rt:
        await full_sync(rt, **no_sweep)
    x = next(
        o.id
        for o in sim.orders.values()
        if o.situacao == Situacao.FINALIZADA and (o.data.year, o.data.month) == (2020, 1)
    )
    y = next(o.id for o in sim.orders.values()
             if o.situacao == Situacao.CANCELADA and o.data.year == 2016)  # fmt: skip
    sim.set_status(x, Situacao.CANCELADA)
    sim.set_status(y, Situacao.FINALIZADA)
    sim.add_order(situacao=Situacao.FINALIZADA, data=dt.date(2020, 1, 22))
    for _ in range(2):
        async with runtime_for(sim) as rt:
            await incremental_sync(rt, **no_sweep)
    assert diff(sim.snapshot(), await mirror(db)) == []


@pytest.mark.parametrize("skew_min", [20, -20])
async def test_a_host_whose_clock_is_off_stamps_by_the_databases_clock(
    skew_min, simulator, runtime_for, db
) -> None:
    # A cycle run on a host 20 minutes ahead (or behind). Ahead, its observations would
    # claim to be newer than every correct one for 20 minutes, and the correct ones made
    # meanwhile would be discarded; behind, its own would lose to older ones.
    sim = await simulator(orders=1000, seed=501)
    no_sweep = {"sweep_interval_s": 1e9}
    async with runtime_for(sim) as rt:
        await full_sync(rt, page_size=50, **no_sweep)
    moved = [o.id for o in sim.orders.values() if o.situacao == Situacao.EM_ANDAMENTO][:5]
    for order_id in moved:
        sim.set_status(order_id, Situacao.APROVADA)
    async with runtime_for(sim) as rt:  # the host whose clock is off: client and store
        skewed = lambda: utcnow() + dt.timedelta(minutes=skew_min)  # noqa: E731
        rt.client._clock = rt.store.orders._clock = skewed
        await incremental_sync(rt, page_size=50, **no_sweep)
    assert diff(sim.snapshot(), await mirror(db)) == []
    for order_id in moved:
        sim.set_status(order_id, Situacao.FINALIZADA)
    async with runtime_for(sim) as rt:  # a host on time
        await incremental_sync(rt, page_size=50, **no_sweep)
    assert diff(sim.snapshot(), await mirror(db)) == []
