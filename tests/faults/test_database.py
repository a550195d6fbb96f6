"""The database is a dependency that comes and goes: stopped and restarted under serve,
a backend terminated mid-merge, frozen with SIGSTOP, down under a one-shot run."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import pytest

from asyncsync.errors import DatabaseError, DatabaseUnavailable, LockBusy
from asyncsync.modes import serve
from asyncsync.modes.serve import serve_loop
from asyncsync.options import ServeOptions
from asyncsync.readiness import Readiness
from asyncsync.runtime import open_runtime
from asyncsync.runtime.fleet import pinned_fleet
from asyncsync.simulator import TinySimulator
from asyncsync.status import Situacao
from asyncsync.store import locks
from asyncsync.store.database import connect_pool
from asyncsync.store.leases import Leases
from asyncsync.store.queue import PgWorkQueue
from asyncsync.store.resilience import Reconnect, SqlRunner, classify
from asyncsync.work import worker
from asyncsync.work.handlers import Dispatcher, Hooks
from asyncsync.work.health import SERVE_HEALTH_KEY, check_readiness, say_health
from asyncsync.work.units import Kind, Unit

from ..helpers import common_for, cycle, full_sync, metrics_port
from ..mirror import diff, mirror
from .conftest import OwnPostgres, asyncsync, cli_env


@contextlib.asynccontextmanager
async def silent_database() -> AsyncIterator[str]:
    """The URL of a server that accepts connections and never answers (connect_timeout
    60 s): a first connection to the database that hangs."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/test?connect_timeout=60"
    finally:
        server.close()


def fast_db(common, **database):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.replace(common, database=dataclasses.replace(common.database, **database))


async def readyz(port: int) -> tuple[int, str]:
    """What serve's /readyz on ``port`` answers: its status and its body."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/readyz") as answer,
    ):
        return answer.status, await answer.text()


async def mirror_at(dsn: str) -> dict[int, dict[str, object]]:
    """The mirror of the database at ``dsn``, read on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        return await mirror(conn)  # type: ignore[arg-type]
    finally:
        await conn.close()


async def exact_while_serving(
    sim: TinySimulator, dsn: str, serving: asyncio.Task[int], within_s: float = 40
) -> None:
    """Wait for the mirror at ``dsn`` to equal Tiny's state, asserting serve stays up."""
    deadline = time.monotonic() + within_s
    while diff(sim.snapshot(), await mirror_at(dsn)) and time.monotonic() < deadline:
        assert not serving.done(), serving.result()
        await asyncio.sleep(0.3)
    assert diff(sim.snapshot(), await mirror_at(dsn)) == []


async def readyz_for(port: int, seconds: float, since: float) -> list[tuple[float, int, str]]:
    """/readyz every 0.5 s until ``seconds`` after ``since`` (monotonic): for each, its age
    in seconds, its status and its body."""
    said: list[tuple[float, int, str]] = []
    while time.monotonic() - since < seconds:
        said.append((round(time.monotonic() - since, 1), *await readyz(port)))
        await asyncio.sleep(0.5)
    return said


async def ready_again(port: int, pause_s: float = 0.25) -> None:
    """Assert that serve's /readyz answers 200 within 40 pauses."""
    for _ in range(40):
        status, text = await readyz(port)
        if status == 200:
            return
        await asyncio.sleep(pause_s)
    raise AssertionError(f"/readyz still {status}: {text}")


async def test_serve_rides_out_a_database_restart(
    simulator, own_postgres: OwnPostgres, caplog
) -> None:
    # The work queue lives in the database: while it is away no unit is picked, and the
    # worker waits for it (5 s, 10 s, ...) instead of dying; a unit whose end could not be
    # written is taken over once its heartbeat lapses.
    sim = await simulator(orders=300, seed=12)
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=1.0)
    stop = asyncio.Event()
    outcomes: list[list[str]] = []
    restarted: list[asyncio.Task[None]] = []

    async def restart_later() -> None:
        await asyncio.sleep(3)
        await asyncio.to_thread(own_postgres.start)

    async def after_cycle(rt, reports) -> None:
        outcomes.append([r.outcome.value for r in reports])
        if len(outcomes) == 1:
            own_postgres.stop()  # gone between two cycles; back 3 s later
            moved = sorted(sim.orders)[3]
            sim.set_status(moved, Situacao.CANCELADA)
            restarted.append(asyncio.create_task(restart_later()))
        elif len(outcomes) == 2:
            stop.set()

    async with open_runtime(common) as rt:
        options = ServeOptions(interval_s=0.05, heartbeat_s=2, cycle=cycle(detail_budget=10_000))
        with caplog.at_level(logging.ERROR):
            serving = serve_loop(rt, options, stop, after_cycle=after_cycle)
            code = await asyncio.wait_for(serving, 90)
    await asyncio.gather(*restarted)
    assert code == 0  # the service lived through it
    assert outcomes == [["ok", "ok"], ["ok", "ok"]]
    assert any("the work queue lost the database" in r.getMessage() for r in caplog.records)
    pool = await asyncpg.create_pool(own_postgres.dsn, min_size=1, max_size=1)
    try:
        assert diff(sim.snapshot(), await mirror(pool)) == []  # the move is in
    finally:
        await pool.close()


async def test_serve_stopped_while_it_waits_for_its_database_exits_at_once(
    simulator, own_postgres: OwnPostgres, caplog
) -> None:
    # A SIGTERM while the worker waited for a database that went away (its reinstall
    # trying again for --db-reconnect seconds): it exited only once that wait ended, 16 s
    # later here, and with --db-reconnect 120 the drain timeout cut it (exit 130), though
    # nothing ran. Nothing runs while it waits: it stops at once, exit 0.
    sim = await simulator(orders=50, seed=14)
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=120.0)
    stop = asyncio.Event()
    pool = await asyncpg.create_pool(own_postgres.dsn, min_size=1, max_size=1)
    query = (
        "SELECT count(*) FROM pgqueuer WHERE entrypoint = 'asyncsync.cycle' AND status = 'queued'"
    )

    async def idle() -> bool:  # the first cycle ended and went back to the queue
        with contextlib.suppress(asyncpg.PostgresError):
            return bool(await pool.fetchval(query))
        return False

    def said(text: str) -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    async with open_runtime(common) as rt:
        options = ServeOptions(interval_s=3600, heartbeat_s=2, drain_s=25, cycle=cycle())
        with caplog.at_level(logging.WARNING):
            serving = asyncio.create_task(serve_loop(rt, options, stop))
            try:
                deadline = time.monotonic() + 60
                while not await idle() and time.monotonic() < deadline:
                    assert not serving.done(), serving.result()
                    await asyncio.sleep(0.1)
                await pool.close()
                own_postgres.stop()
                while not said("trying again for up to 120 s") and time.monotonic() < deadline:  # noqa: ASYNC110 (the log)
                    await asyncio.sleep(0.1)
                assert said("trying again for up to 120 s"), [
                    r.getMessage() for r in caplog.records
                ]
                stop.set()
                stopped_at = time.monotonic()
                code = await asyncio.wait_for(serving, 60)
                took = time.monotonic() - stopped_at
            finally:
                stop.set()
                await asyncio.to_thread(own_postgres.start)
    assert code == 0 and took < 5, (code, took)


async def test_serve_started_while_the_database_is_down_waits_for_it(
    simulator, own_postgres: OwnPostgres, caplog
) -> None:
    # A host that boots asyncsync before PostgreSQL, a restart of the worker during a
    # database outage: serve answers /healthz, names the database on /readyz, and starts
    # working once it answers, instead of exiting (a restart policy gives up after a few).
    sim = await simulator(orders=200, seed=13)
    own_postgres.stop()
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=1.0)
    stop = asyncio.Event()
    sim.on_list_page = lambda *_: stop.set()  # the first cycle reached Tiny: enough
    options = ServeOptions(interval_s=0.05, heartbeat_s=2, metrics_port=0, cycle=cycle())
    with caplog.at_level(logging.INFO):
        serving = asyncio.create_task(serve.run(common, options, stop))
        port = None
        for _ in range(100):
            said = [r.getMessage() for r in caplog.records]
            waiting = any("database is unavailable at start" in m for m in said)
            urls = [m.split("/metrics")[0].rsplit(":", 1)[1] for m in said if "metrics on" in m]
            if urls and waiting:
                port = int(urls[0])
                break
            await asyncio.sleep(0.1)
        assert port is not None, said
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as alive:
                assert alive.status == 200
            async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
                assert ready.status == 503 and "database" in await ready.text()
        assert not serving.done()
        await asyncio.to_thread(own_postgres.start)
        code = await asyncio.wait_for(serving, 90)
    assert code == 0 and sim.stats.requests_by_endpoint["list"] > 0


async def test_serve_is_not_ready_before_its_database_first_answers(simulator, caplog) -> None:
    # /readyz said 200 from the moment it listened, before the database had answered once
    # (a pool still connecting to a server that does not answer, an embedded one starting);
    # and stopped then, serve waited out the connect timeout before it exited.
    sim = await simulator(orders=10)
    stop = asyncio.Event()
    options = ServeOptions(interval_s=1, heartbeat_s=2, metrics_port=0, cycle=cycle())
    caplog.set_level(logging.INFO)
    async with silent_database() as dsn:
        serving = asyncio.create_task(serve.run(common_for(sim, dsn), options, stop))
        try:
            readyz = f"http://127.0.0.1:{await metrics_port(caplog)}/readyz"
            assert not serving.done()
            async with aiohttp.ClientSession() as http, http.get(readyz) as ready:
                said = await ready.json()
            assert ready.status == 503 and "not reached yet" in said["reasons"]["database"], said
        finally:
            stop.set()
            started = time.monotonic()
            code = await asyncio.wait_for(serving, 90)
            stopped_in = time.monotonic() - started
    assert code == 0 and stopped_in < 5, (code, stopped_in)  # not the 60-s connect timeout


async def test_serve_whose_database_goes_away_at_its_first_plan_waits_for_it(
    simulator, own_postgres: OwnPostgres, monkeypatch
) -> None:
    # The worker planned its units once before its guarded loop: the database lost at that
    # moment (after serve had opened it) ended serve, exit 6, instead of being waited out.
    sim = await simulator(orders=100, seed=15)
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=1.0)
    stop = asyncio.Event()
    sim.on_list_page = lambda *_: stop.set()  # a cycle reached Tiny once it was back
    planned = worker.plan
    plans: list[asyncio.Task[None]] = []  # one a plan; the first stops the database

    async def start_later() -> None:
        await asyncio.sleep(3)
        await asyncio.to_thread(own_postgres.start)

    async def plan_after_a_stop(*args: object, **kwargs: object) -> None:
        if not plans:
            await asyncio.to_thread(own_postgres.stop)
        plans.append(asyncio.create_task(start_later()) if not plans else plans[0])
        await planned(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(worker, "plan", plan_after_a_stop)
    options = ServeOptions(interval_s=0.05, heartbeat_s=2, metrics_port=0, cycle=cycle())
    code = await asyncio.wait_for(serve.run(common, options, stop), 90)
    assert code == 0 and sim.stats.requests_by_endpoint["list"] > 0
    assert len(plans) >= 2  # the first, which met the database away, and one after


async def test_serve_fails_the_cycle_the_database_left_and_says_so(
    simulator, own_postgres: OwnPostgres, caplog
) -> None:
    # The database stops in the middle of a cycle's listing: that cycle fails (its merges
    # are tried again for --db-reconnect, then given up), readiness names the database
    # while it is away, and once it is back a cycle completes and the mirror is exact.
    # The work queue lives in the same database: when it notices first, it cuts the
    # failing cycle (whose unit runs again once the database is back) before the cycle
    # could report; either way the failure is said.
    sim = await simulator(orders=1500, seed=14, max_limit=50)
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=1.0)
    stop = asyncio.Event()
    readiness = Readiness()
    outcomes: list[list[str]] = []
    away: list[dict[str, str]] = []  # readiness while the database was stopped
    pages = {"n": 0, "stopped_at": 0}
    restarted: list[asyncio.Task[None]] = []
    back: list[bool] = []  # whether the database was back when each cycle ended

    async def restart_later() -> None:
        await asyncio.sleep(4)
        away.append(readiness.reasons())
        await asyncio.to_thread(own_postgres.start)

    def stop_mid_listing(_: TinySimulator, params: dict[str, str]) -> None:
        pages["n"] += 1
        if pages["stopped_at"] == 0 and len(outcomes) == 1 and pages["n"] >= 5:
            pages["stopped_at"] = pages["n"]
            own_postgres.stop()
            restarted.append(asyncio.get_running_loop().create_task(restart_later()))

    async def after_cycle(rt, reports) -> None:
        outcomes.append([r.outcome.value for r in reports])
        back.append(bool(restarted) and restarted[0].done())
        if len(outcomes) == 1:
            for order_id in sorted(sim.orders)[:40]:  # the next cycle has work to merge
                sim.set_status(order_id, Situacao.CANCELADA)
            pages["n"] = 0
            sim.on_list_page = stop_mid_listing
        elif restarted and restarted[0].done() and outcomes[-1][0] == "ok":
            stop.set()

    async with open_runtime(common) as rt:
        options = ServeOptions(interval_s=0.05, heartbeat_s=2, cycle=cycle(detail_budget=10_000))
        serving = serve_loop(rt, options, stop, after_cycle=after_cycle, readiness=readiness)
        with caplog.at_level(logging.WARNING):
            code = await asyncio.wait_for(serving, 120)
    await asyncio.gather(*restarted)
    assert code == 0  # the service lived through it
    assert pages["stopped_at"] > 0 and away, (pages, away)
    assert "unreachable" in away[0].get("database", ""), away
    said = [r.getMessage() for r in caplog.records]
    failed = any(m.startswith("sync — FAILED") for m in said) or "failed" in [
        o[0] for o in outcomes[1:]
    ]
    cut = any("the work queue lost the database" in m for m in said)
    assert failed or cut, (outcomes, said)  # the cycle it left failed, or the queue cut it
    while_away = [o[0] for o, b in zip(outcomes[1:], back[1:], strict=True) if not b]
    assert set(while_away) <= {"failed"}, (outcomes, back)  # none passed for complete
    assert outcomes[-1][0] == "ok"
    assert "database" not in readiness.reasons()  # ready again
    pool = await asyncpg.create_pool(own_postgres.dsn, min_size=1, max_size=1)
    try:
        assert diff(sim.snapshot(), await mirror(pool)) == []
    finally:
        await pool.close()


async def test_a_backend_terminated_mid_merge_is_ridden(simulator, runtime_for, db) -> None:
    sim = await simulator(orders=2500, seed=21, max_limit=50)
    kills = {"done": 0, "busy": 0}
    pending: set[asyncio.Task[None]] = set()

    async def terminate() -> None:
        # Wait (briefly) for a backend of the sink's to be in the middle of something, a
        # merge's transaction most likely, then cut every one of them.
        for _ in range(200):
            busy = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'asyncsync' AND pid <> pg_backend_pid() "
                "AND state IN ('active', 'idle in transaction')"
            )
            if busy:
                break
            await asyncio.sleep(0.005)
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'asyncsync' "
            "AND pid <> pg_backend_pid()"
        )
        kills["done"] += 1
        kills["busy"] += bool(busy)

    def now_and_then(_: TinySimulator, params: dict[str, str]) -> None:
        if int(params.get("offset", "0")) % 500 == 250 and kills["done"] < 6:
            task = asyncio.get_running_loop().create_task(terminate())
            pending.add(task)
            task.add_done_callback(pending.discard)

    sim.on_list_page = now_and_then
    async with runtime_for(sim) as rt:
        report = await full_sync(rt, page_size=50, batch_size=200)
    await asyncio.gather(*pending)
    assert kills["done"] >= 3 and kills["busy"] >= 1, kills  # at least one cut a merge
    assert report.outcome == "ok"
    assert diff(sim.snapshot(), await mirror(db)) == []
    history = await db.fetchval("SELECT count(*) FROM ordem_status_history")
    assert history == 2500  # every first sighting once: no batch merged twice


KILL_LOCK_SESSION = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name = 'asyncsync sync'"
)


async def rows_appear(db: asyncpg.Pool) -> None:
    for _ in range(1000):
        if await db.fetchval("SELECT count(*) FROM ordens_servico"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no row was merged")


async def test_a_run_whose_lock_session_dies_takes_the_lock_again(
    simulator, runtime_for, db, monkeypatch
) -> None:
    # The session holding the run lock is cut mid-run (a restart ridden out, a network
    # blip, an administrator): the lock went with it, and another run could start.
    monkeypatch.setattr(locks, "LOCK_CHECK_S", 0.1)
    sim = await simulator(orders=3000, seed=22, latency_s=0.01)
    async with runtime_for(sim) as rt, rt.store.lock("sync"):
        run = asyncio.create_task(full_sync(rt, page_size=100, batch_size=200))
        await rows_appear(db)
        assert await db.fetchval(KILL_LOCK_SESSION) == 1
        await asyncio.sleep(0.5)  # the run noticed, and holds the lock again
        async with runtime_for(sim) as other:
            with pytest.raises(LockBusy, match="is busy: asyncsync sync is already"):
                async with other.store.lock("sync"):
                    pass
        assert not run.done()
        report = await run
    assert report.outcome == "ok"
    assert diff(sim.snapshot(), await mirror(db)) == []


#: Cut the run's lock session and take its lock in one statement, as another run would the
#: moment it is free. From the client, another run's take raced the run's own: a merge
#: that finds the lock gone has the run take it again at once, and under load it won.
CUT_AND_TAKE = """
DO $$ BEGIN
    PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = 'asyncsync sync'
      AND pid <> pg_backend_pid();
    WHILE NOT pg_try_advisory_lock(hashtext('asyncsync.run:default')::bigint) LOOP
    END LOOP;
END $$"""


async def test_a_run_whose_lock_another_run_took_stops(
    simulator, runtime_for, db, database_url, monkeypatch
) -> None:
    # The lock session is cut, and another run takes the lock before this one can: it
    # stops (exit 3) rather than merge alongside the other.
    monkeypatch.setattr(locks, "LOCK_CHECK_S", 0.5)
    sim = await simulator(orders=3000, seed=23, latency_s=0.01)

    async def first_run() -> None:
        async with runtime_for(sim) as rt, rt.store.lock("sync"):
            await full_sync(rt, page_size=100, batch_size=200)

    run = asyncio.create_task(first_run())
    await rows_appear(db)
    named = {"application_name": "asyncsync sync"}  # another run's session
    other = await asyncpg.connect(database_url, server_settings=named)
    try:
        await asyncio.wait_for(other.execute(CUT_AND_TAKE), 10)
        with pytest.raises(LockBusy, match="lost its run lock mid-sync to asyncsync sync"):
            await run
        detailed = "SELECT count(*) FROM ordens_servico WHERE detalhe IS NOT NULL"
        rows = await db.fetchval(detailed)
        await asyncio.sleep(0.3)  # and nothing of the stopped run merges any more
        assert await db.fetchval(detailed) == rows < 3000
    finally:
        await other.close()


async def test_a_frozen_database_becomes_an_error_not_a_hang(
    simulator, own_postgres: OwnPostgres
) -> None:
    sim = await simulator(orders=3000, seed=5, latency_s=0.01)
    pages = {"n": 0}

    def freeze_after_some_pages(_: TinySimulator, params: dict[str, str]) -> None:
        pages["n"] += 1
        if pages["n"] == 6:
            own_postgres.freeze()

    sim.on_list_page = freeze_after_some_pages
    env = cli_env(
        TINY_CLIENT_ID=sim.config.client_id, TINY_CLIENT_SECRET=sim.config.client_secret,
        TINY_REFRESH_TOKEN=sim.valid_refresh_token() or "",
    )  # fmt: skip
    started = time.monotonic()
    proc = await asyncsync(
        "sync", "--database-url", own_postgres.dsn, "--api-base-url", sim.base_url,
        "--token-url", sim.token_url, "--statement-timeout", "2", "--lock-timeout", "2",
        "--db-reconnect", "1", "--log-format", "json", env=env,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        own_postgres.thaw()
    took = time.monotonic() - started
    text = err.decode()
    assert proc.returncode == 6, text
    assert "the database did not answer in time" in text and "Traceback" not in text
    assert took < 45, took  # bounded by the timeouts, not by how long the freeze lasts


async def test_a_one_shot_run_whose_database_stops_exits_6(
    simulator, own_postgres: OwnPostgres
) -> None:
    sim = await simulator(orders=3000, seed=6, latency_s=0.01)
    pages = {"n": 0}

    def stop_after_some_pages(_: TinySimulator, params: dict[str, str]) -> None:
        pages["n"] += 1
        if pages["n"] == 8:
            own_postgres.stop()

    sim.on_list_page = stop_after_some_pages
    env = cli_env(
        TINY_CLIENT_ID=sim.config.client_id, TINY_CLIENT_SECRET=sim.config.client_secret,
        TINY_REFRESH_TOKEN=sim.valid_refresh_token() or "",
    )  # fmt: skip
    proc = await asyncsync(
        "sync", "--database-url", own_postgres.dsn, "--api-base-url", sim.base_url,
        "--token-url", sim.token_url, "--db-reconnect", "1", "--log-format", "json", env=env,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode()
    assert proc.returncode == 6, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("asyncsync: sync failed:") and "unreachable" in last, last
    assert "Traceback" not in text


async def test_a_one_shot_run_stopped_before_its_database_answers_exits_at_once(
    simulator,
) -> None:
    # SIGTERM while the first connection hangs (a server that accepts and never speaks):
    # the run waited out the 25-s drain deadline, then as long again trying to record a
    # run that never began, 55 s in all; nothing ran, so it stops at once.
    sim = await simulator(orders=10)
    env = cli_env(
        TINY_CLIENT_ID=sim.config.client_id, TINY_CLIENT_SECRET=sim.config.client_secret,
        TINY_REFRESH_TOKEN=sim.valid_refresh_token() or "",
    )  # fmt: skip
    args = ("sync", "--api-base-url", sim.base_url, "--token-url", sim.token_url)
    await stopped_while_connecting(*args, env=env)
    assert sim.stats.requests_by_endpoint["list"] == 0


async def stopped_while_connecting(*args: str, env: dict[str, str]) -> None:
    """Run ``asyncsync *args`` against a database that never answers, SIGTERM it 2 s in,
    and assert it exits 130 within its 2 s of grace plus a margin (not the 60-s connect
    timeout, nor the drain deadline), saying nothing ran."""
    async with silent_database() as dsn:
        proc = await asyncsync(*args, "--database-url", dsn, env=env)
        await asyncio.sleep(2)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:  # bounded below the drain deadline (25 s), which would cancel it too
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        except TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
        stopped_in = time.monotonic() - started
    text = err.decode()
    assert proc.returncode == 130 and stopped_in < 8, (stopped_in, text)  # 2 s of grace
    assert (
        text.strip()
        .splitlines()[-1]
        .endswith("interrupted before the database answered: nothing ran")
    ), text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("health",),
        ("migrate",),
        ("accounts", "list"),
        ("failures", "list"),
        ("backfill", "--enqueue", "--from", "2024-01"),
        ("sync", "--all-accounts"),
        ("authorize",),
    ],
    ids=" ".join,
)
async def test_every_mode_stopped_before_its_database_answers_exits_at_once(
    args: tuple[str, ...],
) -> None:
    # These opened the database without the run's stop: SIGTERM while the first
    # connection hung waited out the connect timeout, or the drain deadline's cut
    # ("interrupted", 25 s), instead of leaving at once as a one-shot run does.
    env = cli_env(TINY_CLIENT_ID="app", TINY_CLIENT_SECRET="secret")
    await stopped_while_connecting(*args, env=env)


async def test_a_database_gone_read_only_mid_run_is_an_outage_not_a_failure(
    simulator, database_url, db
) -> None:
    # A failover as the run meets it: its connections are cut, and the server they come
    # back to is read-only (a standby). That is the database being away (exit 6, every
    # merge tried again meanwhile), not a bad record nor a crash; once it takes writes
    # again, the next run completes the mirror.
    sim = await simulator(orders=3000, seed=8, latency_s=0.01)
    name = await db.fetchval("SELECT current_database()")
    flipped: list[asyncio.Task[None]] = []

    async def fail_over() -> None:
        await db.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name LIKE 'asyncsync%'",
            name,
        )

    def after_some_pages(_: TinySimulator, params: dict[str, str]) -> None:
        if sim.stats.requests_by_endpoint["list"] >= 8 and not flipped:
            flipped.append(asyncio.get_running_loop().create_task(fail_over()))

    sim.on_list_page = after_some_pages
    env = cli_env(
        TINY_CLIENT_ID=sim.config.client_id, TINY_CLIENT_SECRET=sim.config.client_secret,
    )  # fmt: skip
    args = (
        "sync", "--database-url", database_url, "--api-base-url", sim.base_url,
        "--token-url", sim.token_url, "--db-reconnect", "2", "--log-format", "json",
    )  # fmt: skip
    proc = await asyncsync(*args, env={**env, "TINY_REFRESH_TOKEN": sim.valid_refresh_token()})
    _, err = await asyncio.wait_for(proc.communicate(), 90)
    text = err.decode()
    assert flipped and proc.returncode == 6, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("asyncsync: sync failed:") and "read-only" in last, last
    assert "Traceback" not in text
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0

    await db.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    sim.on_list_page = None
    proc = await asyncsync(*args, env=env)  # the refresh token rotated: the database has it
    _, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_a_lock_held_elsewhere_becomes_an_error_not_a_hang(
    simulator, database_url, db
) -> None:
    # Another session holds the mirror's table (a long migration, a stuck report): the
    # run's statements give up after --lock-timeout instead of waiting for it.
    sim = await simulator(orders=300, seed=7)
    env = cli_env(
        TINY_CLIENT_ID=sim.config.client_id, TINY_CLIENT_SECRET=sim.config.client_secret,
        TINY_REFRESH_TOKEN=sim.valid_refresh_token() or "",
    )  # fmt: skip
    async with db.acquire() as holder, holder.transaction():
        await holder.execute("LOCK TABLE ordens_servico IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        proc = await asyncsync(
            "sync", "--database-url", database_url, "--api-base-url", sim.base_url,
            "--token-url", sim.token_url, "--lock-timeout", "1", "--statement-timeout", "60",
            "--db-reconnect", "2", "--log-format", "json", env=env,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        took = time.monotonic() - started
    text = err.decode()
    assert proc.returncode == 6, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("asyncsync: sync failed:") and "lock timeout" in last, last
    assert "Traceback" not in text
    assert took < 30, took  # the lock timeout and the reconnect window, not the holder


def test_a_timeout_whose_rollback_met_the_closed_connection_is_still_a_timeout() -> None:
    """The race of the frozen-database test above, as it once ran in CI: the statement
    timed out, asyncpg closed the connection, and the transaction's ``__aexit__`` raised
    on the closed connection while the timeout propagated; the run must still say what
    happened (the timeout), not that the database could not be reached."""
    try:
        try:
            raise TimeoutError
        except TimeoutError:
            raise asyncpg.InterfaceError(  # noqa: B904 - implicit context, as in __aexit__
                "cannot call Transaction.__aexit__(): the underlying connection is closed"
            )
    except asyncpg.InterfaceError as exc:
        error = classify(exc, "merging orders")
    assert str(error) == "merging orders: the database did not answer in time (frozen?)"
    assert isinstance(error, DatabaseUnavailable)
    # The same error with nothing behind it is a connection that went away.
    alone = classify(asyncpg.InterfaceError("the underlying connection is closed"), "merging")
    assert str(alone) == "merging: the database is unreachable: the underlying connection is closed"


async def test_a_pool_this_process_closed_is_no_outage_to_wait_out(database_url) -> None:
    """A drain cut at its deadline closes the pool under a merge in flight: "pool is
    closing" was taken for the database gone, tried again for 30 s (the process hung 3 s
    at its cut) and blamed on the database (sweep I)."""
    async with connect_pool(database_url) as pool:
        runner = SqlRunner(pool, Reconnect(within_s=30.0))
    started = time.monotonic()
    with pytest.raises(DatabaseError) as caught:
        await runner.fetchval("merging details", "ping")
    assert time.monotonic() - started < 1.0
    assert not isinstance(caught.value, DatabaseUnavailable), caught.value
    assert "this process closed its connections" in str(caught.value)


def test_a_server_that_cannot_take_writes_now_is_away_not_broken() -> None:
    # Out of disk or memory, read-only, a deadlock's or a serialization conflict's
    # victim: each unit of work is a transaction, tried again as after a restart.
    errors = asyncpg.exceptions
    for exc in (
        errors.DiskFullError("could not extend file"),
        errors.OutOfMemoryError("out of memory"),
        errors.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
        errors.DeadlockDetectedError("deadlock detected"),
        errors.SerializationError("could not serialize access"),
        errors.IdleInTransactionSessionTimeoutError("idle-in-transaction timeout"),
    ):
        assert isinstance(classify(exc, "merging orders"), DatabaseUnavailable), exc
    assert "disk is full" in str(classify(errors.DiskFullError("x"), "merging orders"))
    # A database that takes no connections now says so at connection time, FATAL, in the
    # class a statement's own misstep shares (55000): only the first is an outage.
    refusing = asyncpg.PostgresError.new(
        {"C": "55000", "S": "FATAL", "V": "FATAL",
         "M": 'database "x" is not currently accepting connections'}
    )  # fmt: skip
    assert isinstance(classify(refusing, "merging orders"), DatabaseUnavailable)
    assert "ALLOW_CONNECTIONS" in str(classify(refusing, "merging orders"))
    misstep = asyncpg.PostgresError.new(
        {"C": "55000", "S": "ERROR", "V": "ERROR", "M": "currval is not yet defined"}
    )
    assert not isinstance(classify(misstep, "merging orders"), DatabaseUnavailable)
    refused = classify(errors.NotNullViolationError("null value"), "merging orders")
    assert not isinstance(refused, DatabaseUnavailable)  # a record's fault stays one


async def test_a_worker_whose_lease_session_dies_stops_its_unit_within_seconds(
    simulator, runtime_for, db, monkeypatch, caplog
) -> None:
    # A worker's leases are run locks on one session: when it dies, another process may
    # take the account, so the units must stop within the check's few seconds.
    monkeypatch.setattr(worker, "LEASE_CHECK_S", 0.2)
    sim = await simulator(orders=3000, seed=24, latency_s=0.01)
    stop = asyncio.Event()
    async with runtime_for(sim) as rt:
        options = ServeOptions(interval_s=3600, cycle=cycle(detail_budget=10_000))
        task = asyncio.create_task(serve.serve_loop(rt, options, stop, max_cycles=1))
        await rows_appear(db)
        cut = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'asyncsync worker %'"
        )
        assert cut == 1
        started = time.monotonic()
        while "accounts lost" not in caplog.text:
            assert time.monotonic() - started < 3, "the lost lease went unnoticed"
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_a_lease_lost_while_leasing_another_account_still_stops_its_units(
    runtime_for, simulator, database_url, db
) -> None:
    # The dead lease session is met first by a worker leasing another account: the loss
    # must still reach the units of the accounts it held, and no new unit may reuse it.
    sim = await simulator(orders=10)
    async with (
        runtime_for(sim) as rt,
        connect_pool(database_url, max_size=2) as other_pool,
        pinned_fleet(rt, ServeOptions()) as fleet,
    ):
        async with fleet.lease("default") as leased:
            cut = await db.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                "datname = current_database() AND application_name LIKE 'asyncsync worker %'"
            )
            assert cut == 1
            await asyncio.sleep(0.2)
            with pytest.raises(DatabaseUnavailable):
                async with fleet.lease("another"):
                    pass
            await fleet.ping()  # the worker's check, every 5 s
            assert leased.lost.is_set()
            with pytest.raises(LockBusy, match="lost its lease"):
                async with fleet.lease("default"):
                    pass
        # Once its units are gone, the account is leased again, on a new session.
        async with fleet.lease("default") as again:
            assert not again.lost.is_set()
            assert await Leases(other_pool, "another worker").take("default") is not None


async def test_a_lease_session_that_cannot_be_set_up_gives_its_connection_back(
    database_url,
) -> None:
    # The server refuses the session's idle timeout (past int32 milliseconds): each take
    # fails, and each kept the pool's connection for good, until the worker had none left
    # for anything (its pings, its drain: SIGTERM waited for the deadline).
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=2)
    try:
        leases = Leases(pool, "asyncsync worker test", idle_timeout_s=3_000_000)
        for _ in range(3):
            with pytest.raises(DatabaseUnavailable):
                await asyncio.wait_for(leases.take("default"), 5)
        assert await asyncio.wait_for(pool.fetchval("SELECT 1"), 5) == 1
    finally:
        pool.terminate()  # not close(): it would wait for connections never given back


async def test_a_unit_cut_by_the_drain_deadline_stays_on_the_queue(database_url, db) -> None:
    # The drain's deadline cancels the worker while a backfill month hangs on Tiny. The
    # queue library logs a cancelled unit as ended and deletes it; nothing plans months,
    # so the month would never run again. It goes back to the queue, due at once.
    async with connect_pool(database_url, max_size=10) as pool:
        queue = PgWorkQueue(SqlRunner(pool, Reconnect()))
        month = Unit(Kind.BACKFILL, "big", dt.date(2020, 1, 1))
        await queue.enqueue([month.item()])
        stop, started = asyncio.Event(), asyncio.Event()

        async def hangs(_: object) -> None:
            started.set()
            await asyncio.sleep(100)  # a request stuck past the drain

        work = asyncio.create_task(queue.work(
            {k.value: hangs for k in Kind}, slots=4, limits={}, heartbeat_s=30, ticks={},
            stop=stop,
        ))  # fmt: skip
        await asyncio.wait_for(started.wait(), 10)
        stop.set()  # SIGTERM
        await asyncio.sleep(0.5)
        work.cancel()  # the drain's deadline
        with contextlib.suppress(asyncio.CancelledError):
            await work
    rows = await db.fetch("SELECT status, entrypoint, execute_after <= now() AS due FROM pgqueuer")
    assert [tuple(r) for r in rows] == [("queued", Kind.BACKFILL.value, True)]


async def test_the_backfill_months_of_a_disabled_account_wait_for_it(database_url, db) -> None:
    # Disabled, an account's units end; but nothing plans backfill months again, so they
    # must wait on the queue for `accounts enable`, not vanish.
    class Disabled:
        name = "a worker"

        async def serves(self, account: str) -> bool:
            return False

        async def disabled(self, account: str) -> bool:
            return account == "big"  # "gone" was removed

    async with connect_pool(database_url, max_size=10) as pool:
        queue = PgWorkQueue(SqlRunner(pool, Reconnect()))
        months = [Unit(Kind.BACKFILL, a, dt.date(2020, m, 1)) for a in ("big", "gone")
                  for m in (1, 2)]  # fmt: skip
        await queue.enqueue([m.item() for m in months])
        stop = asyncio.Event()
        dispatcher = Dispatcher(Disabled(), ServeOptions(), stop, Hooks())  # type: ignore[arg-type]
        work = asyncio.create_task(queue.work(
            dispatcher.handlers(), slots=4, limits={}, heartbeat_s=30, ticks={}, stop=stop
        ))  # fmt: skip
        for _ in range(100):
            if await db.fetchval("SELECT count(*) FROM pgqueuer WHERE status = 'queued' "
                                 "AND execute_after > now()") == 2:  # fmt: skip
                break
            await asyncio.sleep(0.05)
        stop.set()
        await work
    rows = await db.fetch("SELECT payload FROM pgqueuer WHERE status = 'queued'")
    assert sorted(orjson.loads(r["payload"])["account"] for r in rows) == ["big", "big"]


async def test_a_unit_whose_requeue_meets_the_database_away_is_not_held_as_failed(
    simulator, own_postgres: OwnPostgres
) -> None:
    # The database goes away as a cycle ends, so the unit's re-queue fails: pgqueuer held
    # the unit as 'failed'. A cycle then waited for the planner's next minute; a backfill
    # month, which nothing plans again, would never have run.
    sim = await simulator(orders=100, seed=12)
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=1.0)
    stop = asyncio.Event()
    ends: list[float] = []
    restarted: list[float] = []

    async def restart_later() -> None:
        await asyncio.sleep(3)
        await asyncio.to_thread(own_postgres.start)
        restarted.append(time.monotonic())

    async def after_cycle(rt, reports) -> None:
        ends.append(time.monotonic())
        if len(ends) == 1:  # gone as the unit ends: its re-queue meets the outage
            own_postgres.stop()
            asyncio.get_running_loop().create_task(restart_later())
        else:
            stop.set()

    async with open_runtime(common) as rt:
        options = ServeOptions(interval_s=1, heartbeat_s=30, cycle=cycle(detail_budget=10_000))
        code = await asyncio.wait_for(serve_loop(rt, options, stop, after_cycle=after_cycle),
                                      120)  # fmt: skip
    assert code == 0 and restarted
    conn = await asyncpg.connect(own_postgres.dsn)
    try:
        failed = await conn.fetchval("SELECT count(*) FROM pgqueuer WHERE status = 'failed'")
    finally:
        await conn.close()
    assert failed == 0
    # The same unit ran again (at the queue's next poll, at worst), not a new one planned.
    assert ends[1] - restarted[0] < 35, ends[1] - restarted[0]


async def test_after_a_database_restart_units_are_picked_when_due_not_at_the_next_poll(
    simulator, own_postgres: OwnPostgres, caplog
) -> None:
    # The queue LISTENs on one pooled connection for a worker's whole life. A database
    # restart kills it, and pgqueuer does not notice: every wake-up (a unit re-queued when
    # its cycle ends) was lost, so each cycle then started at the queue's next poll, 30 s
    # late, for as long as the worker lived — and its shutdown said "the work queue lost
    # the database" (resetting the dead connection), the database being there.
    sim = await simulator(orders=100, seed=12)
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=1.0)
    stop = asyncio.Event()
    ends: list[float] = []
    said_before_stop: list[int] = []

    async def after_cycle(rt, reports) -> None:
        ends.append(time.monotonic())
        if len(ends) == 2:  # between two cycles: the database restarts
            own_postgres.stop()
            await asyncio.sleep(1)
            await asyncio.to_thread(own_postgres.start)
        if len(ends) == 5:
            said_before_stop.append(len(caplog.records))
            stop.set()

    async with open_runtime(common) as rt:
        options = ServeOptions(interval_s=3, heartbeat_s=30, cycle=cycle(detail_budget=10_000))
        with caplog.at_level(logging.INFO):
            code = await asyncio.wait_for(serve_loop(rt, options, stop, after_cycle=after_cycle),
                                          150)  # fmt: skip
    assert code == 0
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(ends)]
    assert max(gaps) < 10, gaps  # was [3.0, 30.0, 30.0, 30.0]
    # Said while the database was down, it is true; said at the shutdown, it was not.
    said = [r.getMessage() for r in caplog.records[said_before_stop[0] :]]
    assert not any("the work queue lost the database" in m for m in said), said


async def test_readiness_names_a_frozen_database_while_it_is_frozen(
    simulator, own_postgres: OwnPostgres
) -> None:
    # SIGSTOP for 13 s, with a 3 s statement timeout: /readyz must say so during the
    # freeze. Its probe gave up only after the client-side timeout (8 s), then waited as
    # long again for the connection's release, so it said "ready" throughout.
    sim = await simulator(orders=200, seed=13)
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=1.0,
                     statement_timeout_s=3.0, lock_timeout_s=3.0)  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = asyncio.Event()
    options = ServeOptions(interval_s=2, heartbeat_s=30, metrics_port=port, cycle=cycle())
    serving = asyncio.create_task(serve.run(common, options, stop))
    said: list[str] = []
    try:
        conn = await asyncpg.connect(own_postgres.dsn)
        try:
            for _ in range(300):
                with contextlib.suppress(asyncpg.UndefinedTableError):
                    if await conn.fetchval("SELECT count(*) FROM sync_runs WHERE outcome='ok'"):
                        break
                await asyncio.sleep(0.2)
        finally:
            await conn.close()
        await asyncio.sleep(1)
        own_postgres.freeze()
        try:
            async with aiohttp.ClientSession() as http:
                frozen_until = time.monotonic() + 13
                while time.monotonic() < frozen_until:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
                        said.append(f"{ready.status} {await ready.text()}")
                    await asyncio.sleep(0.5)
        finally:
            own_postgres.thaw()
    finally:
        stop.set()
        await asyncio.wait_for(serving, 90)
    assert said and said[0].startswith("200"), said  # ready before
    assert any(s.startswith("503") and "database" in s for s in said), said


async def test_a_failure_the_database_could_not_hear_of_is_said_once_it_answers(
    simulator, own_postgres: OwnPostgres
) -> None:
    # A cycle the database failed could not write so in serve_health: once the database
    # was back, `asyncsync health` read the cycle before it (healthy) until the next cycle
    # ended. What was not said is said as soon as the database answers again.
    sim = await simulator(orders=50, seed=15)
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=1.0)

    async def said() -> dict[str, object]:
        conn = await asyncpg.connect(own_postgres.dsn)
        try:
            value = await conn.fetchval("SELECT valor FROM sync_metadata WHERE chave = $1",
                                        SERVE_HEALTH_KEY)  # fmt: skip
        finally:
            await conn.close()
        return dict(orjson.loads(value))

    async with open_runtime(common) as rt:
        await say_health(rt, None)  # the cycle before: healthy
        assert (await said())["ok"] is True
        own_postgres.stop()
        await say_health(rt, "last cycle failed: the database is unreachable")
        await asyncio.to_thread(own_postgres.start)
        await check_readiness(rt, 60, Readiness())  # after a cycle, or at the next one's start
        health = await said()
    assert health["ok"] is False and "database is unreachable" in str(health["problem"])


async def test_serve_outlives_its_database_dropped_and_created_again(
    simulator, admin_dsn: str, database_url: str, caplog
) -> None:
    # A DBA restores the database (DROP DATABASE, CREATE DATABASE, then the dump or
    # nothing): for a while the server says the database does not exist, then it is back
    # without asyncsync's tables. Serve must wait it out, as for any outage (/readyz names
    # the database meanwhile), apply the schema again and rebuild the mirror; before, the
    # worker exited 1 ("running the work queue: database ... does not exist"), and a
    # restart policy then met exit 2 for a database that was only being restored.
    # (Refresh tokens that do not rotate: a database created anew has lost the stored
    # one, and this test is about the database, not the token.)
    sim = await simulator(orders=200, seed=31, rotate_refresh_tokens=False)
    common = fast_db(common_for(sim, database_url), reconnect_s=1.0)
    name = urlsplit(database_url).path.lstrip("/")  # the embedded server's has ?host=...
    stop = asyncio.Event()
    options = ServeOptions(interval_s=0.5, heartbeat_s=2, metrics_port=0, cycle=cycle())

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def mirrored() -> dict[int, dict[str, object]]:
        try:
            conn = await asyncpg.connect(database_url)
        except (asyncpg.PostgresError, OSError):
            return {}
        try:
            return await mirror(conn)  # type: ignore[arg-type]
        except asyncpg.PostgresError:
            return {}
        finally:
            await conn.close()

    with caplog.at_level(logging.INFO):
        serving = asyncio.create_task(serve.run(common, options, stop))
        try:
            deadline = time.monotonic() + 30
            while diff(sim.snapshot(), await mirrored()) and time.monotonic() < deadline:  # noqa: ASYNC110 (the mirror is in the database)
                await asyncio.sleep(0.2)
            assert diff(sim.snapshot(), await mirrored()) == []
            said = [r.getMessage() for r in caplog.records]
            port = next(int(m.split("/metrics")[0].rsplit(":", 1)[1])
                        for m in said if "metrics on" in m)  # fmt: skip
            await admin(f'DROP DATABASE "{name}" WITH (FORCE)')
            moved = sorted(sim.orders)[5]
            sim.set_status(moved, Situacao.CANCELADA)  # a change made while it was away
            for _ in range(40):  # the worker's probe runs every 5 s
                await asyncio.sleep(0.25)
                assert not serving.done(), serving.result()
                status, text = await readyz(port)
                if status == 503:
                    break
            assert status == 503 and "database" in text, (status, text)
            await asyncio.sleep(1)
            assert not serving.done(), serving.result()
            await admin(f'CREATE DATABASE "{name}"')  # back, empty
            deadline = time.monotonic() + 40
            while diff(sim.snapshot(), await mirrored()) and time.monotonic() < deadline:
                assert not serving.done(), serving.result()
                await asyncio.sleep(0.3)
            assert diff(sim.snapshot(), await mirrored()) == []
            await ready_again(port)  # once a cycle has run on the new database
        finally:
            stop.set()
            code = await asyncio.wait_for(serving, 60)
    assert code == 0
    conn = await asyncpg.connect(database_url)
    try:
        chains = await conn.fetch(
            "SELECT id_os, count(*) FILTER (WHERE status_antigo IS NULL) AS firsts "
            "FROM ordem_status_history GROUP BY id_os"
        )
    finally:
        await conn.close()
    assert len(chains) == 200 and all(r["firsts"] == 1 for r in chains)


async def test_serve_connected_to_a_database_without_its_queue_tables_installs_them_again(
    simulator, database_url: str, db, caplog
) -> None:
    # A database restored (dropped and created again) between two of the work queue's
    # polls: its next query met a database without its tables, "relation
    # pgqueuer_schedules does not exist", and serve exited 1 (a flaky CI failure of the
    # test above). Tables gone while connected are the same restore: an outage to wait
    # out, the schema applied again.
    sim = await simulator(orders=50, seed=32)
    common = fast_db(common_for(sim, database_url), reconnect_s=1.0)
    stop = asyncio.Event()
    options = ServeOptions(interval_s=0.5, heartbeat_s=2, metrics_port=0, cycle=cycle())
    with caplog.at_level(logging.INFO):
        serving = asyncio.create_task(serve.run(common, options, stop))
        try:
            deadline = time.monotonic() + 30
            while diff(sim.snapshot(), await mirror(db)) and time.monotonic() < deadline:  # noqa: ASYNC110 (the mirror is in the database)
                await asyncio.sleep(0.2)
            tables = "pgqueuer, pgqueuer_log, pgqueuer_statistics, pgqueuer_schedules"
            await db.execute(f"DROP TABLE {tables} CASCADE")
            moved = sorted(sim.orders)[3]
            sim.set_status(moved, Situacao.CANCELADA)  # a change made meanwhile
            deadline = time.monotonic() + 30
            while diff(sim.snapshot(), await mirror(db)) and time.monotonic() < deadline:
                assert not serving.done(), serving.result()
                await asyncio.sleep(0.3)
            assert diff(sim.snapshot(), await mirror(db)) == []
            assert await db.fetchval("SELECT to_regclass('pgqueuer_schedules') IS NOT NULL")
        finally:
            stop.set()
            code = await asyncio.wait_for(serving, 60)
    assert code == 0
    said = [r.getMessage() for r in caplog.records]
    assert any("lost the database" in m and "came back without its tables" in m for m in said), (
        said[-20:]
    )


async def test_a_worker_back_from_an_outage_does_not_wait_on_the_others_merges(
    simulator, own_postgres: OwnPostgres, caplog
) -> None:
    # Back from an outage, a worker applies the schema again only when the database came
    # back without it (restored, created anew). Applied every time, schema.sql's CREATE
    # INDEX IF NOT EXISTS took a SHARE lock on ordens_servico, whatever existed: it waited
    # for every merge in flight on the other workers (here one transaction, held open),
    # queued every later write of theirs behind it, and, cut by the lock timeout, was an
    # outage again: the worker picked nothing for as long as some merge was open.
    sim = await simulator(orders=100, seed=12)
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=1.0, lock_timeout_s=2.0)
    stop = asyncio.Event()
    ends: list[float] = []
    holding: list[asyncpg.Connection] = []
    restarted: list[asyncio.Task[None]] = []

    async def restart_later() -> None:
        await asyncio.sleep(2)
        await asyncio.to_thread(own_postgres.start)
        other = await asyncpg.connect(own_postgres.dsn)  # another worker, mid-merge
        await other.execute("BEGIN; LOCK TABLE ordens_servico IN ROW EXCLUSIVE MODE")
        holding.append(other)

    async def after_cycle(rt, reports) -> None:
        ends.append(time.monotonic())
        if len(ends) == 1:
            own_postgres.stop()  # gone between two cycles; back 2 s later
            restarted.append(asyncio.create_task(restart_later()))
        elif len(ends) == 2:
            stop.set()

    try:
        async with open_runtime(common) as rt:
            options = ServeOptions(interval_s=5, heartbeat_s=2, cycle=cycle())
            with caplog.at_level(logging.ERROR):
                serving = asyncio.create_task(
                    serve_loop(rt, options, stop, after_cycle=after_cycle)
                )
                deadline = time.monotonic() + 30
                while len(ends) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110 (cycles)
                    await asyncio.sleep(0.2)
                picked_again = len(ends) >= 2
                for other in holding:
                    await other.close()  # the merge ends: a worker stuck behind it goes on
                stop.set()
                await asyncio.wait_for(serving, 90)
    finally:
        await asyncio.gather(*restarted)
        for other in holding:
            await other.close()
    assert holding and "the work queue lost the database" in caplog.text  # the outage
    assert picked_again, caplog.text[-2000:]


@pytest.mark.parametrize("mode", ["sync", "serve"])
async def test_a_run_stopped_while_its_database_is_frozen_exits_soon_after_the_drain_timeout(
    mode: str, simulator, own_postgres: OwnPostgres, tmp_path
) -> None:
    # SIGTERM while PostgreSQL is frozen (SIGSTOP: the server alive, every connection
    # silent) mid-listing: the drain can neither merge nor re-queue, and the cleanup after
    # its cut waited on the frozen server too (the queue's last writes, the pool's
    # connections whose statements were cancelled): serve was still there 40 s later, for
    # the orchestrator to SIGKILL. It exits 130 at most 3 s after the drain timeout.
    sim = await simulator(orders=3000, seed=41, latency_s=0.01)
    env = cli_env(
        TINY_CLIENT_ID=sim.config.client_id, TINY_CLIENT_SECRET=sim.config.client_secret,
        TINY_REFRESH_TOKEN=sim.valid_refresh_token() or "",
    )  # fmt: skip
    frozen = asyncio.Event()

    def freeze_mid_listing(_: TinySimulator, params: dict[str, str]) -> None:
        if sim.stats.requests_by_endpoint["list"] == 8:
            own_postgres.freeze()
            frozen.set()

    sim.on_list_page = freeze_mid_listing
    proc = await asyncsync(
        mode, "--database-url", own_postgres.dsn, "--api-base-url", sim.base_url,
        "--token-url", sim.token_url, "--statement-timeout", "3", "--lock-timeout", "3",
        "--db-reconnect", "2", "--drain-timeout", "2", "--data-dir", str(tmp_path),
        "--log-format", "json", *(("--interval", "1") if mode == "serve" else ()), env=env,
    )  # fmt: skip
    try:
        await asyncio.wait_for(frozen.wait(), 60)
        await asyncio.sleep(1)  # the merges wait on the frozen server now
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 40)
        except TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
        took = time.monotonic() - started
    finally:
        own_postgres.thaw()
    text = err.decode()
    assert proc.returncode == 130 and took < 8, (proc.returncode, took, text[-3000:])
    assert "still draining after 2 s" in text and "Traceback" not in text, text[-3000:]
    assert text.strip().splitlines()[-1] == "asyncsync: interrupted", text[-3000:]


LEASE_HOLDER = """
SELECT l.pid FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid::bigint = ((hashtext('asyncsync.run:default')::bigint >> 32) & 4294967295)
  AND l.objid::bigint = (hashtext('asyncsync.run:default')::bigint & 4294967295)
"""


async def test_a_lease_session_that_stops_answering_is_named_and_replaced(
    simulator, own_postgres: OwnPostgres, caplog
) -> None:
    # The backend of the worker's lease session alone is frozen (SIGSTOP: the server and
    # every other connection answer). Its ping, and every take and release queued behind
    # it, waited for the statement timeout and 5 s (two minutes at the defaults): the
    # worker ran no unit of any account, and /readyz said ready throughout. Now the session
    # counts as lost once silent 5 s: /readyz names it, the next session ends the silent
    # backend (at once for a connection cut off; a frozen one when it wakes up), and the
    # worker goes on, the mirror exact.
    sim = await simulator(orders=300, seed=45, latency_s=0.005)
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=1.0)  # timeouts default
    stop = asyncio.Event()
    options = ServeOptions(interval_s=1, heartbeat_s=30, metrics_port=0, cycle=cycle())
    caplog.set_level(logging.INFO)
    serving = asyncio.create_task(serve.run(common, options, stop))
    conn = await asyncpg.connect(own_postgres.dsn)
    said: list[tuple[float, int, str]] = []
    try:
        port = await metrics_port(caplog)
        pid = None
        for _ in range(400):
            with contextlib.suppress(asyncpg.PostgresError):
                pid = await conn.fetchval(LEASE_HOLDER)
            if pid:
                break
            await asyncio.sleep(0.05)
        assert pid, "the worker never leased the account"
        os.kill(pid, signal.SIGSTOP)
        try:
            said = await readyz_for(port, 12, time.monotonic())
        finally:
            os.kill(pid, signal.SIGCONT)
        sim.set_status(sorted(sim.orders)[4], Situacao.CANCELADA)  # made after the thaw
        deadline = time.monotonic() + 30
        while diff(sim.snapshot(), await mirror(conn)) and time.monotonic() < deadline:  # type: ignore[arg-type]
            assert not serving.done(), serving.result()
            await asyncio.sleep(0.3)
        assert diff(sim.snapshot(), await mirror(conn)) == []  # type: ignore[arg-type]
        await ready_again(port, 0.5)
    finally:
        stop.set()
        code = await asyncio.wait_for(serving, 60)
        await conn.close()
    assert code == 0
    named = [s for s in said if s[1] == 503 and "lease session" in s[2]]
    assert named and named[0][0] <= 11, said  # a check every 5 s, each waiting 5 s at most


async def test_serve_frozen_mid_merge_goes_on_once_thawed(
    simulator, own_postgres: OwnPostgres, caplog
) -> None:
    # PostgreSQL frozen (SIGSTOP) for 12 s while a cycle merges its listing (statement
    # timeout 3 s): /readyz names the database during the freeze, and once it is thawed
    # the same serve, not restarted, is ready again and its next cycles bring the mirror
    # to Tiny's state, row by row, including a change made after the thaw.
    sim = await simulator(orders=600, seed=43, max_limit=50, latency_s=0.005)
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=1.0,
                     statement_timeout_s=3.0, lock_timeout_s=3.0)  # fmt: skip
    stop = asyncio.Event()
    options = ServeOptions(interval_s=1, heartbeat_s=30, metrics_port=0, cycle=cycle())
    frozen = asyncio.Event()

    def freeze_mid_listing(_: TinySimulator, params: dict[str, str]) -> None:
        if not frozen.is_set() and sim.stats.requests_by_endpoint["list"] >= 6:
            own_postgres.freeze()
            frozen.set()

    sim.on_list_page = freeze_mid_listing
    caplog.set_level(logging.INFO)
    serving = asyncio.create_task(serve.run(common, options, stop))
    said: list[tuple[float, int, str]] = []
    try:
        port = await metrics_port(caplog)
        await asyncio.wait_for(frozen.wait(), 60)
        try:
            said = await readyz_for(port, 12, time.monotonic())
        finally:
            own_postgres.thaw()
        moved = sorted(sim.orders)[9]
        sim.set_status(moved, Situacao.CANCELADA)  # made after the thaw
        await exact_while_serving(sim, own_postgres.dsn, serving)
        await ready_again(port, 0.5)
    finally:
        stop.set()
        code = await asyncio.wait_for(serving, 60)
    assert code == 0
    named = [s for s in said if s[1] == 503 and "database" in s[2]]
    assert named and named[0][0] <= 10.5, said  # within its documented ~10 s
    conn = await asyncpg.connect(own_postgres.dsn)
    try:
        firsts = await conn.fetchval(
            "SELECT count(*) FROM ordem_status_history WHERE status_antigo IS NULL"
        )
    finally:
        await conn.close()
    assert firsts == 600  # each first sighting once: no batch merged twice


async def test_a_refresh_token_rotated_while_the_database_restarts_is_kept_by_serve(
    simulator, own_postgres: OwnPostgres, tmp_path, caplog
) -> None:
    # The database stops between Tiny's grant of a rotated refresh token and its write
    # (2 s access tokens: a refresh every second or two). Serve drops the account's
    # runtime with the failed cycle and builds a new one once the database is back; the
    # new token manager must spend the rotated token (the rescue file), never the spent
    # one the database still holds (which would need a person to authorize again).
    sim = await simulator(orders=200, seed=44, access_ttl_s=2.0)
    common = fast_db(common_for(sim, own_postgres.dsn), reconnect_s=1.0, data_dir=tmp_path)
    stop = asyncio.Event()
    options = ServeOptions(interval_s=0.5, heartbeat_s=30, cycle=cycle())
    grants = {"n": 0}
    restarted: list[asyncio.Task[None]] = []
    granting = sim._tokens.grant

    async def start_later() -> None:
        await asyncio.sleep(3)
        await asyncio.to_thread(own_postgres.start)

    def grant_then_stop_the_database(form: dict[str, str]) -> object:
        grant = granting(form)
        if form.get("grant_type") == "refresh_token":
            grants["n"] += 1
            if grants["n"] == 3:  # the answer is on its way; the database goes first
                own_postgres.stop()
                restarted.append(asyncio.get_running_loop().create_task(start_later()))
        return grant

    sim._tokens.grant = grant_then_stop_the_database  # type: ignore[method-assign]

    async def stored_refresh_token() -> str | None:
        conn = await asyncpg.connect(own_postgres.dsn)
        try:
            token: str | None = await conn.fetchval(
                "SELECT refresh_token FROM tiny_tokens WHERE account = 'default'"
            )
            return token
        finally:
            await conn.close()

    caplog.set_level(logging.INFO)
    serving = asyncio.create_task(serve.run(common, options, stop))
    try:
        deadline = time.monotonic() + 60
        while not (restarted and restarted[0].done()) and time.monotonic() < deadline:
            assert not serving.done(), serving.result()
            await asyncio.sleep(0.2)
        assert restarted and restarted[0].done()
        assert (tmp_path / "rescued-tokens").exists()
        grants_back = grants["n"]
        while time.monotonic() < deadline and (
            grants["n"] < grants_back + 2
            or await stored_refresh_token() != sim.valid_refresh_token()
        ):
            assert not serving.done(), serving.result()
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        code = await asyncio.wait_for(serving, 60)
    assert code == 0
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "Tiny rotated the refresh token and the database could not store" in said, said
    assert sim.stats.stale_refresh_uses == 0, said  # the spent token was never presented
    assert "authorize" not in said, said
    assert await stored_refresh_token() == sim.valid_refresh_token()
    assert list((tmp_path / "rescued-tokens").iterdir()) == []  # stored: rescue done


@pytest.mark.parametrize("first_back", ["tiny", "database"])
async def test_serve_rides_out_tiny_and_the_database_away_together(
    first_back: str, simulator, own_postgres: OwnPostgres, caplog
) -> None:
    # Tiny answers 503 (its circuit opens), then PostgreSQL stops too; one comes back
    # 2 s before the other. Serve stays up, and once both are back a cycle makes the
    # mirror exact (the change made during the outages included), with no import failure,
    # `health`'s marker says the last cycle is ok and /readyz is 200 again.
    sim = await simulator(orders=300, seed=46)
    common = fast_db(common_for(sim, own_postgres.dsn, max_retries=2, breaker_failures=3,
                                breaker_cooldown_s=2.0), reconnect_s=1.0)  # fmt: skip
    stop = asyncio.Event()
    options = ServeOptions(interval_s=1, heartbeat_s=30, metrics_port=0, cycle=cycle())
    caplog.set_level(logging.INFO)

    async def query(statement: str) -> object:
        conn = await asyncpg.connect(own_postgres.dsn)
        try:
            return await conn.fetchval(statement)
        finally:
            await conn.close()

    async def mirrored() -> dict[int, dict[str, object]]:
        return await mirror_at(own_postgres.dsn)

    serving = asyncio.create_task(serve.run(common, options, stop))
    try:
        port = await metrics_port(caplog)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (  # noqa: ASYNC110 (serve, the database)
            await readyz(port) != (200, '{"ready": true}') or diff(sim.snapshot(), await mirrored())
        ):
            await asyncio.sleep(0.2)
        assert diff(sim.snapshot(), await mirrored()) == []  # the first sync, before both
        sim.set_status(sorted(sim.orders)[2], Situacao.CANCELADA)
        sim.set_outage("503")
        failed = "SELECT count(*) FROM sync_runs WHERE outcome = 'failed'"
        while not await query(failed) and time.monotonic() < deadline:  # noqa: ASYNC110 (the database)
            await asyncio.sleep(0.2)
        assert await query(failed), caplog.text[-3000:]
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.sleep(2)
        if first_back == "tiny":
            sim.set_outage(None)
            await asyncio.sleep(2)
            await asyncio.to_thread(own_postgres.start)
        else:
            await asyncio.to_thread(own_postgres.start)
            await asyncio.sleep(2)
            sim.set_outage(None)
        assert not serving.done(), serving.result()
        await exact_while_serving(sim, own_postgres.dsn, serving)
        await ready_again(port, 0.5)
        health = await query(f"SELECT valor FROM sync_metadata WHERE chave = '{SERVE_HEALTH_KEY}'")
        assert orjson.loads(str(health))["ok"] is True, health
        assert await query("SELECT count(*) FROM import_failures") == 0
    finally:
        stop.set()
        code = await asyncio.wait_for(serving, 60)
    assert code == 0


async def test_the_warning_of_a_database_that_does_not_answer_says_so(caplog) -> None:
    """A frozen server's TimeoutError has no text: the warning ended on an empty reason
    ("...trying again for up to 30 s: "). It says what the classified error says."""
    calls = itertools.count()

    async def work() -> str:
        if next(calls) == 0:
            raise TimeoutError
        return "answered"

    with caplog.at_level(logging.WARNING, logger="asyncsync.store.resilience"):
        assert await Reconnect(within_s=5.0).run(work, "reading the detail backlog") == "answered"
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "database unavailable; trying again for up to 5 s: reading the detail backlog: "
        "the database did not answer in time (frozen?)"
    ], said


async def test_a_database_that_takes_no_connections_for_a_while_is_ridden_out(
    simulator, database_url, db, admin_dsn
) -> None:
    # A DBA's maintenance step (ALTER DATABASE ... ALLOW_CONNECTIONS false, its sessions
    # cut): every new connection is refused, FATAL 55000. serve exited 1 within 5 s
    # ("running the work queue: ... not currently accepting connections") and a one-shot
    # run exited 1 at once, its reconnect window unused (sweep J).
    sim = await simulator(orders=300, seed=31)
    name = await db.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(admin_dsn)  # a database's own sessions cannot close it
    common = fast_db(common_for(sim, database_url), reconnect_s=1.0)
    stop = asyncio.Event()
    outcomes: list[list[str]] = []
    reopened: list[asyncio.Task[None]] = []

    async def reopen_later() -> None:
        await asyncio.sleep(4)
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    async def after_cycle(rt, reports) -> None:
        outcomes.append([r.outcome.value for r in reports])
        if len(outcomes) == 1:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND application_name LIKE 'asyncsync%'",
                name,
            )
            sim.set_status(sorted(sim.orders)[5], Situacao.CANCELADA)
            reopened.append(asyncio.create_task(reopen_later()))
        elif len(outcomes) == 2:
            stop.set()

    try:
        async with open_runtime(common) as rt:
            options = ServeOptions(interval_s=0.05, heartbeat_s=2, cycle=cycle())
            serving = serve_loop(rt, options, stop, after_cycle=after_cycle)
            code = await asyncio.wait_for(serving, 90)
        await asyncio.gather(*reopened)
        assert code == 0  # the service lived through it
        assert len(outcomes) == 2
        assert diff(sim.snapshot(), await mirror(db)) == []  # the move is in

        # A one-shot run started meanwhile waits out its reconnect window, then says why
        # in one sentence, exit 6 (the database is unavailable), not 1.
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        proc = await asyncsync(
            "sync", "--database-url", database_url, "--api-base-url", sim.base_url,
            "--token-url", sim.token_url, "--db-reconnect", "2", "--log-format", "json",
            env=cli_env(TINY_CLIENT_ID=sim.config.client_id,
                        TINY_CLIENT_SECRET=sim.config.client_secret),
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        text = err.decode()
        assert proc.returncode == 6, text
        last = text.strip().splitlines()[-1]
        assert "not currently accepting connections" in last and "ALLOW_CONNECTIONS" in last
        assert "Traceback" not in text
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
