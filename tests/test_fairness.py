"""Fairness: a huge account backfilling its history never delays small accounts' cycles
past their interval (cycles are claimed first, backfill months run in at most
``--background-slots`` slots across every worker)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools

import pytest

from asyncsync.accounts import AccountConfig
from asyncsync.options import ServeOptions
from asyncsync.runtime.fleet import open_fleet
from asyncsync.work.units import Kind, Unit
from asyncsync.work.worker import work

from .helpers import common_for

INTERVAL_S = 1.5
SLACK_S = 1.5  # a cycle is late when it starts this long after its due time


async def test_a_huge_backfill_leaves_small_accounts_cycles_on_time(
    simulator, database_url, db, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = await simulator(orders=3000, seed=7, start_year=2019, latency_s=0.03, max_limit=25)
    smalls = [await simulator(orders=30, seed=10 + i) for i in range(4)]
    sims = {"huge": huge, **{f"small{i}": s for i, s in enumerate(smalls)}}
    common = common_for(huge, database_url)
    options = ServeOptions(
        interval_s=INTERVAL_S, slots=8, background_slots=2, heartbeat_s=10,
        integrity_interval_s=0, cycle=dataclasses.replace(ServeOptions().cycle,
                                                          detail_budget=100),
    )  # fmt: skip
    stop = asyncio.Event()
    async with open_fleet(common, options) as fleet:
        for key, sim in sims.items():
            monkeypatch.setenv(f"REFRESH_{key}", sim.valid_refresh_token() or "")
            await fleet.database.registry.put(AccountConfig(
                key=key, api_base_url=sim.base_url, token_url=sim.token_url,
                client_id=sim.config.client_id, client_secret=sim.config.client_secret,
                refresh_token_env=f"REFRESH_{key}",
            ))  # fmt: skip
        today = dt.date.today().replace(day=1)
        months, month = [], dt.date(2019, 1, 1)
        while month <= today:
            months.append(Unit(Kind.BACKFILL, "huge", month).item())
            month = (month + dt.timedelta(days=32)).replace(day=1)
        await fleet.database.queue.enqueue(months)
        asyncio.get_running_loop().call_later(25, stop.set)
        await work(fleet.database.queue, fleet, options, stop)
    backfills = await db.fetch(
        "SELECT started_at, finished_at FROM sync_runs WHERE account = 'huge' "
        "AND mode = 'backfill' ORDER BY started_at"
    )
    assert len(backfills) >= 5, "the backfill hardly ran"
    window = (backfills[0]["started_at"], backfills[-1]["finished_at"])
    late: list[str] = []
    for key in sims:
        if key == "huge":
            continue
        starts = [r["started_at"] for r in await db.fetch(
            "SELECT started_at FROM sync_runs WHERE account = $1 AND mode = 'sync' "
            "ORDER BY started_at", key)]  # fmt: skip
        inside = [s for s in starts if window[0] <= s <= window[1]]
        assert len(inside) >= 3, (key, starts, window)
        for before, after in itertools.pairwise(starts):
            gap = (after - before).total_seconds()
            if window[0] <= after <= window[1] and gap > INTERVAL_S + SLACK_S:
                late.append(f"{key}: {gap:.1f} s between cycles at {after:%H:%M:%S}")
    assert late == []
    # The background limit held: never more than two backfill months at once.
    overlap = max(
        sum(1 for b in backfills if b["started_at"] <= a["started_at"] < b["finished_at"])
        for a in backfills
    )
    assert overlap <= 2
