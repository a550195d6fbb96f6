"""Fairness: a huge account backfilling its history never delays small accounts' cycles
past their interval (cycles are claimed first, backfill months run in at most
``--background-slots`` slots across every worker)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
from pathlib import Path

import pytest

from asyncsync.errors import Requeue
from asyncsync.options import ServeOptions
from asyncsync.runtime.fleet import open_fleet
from asyncsync.seams import PickedWork
from asyncsync.store import open_database
from asyncsync.work import handlers
from asyncsync.work.units import PRIORITY, Kind, Unit
from asyncsync.work.worker import work

from .helpers import common_for, register

INTERVAL_S = 1.5
SLACK_S = 1.5  # a cycle is late when it starts this long after its due time
#: A late cycle was starved when the backfill went on meanwhile: this many months started
#: while it was overdue. Months start only when the queue hands them out (at most one more
#: takes its turn in a slot already held), so a pause of the whole process or of the
#: database, which holds back the months as well, is not counted against fairness.
STARVED_MONTHS = 3
#: How long the worker runs: ~9 cycles of each small account, 96 months to start. The
#: control starves its small accounts within the first few seconds (8-10 s without a
#: cycle, dozens of months starting meanwhile), so 15 s show it as 25 s did.
RUN_S = 15


@pytest.mark.parametrize("fair", [True, False], ids=["fair", "control-without-fairness"])
async def test_a_huge_backfill_leaves_small_accounts_cycles_on_time(
    fair: bool, simulator, database_url, db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``fair`` False (backfill at the cycles' priority, no background limit, and
    its months waiting in their slots for the account's turn) the same run must show late
    cycles: the control that proves the test can fail."""
    if not fair:
        monkeypatch.setitem(PRIORITY, Kind.BACKFILL, PRIORITY[Kind.CYCLE])
        monkeypatch.setattr(handlers, "NO_WAIT", ())
    huge = await simulator(orders=3000, seed=7, start_year=2019, latency_s=0.03, max_limit=25)
    smalls = [await simulator(orders=30, seed=10 + i) for i in range(4)]
    sims = {"huge": huge, **{f"small{i}": s for i, s in enumerate(smalls)}}
    common = common_for(huge, database_url)
    options = ServeOptions(
        interval_s=INTERVAL_S, slots=8, background_slots=2 if fair else 8, heartbeat_s=10,
        integrity_interval_s=0, cycle=dataclasses.replace(ServeOptions().cycle,
                                                          detail_budget=100),
    )  # fmt: skip
    stop = asyncio.Event()
    async with open_fleet(common, options) as fleet:
        await register(fleet.database.registry, sims, monkeypatch)
        today = dt.date.today().replace(day=1)
        months, month = [], dt.date(2019, 1, 1)
        while month <= today:
            months.append(Unit(Kind.BACKFILL, "huge", month).item())
            month = (month + dt.timedelta(days=32)).replace(day=1)
        await fleet.database.queue.enqueue(months)
        stopped: list[dt.datetime] = []

        def stop_now() -> None:
            stopped.append(dt.datetime.now(dt.UTC))
            stop.set()

        asyncio.get_running_loop().call_later(RUN_S, stop_now)
        await work(fleet.database.queue, fleet, options, stop)
    backfills = await db.fetch(
        "SELECT started_at, finished_at FROM sync_runs WHERE account = 'huge' "
        "AND mode = 'backfill' ORDER BY started_at"
    )
    assert len(backfills) >= 5, "the backfill hardly ran"
    # While it ran, before the drain (no cycle starts once the worker stops).
    window = (backfills[0]["started_at"], min(backfills[-1]["finished_at"], *stopped))
    late: list[str] = []
    for key in sims:
        if key == "huge":
            continue
        starts = [r["started_at"] for r in await db.fetch(
            "SELECT started_at FROM sync_runs WHERE account = $1 AND mode = 'sync' "
            "ORDER BY started_at", key)]  # fmt: skip
        inside = [s for s in starts if window[0] < s < window[1]]
        if fair:
            assert len(inside) >= 3, (key, starts, window)
        # While the backfill ran, from its first month to its last: no wait between two
        # cycles (or from the backfill's start to the first cycle, or from the last cycle
        # to its end) longer than an interval and the slack while backfill months went on
        # starting (STARVED_MONTHS of them).
        for before, after in itertools.pairwise([window[0], *inside, window[1]]):
            gap = (after - before).total_seconds()
            if gap <= INTERVAL_S + SLACK_S:
                continue
            overdue = before + dt.timedelta(seconds=INTERVAL_S + SLACK_S)
            batch = after - dt.timedelta(seconds=0.2)  # claimed with the cycle at last
            months_meanwhile = sum(1 for b in backfills if overdue < b["started_at"] < batch)
            line = (f"{key}: {gap:.1f} s without a cycle until {after:%H:%M:%S.%f}, "
                    f"{months_meanwhile} months started while it was overdue")  # fmt: skip
            print(line)
            if months_meanwhile >= STARVED_MONTHS:
                late.append(line)
    overlap = max(
        sum(1 for b in backfills if b["started_at"] <= a["started_at"] < b["finished_at"])
        for a in backfills
    )
    if not fair:
        # The months took every slot (one ran, the others waited for the account's turn)
        # and the small accounts starved.
        assert late, "without its priority and limit, the backfill should starve the cycles"
        return
    assert late == []
    assert overlap <= 2  # the background limit held: never more than two months at once


@pytest.mark.parametrize("slots", [2, 8])
async def test_a_cycle_due_longest_is_claimed_first_when_cycles_outnumber_the_slots(
    slots: int, database_url
) -> None:
    """More cycles due than slots (a first sync of many accounts, workers short of slots):
    the one due longest goes first. The queue claimed by id among equal priorities, and a
    periodic unit keeps its row when it re-arms, so the accounts added first kept
    re-claiming their cycles while one added later, due all along, never ran (seen with
    60 accounts on 3 workers of 8 slots: 17 accounts without a single unit in 4 minutes).
    With 8 slots a claim takes the 4 due longest, then keeps as many as slots are free by
    id: cycles ending one at a time, one slot free, the one due longest has to be kept."""
    async with open_database(database_url, Path("/nonexistent")) as database:
        queue = database.queue
        early = [f"early{n}" for n in range(3 * slots)]
        await queue.enqueue([Unit(Kind.CYCLE, key).item() for key in early])
        await queue.enqueue([Unit(Kind.CYCLE, "late").item()])
        picked: list[str] = []
        stop = asyncio.Event()

        async def cycle(unit: PickedWork) -> None:
            account = Unit.decode(unit.kind, unit.payload).account
            picked.append(account)
            if account == "late":
                stop.set()
                return
            await asyncio.sleep(0.05 * (1 + len(picked) % 3))  # they end one at a time
            raise Requeue(0.05, "due again")  # its next cycle: demand above the slots

        asyncio.get_running_loop().call_later(5, stop.set)
        await queue.work({Kind.CYCLE.value: cycle}, slots=slots, limits={}, heartbeat_s=10,
                         ticks={}, stop=stop)  # fmt: skip
    assert "late" in picked, f"{len(picked)} cycles of the early accounts ran; late's none"
    assert picked.index("late") <= 2 * len(early), picked
