"""Run history: every run of every mode leaves one ``sync_runs`` row, whatever its outcome,
recorded in one place (``modes.execute``) for one-shot runs and per cycle in serve."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from typing import Any

import orjson
import pytest

from asyncsync import metrics
from asyncsync.errors import DatabaseUnavailable, ReauthorizationRequired, TinyUnavailable
from asyncsync.modes import execute, failed_report, finish
from asyncsync.modes.serve import serve_loop
from asyncsync.options import (
    BackfillOptions,
    IntegrityOptions,
    RetryOptions,
    RunOptions,
    ServeOptions,
    SyncOptions,
)

from .helpers import common_for, cycle


async def runs(db, account: str = "default") -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM sync_runs WHERE account = $1 ORDER BY id", account)
    return [dict(r) for r in rows]


async def test_each_one_shot_mode_leaves_one_row(simulator, database_url, db) -> None:
    sim = await simulator(orders=300, seed=21)
    common = common_for(sim, database_url)
    today = dt.date.today()
    stop = asyncio.Event()
    assert await execute("sync", common, SyncOptions(cycle=cycle()), stop) == 0
    assert await execute("sync", common, SyncOptions(cycle=cycle()), stop) == 0
    assert await execute("integrity", common, IntegrityOptions(deep=True), stop) == 0
    assert await execute("retry", common, RetryOptions(), stop) == 0
    since = (today.replace(day=1) - dt.timedelta(days=40)).replace(day=1)
    assert await execute("backfill", common, BackfillOptions(date_from=since), stop) == 0

    rows = await runs(db)
    assert [(r["mode"], r["invoked_as"], r["title"], r["outcome"]) for r in rows] == [
        ("sync", "sync", "full sync", "ok"),
        ("sync", "sync", "incremental cycle", "ok"),
        ("integrity", "integrity", "integrity check (full comparison, deep) — consistent", "ok"),
        ("retry", "retry", "retry of failed imports", "ok"),
        ("backfill", "backfill", f"backfill {since:%Y-%m}..{today:%Y-%m}", "ok"),
    ]
    first = rows[0]
    assert first["requests_total"] == 300 + orjson.loads(first["requests"])["list"]
    assert orjson.loads(first["requests"])["detail"] == 300
    assert orjson.loads(first["counts"])["inserted"] == 300
    assert first["quota_per_minute"] == sim.config.rate_limit_per_minute
    assert first["started_at"] <= first["finished_at"] and first["errors"] == []
    report = orjson.loads(first["report"])  # the whole run report, as --json writes it
    assert report["by_status"]["3"]["mirror"] == report["by_status"]["3"]["api"]
    assert orjson.loads(rows[2]["report"])["facts"]["consistent"] is True


async def test_an_interrupted_run_is_recorded_as_interrupted(simulator, database_url, db) -> None:
    sim = await simulator(orders=100, seed=22)
    stop = asyncio.Event()
    stop.set()  # SIGTERM before anything was listed
    code = await execute("sync", common_for(sim, database_url), SyncOptions(), stop)
    assert code == 130
    [row] = await runs(db)
    assert (row["mode"], row["outcome"]) == ("sync", "interrupted")


async def test_a_failed_run_leaves_a_failed_row_with_its_error(simulator, database_url, db) -> None:
    sim = await simulator(orders=600, seed=23, max_limit=50)
    pages = 0

    def down_after_three(s: object, params: object) -> None:
        nonlocal pages
        pages += 1
        if pages == 3:
            sim.set_outage("503")  # the third page answered, nothing after

    sim.on_list_page = down_after_three
    common = common_for(sim, database_url, max_retries=1)
    failed = metrics.value(
        "asyncsync_runs_total", {"account": "default", "mode": "sync", "outcome": "failed"}
    )
    with pytest.raises(TinyUnavailable):
        await execute("sync", common, SyncOptions(), asyncio.Event())
    [row] = await runs(db)
    assert (row["mode"], row["outcome"]) == ("sync", "failed")
    assert row["errors"][0].startswith("TinyUnavailable: ")
    # The requests it sent before giving up are in its row (a one-shot run's client is
    # closed by the time its error reaches the command: they were once recorded as 0).
    assert row["requests_total"] == sim.stats.requests_total >= 3
    labels = {"account": "default", "mode": "sync", "outcome": "failed"}
    assert metrics.value("asyncsync_runs_total", labels) == failed + 1


@pytest.mark.parametrize("mode", ["backfill", "integrity", "retry"])
async def test_every_mode_records_its_interrupted_and_failed_runs(
    mode: str, simulator, database_url, db
) -> None:
    sim = await simulator(orders=300, seed=26)
    for order_id in sorted(sim.orders)[:3]:
        sim.fail_detail[order_id] = "malformed"  # failures for retry to work on
    common = common_for(sim, database_url, max_retries=1, breaker_failures=2)
    assert await execute("sync", common, SyncOptions(cycle=cycle()), asyncio.Event()) == 0
    await db.execute("UPDATE import_failures SET ultima_tentativa = now() - interval '1 day'")
    since = (dt.date.today().replace(day=1) - dt.timedelta(days=70)).replace(day=1)
    options = {
        "backfill": BackfillOptions(date_from=since),
        "integrity": IntegrityOptions(deep=True),
        "retry": RetryOptions(),
    }[mode]
    # SIGTERM once the run has asked Tiny for something.
    stop = asyncio.Event()
    sim.on_list_page = lambda s, p: stop.set()
    if mode == "retry":  # it asks only for details
        sim.fail_detail.clear()
        loop = asyncio.get_running_loop()
        loop.call_soon(stop.set)
    assert await execute(mode, common, options, stop) == 130
    sim.on_list_page = None
    sim.set_outage("503")
    with pytest.raises(TinyUnavailable):
        await execute(mode, common, options, asyncio.Event())
    rows = await runs(db)
    assert [(r["mode"], r["outcome"]) for r in rows] == [
        ("sync", "ok"), (mode, "interrupted"), (mode, "failed"),
    ]  # fmt: skip
    assert rows[2]["errors"][0].startswith("TinyOutage: Tiny is unavailable"), rows[2]["errors"]
    assert rows[2]["requests_total"] > 0  # the tries the outage refused
    assert rows[1]["errors"] == [] and rows[1]["finished_at"] >= rows[1]["started_at"]


async def test_reauthorization_is_recorded_and_raised(simulator, database_url, db) -> None:
    sim = await simulator(orders=50, seed=24)
    common = common_for(sim, database_url, account="reauth")
    assert await execute("sync", common, SyncOptions(), asyncio.Event()) == 0
    sim.revoke_refresh_tokens()
    sim.expire_access_tokens()
    await db.execute("UPDATE tiny_tokens SET access_expires_at = now() - interval '1 hour'")
    with pytest.raises(ReauthorizationRequired):
        await execute("integrity", common, IntegrityOptions(), asyncio.Event())
    rows = await runs(db, "reauth")
    assert [(r["mode"], r["outcome"]) for r in rows] == [("sync", "ok"), ("integrity", "failed")]
    assert "ReauthorizationRequired" in rows[1]["errors"][0]
    assert metrics.value("asyncsync_reauthorization_required", {"account": "reauth"}) == 1


async def test_an_unreachable_database_fails_in_one_sentence(simulator, caplog) -> None:
    # Nothing can be recorded where the database is what failed: no futile second try,
    # no extra line; the error itself says it (exit 6 at the command line).
    sim = await simulator(orders=10)
    common = common_for(sim, "postgresql://nobody@127.0.0.1:1/nothing")
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(DatabaseUnavailable, match="cannot connect"),
    ):
        await execute("sync", common, SyncOptions(), asyncio.Event())
    assert not any("could not be recorded" in r.getMessage() for r in caplog.records)


async def test_a_run_not_recorded_leaves_the_textfile_as_it_was(
    simulator, tmp_path, caplog
) -> None:
    # The database gone by the time a finished (or Tiny-failed) run is recorded: its
    # gauges cannot be read, so the file keeps what it held (every mode's last success)
    # rather than being rewritten without them.
    path = tmp_path / "asyncsync.prom"
    path.write_text('asyncsync_last_success_timestamp_seconds{mode="integrity"} 1.7e9\n')
    sim = await simulator(orders=1)
    common = common_for(sim, "postgresql://nobody@127.0.0.1:1/nothing", account="gone")
    common = dataclasses.replace(common, run=RunOptions(metrics_textfile=path))
    report = failed_report("sync", "gone", dt.datetime.now(dt.UTC), TinyUnavailable("down"))
    with caplog.at_level(logging.WARNING):
        await finish(report, common, invoked_as="sync")
    assert path.read_text() == 'asyncsync_last_success_timestamp_seconds{mode="integrity"} 1.7e9\n'
    assert any("left as it was" in r.getMessage() for r in caplog.records)


async def test_serve_records_every_cycle(simulator, runtime_for, db) -> None:
    sim = await simulator(orders=200, seed=25)
    stop = asyncio.Event()

    async def after_cycle(rt, reports) -> None:
        if len(await runs(db)) >= 4:
            stop.set()

    async with runtime_for(sim) as rt:
        options = ServeOptions(interval_s=0.05, cycle=cycle())
        await serve_loop(rt, options, stop, after_cycle=after_cycle)
        sim.set_outage("503")  # a cycle that fails is recorded too
        await serve_loop(rt, options, asyncio.Event(), max_cycles=1)
    rows = await runs(db)
    assert [(r["mode"], r["invoked_as"], r["outcome"]) for r in rows] == [
        ("sync", "serve", "ok"),
        ("retry", "serve", "ok"),
        ("sync", "serve", "ok"),
        ("retry", "serve", "ok"),
        ("sync", "serve", "failed"),
    ]
    assert [r["title"] for r in rows[::2]][:2] == ["full sync", "incremental cycle"]
    assert rows[-1]["errors"][0].startswith("Tiny")


async def test_the_textfile_holds_the_runs_metrics_only(simulator, database_url, tmp_path) -> None:
    sim = await simulator(orders=80, seed=26)
    path = tmp_path / "textfile" / "asyncsync-sync.prom"
    common = common_for(sim, database_url, account="textfile")
    common = dataclasses.replace(common, run=RunOptions(metrics_textfile=path))
    assert await execute("sync", common, SyncOptions(), asyncio.Event()) == 0
    text = path.read_text()
    assert 'asyncsync_runs_total{account="textfile",mode="sync",outcome="ok"}' in text
    assert 'asyncsync_orders{account="textfile",status="3"}' in text
    assert "python_gc" not in text and "process_" not in text
    # Readiness is serve's: a one-shot run's 0 (no serve in it) fired AsyncsyncNotReady
    # for as long as node-exporter served the file.
    assert "asyncsync_ready" not in text
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


async def test_a_cycle_cut_by_sigterm_is_recorded_as_interrupted(
    simulator, runtime_for, db
) -> None:
    sim = await simulator(orders=600, seed=27, max_limit=50)
    stop = asyncio.Event()
    sim.on_list_page = lambda s, p: stop.set()  # SIGTERM while the first cycle lists
    async with runtime_for(sim) as rt:
        options = ServeOptions(interval_s=0.05, cycle=cycle())
        assert await serve_loop(rt, options, stop) == 0
    rows = await runs(db)
    assert [(r["mode"], r["invoked_as"], r["outcome"]) for r in rows] == [
        ("sync", "serve", "interrupted"),
    ]
    assert orjson.loads(rows[0]["counts"])["inserted"] < 600  # it really was cut short


async def test_a_cycle_that_429s_ended_counts_them_in_its_row(simulator, runtime_for, db) -> None:
    """A failed cycle's row kept no figure of what it sent: ended by 429s (another app of
    the account spending the quota), `asyncsync status` showed it failed "still rate
    limited" with 0 requests and 0 429s."""
    sim = await simulator(orders=100, seed=28, rate_window_s=0.5)
    options = ServeOptions(interval_s=0.05, cycle=cycle())
    async with runtime_for(sim, max_retries=2) as rt:
        await serve_loop(rt, options, asyncio.Event(), max_cycles=1)
        sim.set_rate_limit(0)  # from the next window on, every request is refused: 429
        await asyncio.sleep(0.6)
        await serve_loop(rt, options, asyncio.Event(), max_cycles=1)
    failed = (await runs(db))[-1]
    assert (failed["mode"], failed["outcome"]) == ("sync", "failed")
    assert failed["errors"][0].startswith("TinyRateLimited")
    assert failed["rate_limited"] == sim.stats.rate_limited > 0
    assert failed["requests_total"] >= failed["rate_limited"]


def test_a_run_stopped_before_anything_ran_says_so_in_its_report() -> None:
    """Its JSON report's error read "Stopped: " (sweep I); an error with no message of its
    own is its kind alone, not "Kind: "."""
    from asyncsync.tasks import Stopped

    stopped = failed_report("sync", "default", dt.datetime.now(dt.UTC), Stopped())
    assert stopped.errors == ["interrupted before the database answered: nothing ran"]
    assert stopped.outcome == "interrupted"
    bare = failed_report("sync", "default", dt.datetime.now(dt.UTC), TimeoutError())
    assert bare.errors == ["TimeoutError"]
