"""Every worker's per-account gauges say what the database says, not what this worker
saw when it last ran the account: an account's units go to whichever worker picks them,
so a worker that ran an account's cycle an hour ago (or met its refused token) and has
not held it since must not keep exporting that hour-old success (AsyncsyncSyncStale
fires on it) or that refusal (AsyncsyncReauthorizationRequired, critical, fires forever)
once another worker synced it; a removed account's series go."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest

from asyncsync import metrics
from asyncsync.accounts import AccountConfig
from asyncsync.clock import utcnow
from asyncsync.errors import ReauthorizationRequired
from asyncsync.modes import execute
from asyncsync.options import ServeOptions, SyncOptions
from asyncsync.readiness import Readiness
from asyncsync.report import Outcome, RunReport, failed_report
from asyncsync.runtime.fleet import Fleet, open_fleet
from asyncsync.seams import TokenSet
from asyncsync.work.cycle import run_cycle
from asyncsync.work.health import check_readiness, refresh
from asyncsync.work.worker import work

from .helpers import common_for, cycle, register


def gauge(name: str, **labels: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


async def test_a_workers_gauges_follow_what_other_workers_did(simulator, database_url) -> None:
    sim = await simulator(orders=5)
    options = ServeOptions(interval_s=900, integrity_interval_s=0)
    async with open_fleet(common_for(sim, database_url), options) as fleet:
        registry = fleet.database.registry
        for key in ("acme", "gone"):
            await registry.put(AccountConfig(key=key, client_id="c", client_secret="s"))
        # What this worker saw when it last ran them, an hour ago: acme's refresh token
        # refused, gone synced.
        an_hour_ago = (utcnow() - dt.timedelta(hours=1)).timestamp()
        for key in ("acme", "gone"):
            metrics.LAST_SUCCESS.labels(key, "sync").set(an_hour_ago)
        metrics.REAUTHORIZATION_REQUIRED.labels("acme").set(1)
        refused = failed_report("sync", "acme", utcnow() - dt.timedelta(hours=1),
                                ReauthorizationRequired("invalid_grant"))  # fmt: skip
        await fleet.database.account("acme").runs.record(refused, invoked_as="serve")
        # Since then, a person authorized acme again and another worker synced it; gone
        # was removed.
        now = utcnow()
        ok = RunReport(mode="sync", account="acme", started_at=now - dt.timedelta(seconds=3),
                       finished_at=now, outcome=Outcome.OK, title="incremental cycle")  # fmt: skip
        await fleet.database.account("acme").runs.record(ok, invoked_as="serve")
        await registry.remove("gone")

        await refresh(fleet, options.interval_s, None)  # this worker's periodic refresh

    assert gauge("asyncsync_last_success_timestamp_seconds", account="acme", mode="sync") == (
        now.timestamp()
    )
    assert gauge("asyncsync_reauthorization_required", account="acme") == 0
    assert gauge("asyncsync_last_success_timestamp_seconds", account="gone", mode="sync") is None


async def test_a_slow_gauge_refresh_does_not_cost_the_worker_its_leases(
    simulator, database_url, db, monkeypatch
) -> None:
    """The gauges of every enabled account are read by every worker (about 55 ms an
    account of 100,000 orders: 11 s for 200) while the lease session ends once silent
    for the heartbeat timeout: the worker's pings of that session must not wait for the
    refresh, or a live worker loses every account it holds at each refresh."""
    sim = await simulator(orders=5)
    # Silent 10 s (heartbeat 3 s, at least two pings): a refresh of 8 s, as of ~150 big
    # accounts (or of 200 on a busy database against the default 30 s).
    options = ServeOptions(interval_s=900, integrity_interval_s=0, heartbeat_s=3, drain_s=5)
    real = Fleet.statuses

    async def slow(self, now):
        await asyncio.sleep(8)
        return await real(self, now)

    async with open_fleet(common_for(sim, database_url), options) as fleet:
        await register(fleet.database.registry, {"acme": sim}, monkeypatch)
        monkeypatch.setattr(Fleet, "statuses", slow)
        stop = asyncio.Event()
        async with fleet.lease("acme") as leased:  # a unit of acme, running for a while
            worker = asyncio.create_task(work(fleet.database.queue, fleet, options, stop))
            await asyncio.sleep(16)
            lost = leased.lost.is_set()
            holders = await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            stop.set()
        await asyncio.wait_for(worker, 30)
    assert not lost, "a live worker lost its lease while its gauges were being read"
    assert holders == 1


async def test_an_account_run_elsewhere_shows_its_last_census_without_counting(
    simulator, database_url, db
) -> None:
    """Each read of an account's gauges counted its orders (~60 ms at 100,000; 12 s for
    200 such accounts, on every worker, every couple of minutes). An account this worker
    does not hold shows its orders as its last sync counted them, and its mirror is not
    read at all (here: locked); one it holds is counted, for a long first sync's progress."""
    sim = await simulator(orders=40, seed=5)
    common = common_for(sim, database_url, account="acme")
    assert await execute("sync", common, SyncOptions(cycle=cycle()), asyncio.Event()) == 0
    counted = {
        r["situacao"]: r["n"]
        for r in await db.fetch("SELECT situacao, count(*) AS n FROM ordens_servico GROUP BY 1")
    }
    options = ServeOptions(interval_s=900, integrity_interval_s=0)
    async with open_fleet(common, options) as fleet:
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE ordens_servico IN ACCESS EXCLUSIVE MODE")
            await asyncio.wait_for(refresh(fleet, options.interval_s, None), 10)
        shown = {c: gauge("asyncsync_orders", account="acme", status=str(c)) for c in range(8)}
        assert shown == {code: counted.get(code, 0) for code in range(8)}

        gone = await db.fetchval(
            "WITH d AS (DELETE FROM ordens_servico WHERE situacao = 3 RETURNING 1) "
            "SELECT count(*) FROM d"
        )
        assert gone > 0
        async with fleet.lease("acme"):  # a unit of acme runs here: counted as it goes
            await refresh(fleet, options.interval_s, None)
        assert gauge("asyncsync_orders", account="acme", status="3") == 0


async def test_a_single_accounts_readiness_and_gauges_follow_its_first_sync(
    simulator, database_url
) -> None:
    """The status a worker read of an account it did not hold was kept two minutes: read
    at start, before the first sync, it went on saying "no full sync or cycle has
    completed yet" (``/readyz`` 503) and zero orders at every 30-s refresh for two
    minutes after that sync had ended (and said otherwise)."""
    sim = await simulator(orders=40, seed=6)
    options = ServeOptions(interval_s=900, integrity_interval_s=0)
    readiness = Readiness()
    async with open_fleet(common_for(sim, database_url), options) as fleet:
        await refresh(fleet, options.interval_s, readiness)  # at start: never synced
        assert "freshness" in readiness.reasons()
        async with fleet.lease("default") as leased:  # the first sync, a unit of this worker
            done = await run_cycle(leased.runtime, options, asyncio.Event(), facts={},
                                   readiness=readiness)  # fmt: skip
            await check_readiness(leased.runtime, options.interval_s, readiness)
        assert [r.outcome for r in done.reports] == [Outcome.OK, Outcome.OK]
        assert readiness.reasons() == {}
        await refresh(fleet, options.interval_s, readiness)  # the next 30-s refresh
    assert readiness.reasons() == {}
    shown = sum(gauge("asyncsync_orders", account="default", status=str(c)) or 0 for c in range(8))
    assert shown == 40


async def test_a_worker_that_starts_serving_the_accounts_table_judges_no_account(
    simulator, database_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single-account worker's readiness says its account's freshness and token; once
    accounts are added to the table it judges none (each may be another worker's), and
    what it had said stayed: ``/readyz`` 503 for good, 'no full sync or cycle has
    completed yet'."""
    sim = await simulator(orders=20, seed=6)
    options = ServeOptions(interval_s=900, integrity_interval_s=0)
    readiness = Readiness()
    async with open_fleet(common_for(sim, database_url), options) as fleet:
        await refresh(fleet, options.interval_s, readiness)  # at start: never synced
        assert "freshness" in readiness.reasons()
        readiness.set("authorization", "ReauthorizationRequired: the single account's")
        await register(fleet.database.registry, {"acme": sim}, monkeypatch)
        await refresh(fleet, options.interval_s, readiness)
    assert readiness.reasons() == {}


async def test_a_refusal_recorded_by_a_host_behind_the_database_still_waits_for_a_person(
    simulator, database_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether tokens were stored after the refusal is judged by the database's clock. By
    the refused run's own times, a worker an hour behind the database refused "an hour
    ago", before the refresh it had made minutes earlier: that read as a person's
    authorization, and the critical alert never fired for an account nothing synced."""
    sim = await simulator(orders=5)
    options = ServeOptions(interval_s=900, integrity_interval_s=0)
    readiness = Readiness()
    monkeypatch.setattr("asyncsync.runtime.fleet.OTHERS_EVERY_S", 0.0)  # read at each refresh
    async with open_fleet(common_for(sim, database_url), options) as fleet:
        store = fleet.database.account("default")
        await store.tokens.save(TokenSet("r", "a", utcnow() + dt.timedelta(hours=4)))
        behind = utcnow() - dt.timedelta(hours=1)  # the worker's clock
        refused = failed_report("sync", "default", behind, ReauthorizationRequired("refused"))
        refused = dataclasses.replace(refused, finished_at=behind + dt.timedelta(seconds=2))
        await store.runs.record(refused, invoked_as="serve")
        await refresh(fleet, options.interval_s, readiness)
        assert gauge("asyncsync_reauthorization_required", account="default") == 1
        assert "authorization" in readiness.reasons()
        await store.tokens.save(TokenSet("r2", "a2", utcnow() + dt.timedelta(hours=4)))
        await refresh(fleet, options.interval_s, readiness)  # a person authorized it again
    assert gauge("asyncsync_reauthorization_required", account="default") == 0
    assert "authorization" not in readiness.reasons()


async def test_a_failed_cycles_line_names_its_account_as_a_field(
    simulator, database_url, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker of many accounts logged "the cycle of account acme failed ..." with the
    account in its prose only: a log query on the account field missed it (sweep H)."""
    sim = await simulator(orders=10, seed=2)
    sim.set_outage("503")
    options = ServeOptions(interval_s=900, integrity_interval_s=0)
    common = common_for(sim, database_url, max_retries=1)
    async with open_fleet(common, options) as fleet, fleet.lease("default") as leased:
        with caplog.at_level("ERROR", logger="asyncsync.work.cycle"):
            done = await run_cycle(leased.runtime, options, asyncio.Event(), facts={})
    assert [r.outcome for r in done.reports] == [Outcome.FAILED]
    [line] = [r for r in caplog.records if "the cycle of account" in r.getMessage()]
    assert line.fields["account"] == "default"  # type: ignore[attr-defined]
