"""The service as it runs in production: cycles, /metrics, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import time

import aiohttp
import asyncpg
import pytest
from prometheus_client import REGISTRY

from asyncsync import metrics
from asyncsync.modes.serve import serve_loop
from asyncsync.options import ServeOptions
from asyncsync.seams import QueueCount
from asyncsync.status import Situacao
from asyncsync.work.health import observe_queue

from .helpers import cycle
from .mirror import diff, mirror


async def test_serve_cycles_and_exposes_metrics(simulator, runtime_for, db, caplog) -> None:
    caplog.set_level(logging.INFO, logger="asyncsync")
    sim = await simulator(orders=400, seed=4)
    stop = asyncio.Event()
    cycles: list[int] = []

    async def after_cycle(rt, reports) -> None:
        cycles.append(len(cycles) + 1)
        if len(cycles) == 1:  # between cycles an order moves; the next cycle sees it
            moved = next(o.id for o in sim.orders.values() if o.situacao == Situacao.ORCADA)
            sim.set_status(moved, Situacao.APROVADA)
        if len(cycles) == 2:
            stop.set()

    labels = {"account": "default", "outcome": "inserted"}
    inserted_before = metrics.value("asyncsync_orders_synced_total", labels)
    started = time.time()
    async with runtime_for(sim) as rt, metrics.metrics_server("127.0.0.1", 0) as port:
        options = ServeOptions(interval_s=0.05, cycle=cycle(detail_budget=10_000))
        task = asyncio.create_task(serve_loop(rt, options, stop, after_cycle=after_cycle))
        assert await asyncio.wait_for(task, timeout=60) == 0
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            text = await resp.text()
    assert cycles == [1, 2]
    # Its last line says it stopped once drained (it ended at its last unit's, as if it died).
    said = [r.getMessage() for r in caplog.records if r.name.startswith("asyncsync")]
    assert said[-1].startswith("worker ") and " stopped: its units in flight" in said[-1], said
    assert diff(sim.snapshot(), await mirror(db)) == []
    for name in (
        "asyncsync_tiny_requests_total",
        "asyncsync_orders_synced_total",
        "asyncsync_status_changes_total",
        "asyncsync_token_refreshes_total",
        "asyncsync_last_success_timestamp_seconds",
    ):
        assert name in text
    # The registry is process-wide: compare with what it held before this test.
    inserted = metrics.value("asyncsync_orders_synced_total", labels)
    assert inserted - inserted_before == 400
    assert (
        'asyncsync_orders_synced_total{account="default",outcome="inserted"} ' + (f"{inserted}")
        in text
    )
    last = {"account": "default", "mode": "sync"}
    assert metrics.value("asyncsync_last_success_timestamp_seconds", last) >= started
    assert "_created" not in text


async def test_sigterm_drains_and_exits(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncsync", "--mode", "sync", "--simulator", "3000",
        "--rate-limit", "1200", "--database-url", database_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    # Wait for the listing to be merged; details then go at 20 requests/s.
    pool = await asyncpg.connect(database_url)
    try:
        for _ in range(300):
            if await pool.fetchval("SELECT count(*) FROM ordens_servico") == 3000:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        proc.send_signal(signal.SIGTERM)
        # Requests in flight finish, nothing new starts: well under a 200-detail chunk (10 s).
        out, err = await asyncio.wait_for(proc.communicate(), timeout=6)
        fetched = await pool.fetchval("SELECT count(*) FROM ordens_servico WHERE NOT detail_stale")
    finally:
        await pool.close()
    assert 0 < fetched < 3000  # the details that arrived were merged before exiting
    assert proc.returncode == 130, err.decode()[-2000:]
    # Off a terminal the logs are JSON, and so is the report: one line, no table.
    report = json.loads(out)
    assert report["outcome"] == "interrupted" and report["counts"]["orders_listed"] == 3000
    logged = [json.loads(line) for line in err.decode().splitlines()]
    assert all({"ts", "level", "logger", "msg"} <= entry.keys() for entry in logged)
    progress = [e for e in logged if e["msg"] == "sync progress"]
    assert progress and progress[-1]["listing"]["done"] == 3000  # progress in the logs' shape
    finished = [e for e in logged if e.get("outcome")]
    assert finished[-1]["msg"] == "sync: full sync — interrupted: resumes next run — " + (
        f"{report['duration_s']:,.1f} s"
    )
    assert "Traceback" not in err.decode()


@pytest.mark.parametrize("mode", ["sync", "serve"])
async def test_a_drain_that_hangs_on_tiny_is_cut_at_the_drain_timeout(
    mode, simulator, database_url
) -> None:
    # Tiny answers nothing for minutes: a drain that waited for every request in flight
    # (and their retries) outlived any orchestrator's grace period and was SIGKILLed.
    sim = await simulator(orders=300, seed=9)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
    env.update(TINY_CLIENT_ID=sim.config.client_id, TINY_CLIENT_SECRET=sim.config.client_secret,
               TINY_REFRESH_TOKEN=sim.valid_refresh_token() or "")  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncsync", mode, "--database-url", database_url,
        "--api-base-url", sim.base_url, "--token-url", sim.token_url, "--drain-timeout", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    listing = asyncio.Event()
    sim.on_list_page = lambda *_: listing.set()
    await asyncio.wait_for(listing.wait(), 30)  # the first requests are out
    sim.config = dataclasses.replace(sim.config, latency_s=9.0)  # and now Tiny hangs
    await asyncio.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert time.monotonic() - started < 6, err.decode()[-2000:]  # not the 9 s of a request
    assert proc.returncode == 130, err.decode()[-2000:]
    assert "still draining after 2 s: stopping now" in err.decode()
    assert "Traceback" not in err.decode()


async def test_serve_retries_failed_imports_on_its_own(simulator, runtime_for, db) -> None:
    sim = await simulator(orders=200, seed=8)
    broken, down = sorted(sim.orders)[:2]
    sim.fail_detail[broken] = "malformed"  # the record's fault: import_failures, then retries
    sim.fail_detail[down] = "500"  # Tiny's fault: left in the backlog, asked next cycle
    stop = asyncio.Event()
    rounds: list[list[str]] = []

    async def after_cycle(rt, reports) -> None:
        rounds.append([r.mode for r in reports])
        if len(rounds) == 1:
            # The API heals and the failure's backoff (30 s) runs out.
            failing = await db.fetch("SELECT id_ordem FROM import_failures WHERE NOT resolvido")
            assert [r["id_ordem"] for r in failing] == [broken]
            assert reports[0].count("details_unavailable") == 1
            sim.fail_detail.clear()
            await db.execute("UPDATE import_failures SET ultima_tentativa = ultima_tentativa - "
                             "interval '1 minute'")  # fmt: skip
        else:
            stop.set()

    async with runtime_for(sim, max_retries=2) as rt:
        options = ServeOptions(interval_s=0.05, cycle=cycle(detail_budget=10_000))
        await serve_loop(rt, options, stop, after_cycle=after_cycle)
    assert rounds == [["sync", "retry"], ["sync", "retry"]]
    row = await db.fetchrow("SELECT resolvido, tentativas FROM import_failures")
    assert row["resolvido"] is True
    assert diff(sim.snapshot(), await mirror(db)) == []
    for order_id in (broken, down):
        detail = "SELECT detalhe IS NOT NULL FROM ordens_servico WHERE id=$1"
        assert await db.fetchval(detail, order_id)


async def test_serve_retries_a_failure_when_it_falls_due_not_at_the_next_sync(
    simulator, runtime_for, db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Section 6's schedule (30 s, 2 min, 8 min, 32 min) was kept only at the next cycle:
    every 15 minutes by default, so ~90 minutes to manual review, not ~43. A failure that
    falls due before the next sync wakes the unit, which retries only."""
    from asyncsync.seams import RetryPolicy
    from asyncsync.work import cycle as cycle_unit

    monkeypatch.setattr(cycle_unit, "RETRY_POLICY", RetryPolicy(base_s=1.0, factor=2.0))
    sim = await simulator(orders=50, seed=8)
    broken = sorted(sim.orders)[0]
    sim.fail_detail[broken] = "malformed"
    stop = asyncio.Event()
    rounds: list[tuple[float, list[str]]] = []

    async def after_cycle(rt, reports) -> None:
        rounds.append((time.monotonic(), [r.mode for r in reports]))
        if len(rounds) == 1:
            sim.fail_detail.clear()  # Tiny serves it now; due again in 1 s
        else:
            stop.set()

    async with runtime_for(sim, max_retries=2) as rt:
        options = ServeOptions(interval_s=3600, cycle=cycle(detail_budget=10_000))
        await asyncio.wait_for(serve_loop(rt, options, stop, after_cycle=after_cycle), 30)
    assert [modes for _, modes in rounds] == [["sync", "retry"], ["retry"]]
    assert rounds[1][0] - rounds[0][0] < 10  # at its due time, not an hour later
    assert await db.fetchval("SELECT resolvido FROM import_failures") is True
    syncs = await db.fetchval("SELECT count(*) FROM sync_runs WHERE mode = 'sync'")
    assert syncs == 1  # the retry's wake listed nothing
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_a_workers_first_cycle_budgets_its_details_by_the_quota_tiny_announced(
    simulator, runtime_for
) -> None:
    """The default budget is about 70% of an interval's quota: reckoned before the first
    request, the quota was the one assumed while none is announced (120 a minute), so a
    fresh worker's first cycle of a 60,000-a-minute account fetched 500 of 1,200 details
    and left the rest for the next cycle, an interval later (on a 30-a-minute plan it
    would ask 2.5 times what the interval holds)."""
    sim = await simulator(orders=1200, seed=5)  # announces 60,000 requests a minute
    stop = asyncio.Event()
    fetched: list[int] = []

    async def after_cycle(rt, reports) -> None:
        fetched.append(reports[0].count("details_fetched"))
        stop.set()

    async with runtime_for(sim) as rt:
        options = ServeOptions(interval_s=60.0, cycle=cycle())  # no --detail-budget
        await asyncio.wait_for(serve_loop(rt, options, stop, after_cycle=after_cycle), 60)
    assert fetched == [1200]  # 60,000 × 70% of a minute: every one; it was 500


def test_the_queue_gauges_say_each_kind_in_each_state_and_forget_an_emptied_one() -> None:
    observe_queue([QueueCount("asyncsync.cycle", "queued", 3, 1900.0),
                   QueueCount("asyncsync.backfill", "deferred", 12, 60.0)])  # fmt: skip
    units = {"kind": "cycle", "state": "queued"}
    assert metrics.value("asyncsync_queue_units", units) == 3
    assert metrics.value("asyncsync_queue_oldest_seconds", units) == 1900.0
    observe_queue([])  # picked since: not its last count for ever
    assert metrics.value("asyncsync_queue_units", units) == 0
    assert metrics.value("asyncsync_queue_oldest_seconds", units) == 0
    exported = REGISTRY.get_sample_value("asyncsync_queue_units",
                                         {"kind": "integrity", "state": "failed"})  # fmt: skip
    assert exported == 0  # every kind in every state, from the first read
