"""Many accounts, many workers: three ``asyncsync serve`` processes share twenty accounts
(each its own simulator: quota, rotating tokens, data); one worker is SIGKILLed mid-run.

Every account's mirror ends equal to its simulator, no simulator ever refused a request
for quota (its ``window_peak`` within its limit), no refresh token was spent twice, and
every unit the killed worker held was finished by the others — a backfill month from its
checkpoints."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time
from pathlib import Path

import asyncpg

from asyncsync.simulator import TinySimulator

from .mirror import diff, mirror

ACCOUNTS = 20
HISTORY = ("acct00", "acct01")  # accounts that also get a backfill of a year
HEARTBEAT_S = 3


def environment(extra: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
    clean.pop("DATABASE_URL", None)
    return {**clean, **extra}


async def cli(*args: str, env: dict[str, str], log: Path | None = None) -> int:
    out = log.open("wb") if log else asyncio.subprocess.DEVNULL
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncsync", *args, env=environment(env),
        stdout=asyncio.subprocess.DEVNULL, stderr=out,
    )  # fmt: skip
    return await asyncio.wait_for(proc.wait(), 60)


async def add_accounts(sims: dict[str, TinySimulator], database_url: str) -> dict[str, str]:
    """``asyncsync accounts add`` for the first account; the others get the same row and
    first cycle written here (a CLI process each took ~18 s of this 2-core machine for
    twenty). Returns the workers' environment: each account's secrets, by the names the
    table holds."""
    from asyncsync.accounts import AccountConfig
    from asyncsync.store import open_database
    from asyncsync.work.units import Kind, Unit

    env: dict[str, str] = {}
    for key, sim in sims.items():
        env[f"SECRET_{key}"] = sim.config.client_secret
        env[f"REFRESH_{key}"] = sim.valid_refresh_token() or ""
    (key, sim), *others = sims.items()
    code = await cli(
        "accounts", "add", key, "--database-url", database_url,
        "--api-base-url", sim.base_url, "--token-url", sim.token_url,
        "--client-id", sim.config.client_id, "--client-secret-env", f"SECRET_{key}",
        "--refresh-token-env", f"REFRESH_{key}", env={},
    )  # fmt: skip
    assert code == 0, key
    async with open_database(database_url, Path("/nonexistent")) as database:
        for key, sim in others:  # what accounts add writes: its row, its first cycle
            assert await database.registry.put(AccountConfig(
                key=key, api_base_url=sim.base_url, token_url=sim.token_url,
                client_id=sim.config.client_id, client_secret_env=f"SECRET_{key}",
                refresh_token_env=f"REFRESH_{key}",
            )) == (True, True)  # fmt: skip
            await database.queue.enqueue([Unit(Kind.CYCLE, key).item()])
    return env


async def start_worker(
    args: list[str], env: dict[str, str], log: Path
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncsync", *args, env=environment(env),
        stdout=asyncio.subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip


def queue_worker(log: Path) -> str:
    """The queue's id of a worker, from the line it logs when it starts picking."""
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("event") == "queue_started":
            return str(entry["queue_worker"])
    raise AssertionError(f"{log} has no queue_started line")


async def test_three_workers_twenty_accounts_one_killed(
    simulator, database_url, db, tmp_path
) -> None:
    year_ago = dt.date.today().replace(day=1) - dt.timedelta(days=330)
    sims: dict[str, TinySimulator] = {}
    for i in range(ACCOUNTS):
        key = f"acct{i:02d}"
        history = key in HISTORY
        sims[key] = await simulator(
            orders=200 if history else 60, seed=100 + i,
            start_year=year_ago.year if history else 2014,
            max_limit=5 if history else 100,  # small pages: long, checkpointed partitions
            # The history accounts are the ones their quota binds (~900 requests each,
            # cycles every 2 s and the backfill): 1,800/min halves their wait.
            rate_limit_per_minute=1800 if history else 900, latency_s=0.02, access_ttl_s=20.0,
        )  # fmt: skip
    env = await add_accounts(sims, database_url)
    for key in HISTORY:
        code = await cli("backfill", "--account", key, "--enqueue", "--from",
                         f"{year_ago:%Y-%m}", "--database-url", database_url, env={})  # fmt: skip
        assert code == 0
    args = [
        "serve", "--database-url", database_url, "--interval", "2", "--slots", "8",
        "--background-slots", "2", "--heartbeat-timeout", str(HEARTBEAT_S),
        "--integrity-interval", "0", "--max-concurrency", "4", "--log-format", "json",
    ]  # fmt: skip
    logs = [tmp_path / f"worker{n}.log" for n in range(3)]
    procs = [await start_worker(args, env, log) for log in logs]
    started = time.monotonic()
    try:
        # Kill the worker running a backfill month halfway through one of its partitions.
        victim, held = await kill_mid_backfill(db, procs, logs, started)
        killed_name = f"asyncsync worker {os.uname().nodename}:{procs[victim].pid}"
        await converge(db, sims, held, killed_name, started)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 60) for p in procs]
    assert codes[victim] == -signal.SIGKILL
    assert all(c == 0 for n, c in enumerate(codes) if n != victim), codes
    for key, sim in sims.items():
        assert diff(sim.snapshot(), await mirror(db, key)) == [], key
        stats = sim.stats
        assert stats.rate_limited == 0 and stats.window_peak <= sim.rate_limit, (key, stats)
        assert stats.stale_refresh_uses == 0, key
        assert stats.token_refreshes >= 2, key  # tokens rotated while workers came and went
    # The killed worker's units were finished by the others: each has a run recorded by
    # another worker after the kill; its backfill months resumed from their checkpoints.
    finished = await runs_of(db, held)
    for unit_id, kind in held.items():
        after = [r for r in finished if r["unit"] == str(unit_id) and r["worker"] != killed_name]
        assert after, f"unit {unit_id} ({kind}) was not finished by another worker"
        if kind == "asyncsync.backfill":
            assert any(r["outcome"] == "ok" for r in after)
    resumed = [r for r in finished if r["mode"] == "backfill" and r["resumed"] > 0]
    assert resumed and all(r["worker"] != killed_name for r in resumed)


async def kill_mid_backfill(
    db: asyncpg.Pool, procs: list[asyncio.subprocess.Process], logs: list[Path], started: float
) -> tuple[int, dict[int, str]]:
    """SIGKILL the worker holding a backfill month with a partition part done; returns its
    index and the units it held when it died (id → kind)."""
    while time.monotonic() - started < 90:
        row = await db.fetchrow(
            "SELECT q.id, q.queue_manager_id::text AS worker FROM pgqueuer q "
            "JOIN sync_metadata m ON m.account = convert_from(q.payload, 'UTF8')::jsonb "
            "->> 'account' AND m.chave LIKE 'backfill:' || (convert_from(q.payload, "
            "'UTF8')::jsonb ->> 'month') || ':%' "
            "WHERE q.status = 'picked' AND q.entrypoint = 'asyncsync.backfill' "
            "AND (m.valor::jsonb ->> 'offset')::int > 0 "
            "AND NOT (m.valor::jsonb ->> 'complete')::boolean LIMIT 1"
        )
        if row is not None:
            ids = {queue_worker(log): n for n, log in enumerate(logs)}
            victim = ids[row["worker"]]
            procs[victim].send_signal(signal.SIGKILL)
            await procs[victim].wait()
            held = await db.fetch(
                "SELECT id, entrypoint FROM pgqueuer WHERE status = 'picked' "
                "AND queue_manager_id::text = $1",
                row["worker"],
            )
            assert any(r["entrypoint"] == "asyncsync.backfill" for r in held)
            return victim, {r["id"]: r["entrypoint"] for r in held}
        await asyncio.sleep(0.05)
    raise AssertionError("no backfill month was caught halfway")


async def runs_of(db: asyncpg.Pool, units: dict[int, str]) -> list[dict[str, object]]:
    rows = await db.fetch(
        "SELECT mode, outcome, report -> 'facts' ->> 'unit' AS unit, "
        "report -> 'facts' ->> 'worker' AS worker, "
        "coalesce((counts ->> 'partitions_resumed')::int, 0) AS resumed "
        "FROM sync_runs WHERE report -> 'facts' ->> 'unit' = ANY($1::text[]) ORDER BY id",
        [str(u) for u in units],
    )
    return [dict(r) for r in rows]


async def converge(
    db: asyncpg.Pool,
    sims: dict[str, TinySimulator],
    held: dict[int, str],
    killed: str,
    started: float,
) -> None:
    """Wait until every mirror holds its simulator's orders, no backfill is left and every
    unit of the killed worker has run again elsewhere."""
    while time.monotonic() - started < 110:
        counts = {r["account"]: r["n"] for r in await db.fetch(
            "SELECT account, count(*) FILTER (WHERE NOT detail_stale) AS n "
            "FROM ordens_servico GROUP BY account")}  # fmt: skip
        complete = all(counts.get(k, 0) == len(s.orders) for k, s in sims.items())
        backfill = await db.fetchval(
            "SELECT count(*) FROM pgqueuer WHERE entrypoint = 'asyncsync.backfill'"
        )
        runs = await runs_of(db, held)
        taken = {str(u) for u in held} <= {str(r["unit"]) for r in runs if r["worker"] != killed}
        if complete and backfill == 0 and taken:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"not converged: mirrors {counts}, backfill left {backfill}")


async def test_many_accounts_refresh_at_once_on_a_small_pool(database_url) -> None:
    # A worker refreshes the tokens of many accounts at once: each refresh holds its
    # account's token lock on one connection and must read and write its row on that same
    # connection, or the lock holders fill the pool waiting for a second one.
    from asyncsync.seams import TokenSet
    from asyncsync.store import open_database

    async with open_database(database_url, Path("/nonexistent"), max_size=3) as database:
        stores = [database.account(f"a{i}").tokens for i in range(12)]

        async def refresh(n: int) -> None:
            store = stores[n]
            async with store.exclusive():
                await store.load()
                await asyncio.sleep(0.05)  # the token endpoint answers
                await store.save(TokenSet(refresh_token=f"r{n}"))

        await asyncio.wait_for(asyncio.gather(*(refresh(n) for n in range(12))), 20)
        assert [(await s.load()).refresh_token for s in stores] == [f"r{n}" for n in range(12)]  # type: ignore[union-attr]


async def test_a_one_shot_run_and_a_worker_exclude_each_other(simulator, runtime_for, db) -> None:
    # The lease is the account's run lock: while a one-shot run holds it, the worker puts
    # the account's units back on the queue (no slot waits); once it is free, they run.
    from asyncsync.modes.serve import serve_loop
    from asyncsync.options import ServeOptions

    from .helpers import cycle

    sim = await simulator(orders=40)
    async with runtime_for(sim) as rt:
        lock = rt.store.lock("sync")
        await lock.__aenter__()
        options = ServeOptions(interval_s=60, cycle=cycle())
        task = asyncio.create_task(serve_loop(rt, options, asyncio.Event(), max_cycles=1))
        await asyncio.sleep(5)
        assert not task.done() and await db.fetchval("SELECT count(*) FROM sync_runs") == 0
        bounced = await db.fetchval(
            "SELECT attempts FROM pgqueuer WHERE entrypoint = 'asyncsync.cycle'"
        )
        assert bounced >= 1  # back on the queue while the one-shot run held the account
        await lock.__aexit__(None, None, None)
        assert await asyncio.wait_for(task, 30) == 0
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_a_frozen_workers_accounts_go_on_elsewhere(
    simulator, database_url, db, tmp_path
) -> None:
    """A worker frozen, not dead (SIGSTOP, a paused container, a stuck event loop): the
    queue hands its units to another worker after --heartbeat-timeout, and its lease
    session, which the kernel keeps open, must end too, or the account goes without a
    cycle for as long as the freeze lasts (its units put back every few seconds)."""
    sims = {f"a{i}": await simulator(orders=30, seed=i, latency_s=0.3) for i in range(3)}
    env = await add_accounts(sims, database_url)
    args = ["serve", "--database-url", database_url, "--interval", "1", "--heartbeat-timeout",
            "3", "--integrity-interval", "0", "--log-format", "json"]  # fmt: skip
    logs = [tmp_path / f"worker{n}.log" for n in range(2)]
    procs = [await start_worker(args, env, log) for log in logs]
    frozen = None
    try:
        deadline = time.monotonic() + 30
        while (row := await db.fetchrow(
            "SELECT queue_manager_id::text AS worker, "
            "convert_from(payload, 'UTF8')::jsonb ->> 'account' AS account FROM pgqueuer "
            "WHERE status = 'picked' AND entrypoint = 'asyncsync.cycle' "
            "AND EXISTS (SELECT 1 FROM sync_runs) LIMIT 1"
        )) is None:  # fmt: skip
            assert time.monotonic() < deadline, "no cycle was caught running"
            await asyncio.sleep(0.05)
        frozen = {queue_worker(log): n for n, log in enumerate(logs)}[row["worker"]]
        os.kill(procs[frozen].pid, signal.SIGSTOP)  # mid-cycle, holding the account
        froze_at = await db.fetchval("SELECT now()")
        account = row["account"]
        # Usually 4-13 s (a frozen merge's transaction is ended after 10 s); once, in a
        # clean-clone CI run, over 25 s: the bound says "not for as long as the freeze".
        deadline = time.monotonic() + 40
        while not await db.fetchval(
            "SELECT count(*) FROM sync_runs WHERE account = $1 AND mode = 'sync' "
            "AND started_at > $2", account, froze_at
        ):  # fmt: skip
            assert time.monotonic() < deadline, (
                f"{account} had no cycle in 40 s while the worker holding it was frozen "
                f"(heartbeat timeout 3 s)"
            )
            await asyncio.sleep(0.2)
        os.kill(procs[frozen].pid, signal.SIGCONT)  # it wakes to a lease it no longer has
        frozen = None
        for sim in sims.values():
            sim.set_status(next(iter(sim.orders)), 3)
        # Every account has a cycle after the wake: the change each was given arrives
        # within the 8 s this test used to sleep (checked again below, once they stop).
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            if not [k for k, s in sims.items() if diff(s.snapshot(), await mirror(db, k))]:
                break
            await asyncio.sleep(0.2)
    finally:
        for proc in procs:
            if frozen is not None:
                proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 60) for p in procs]
    assert codes == [0, 0]
    for key, sim in sims.items():
        assert diff(sim.snapshot(), await mirror(db, key)) == [], key


async def test_a_worker_frozen_mid_merge_does_not_stall_its_account_elsewhere(
    simulator, database_url, db, tmp_path
) -> None:
    """A worker frozen inside a merge's transaction (its orders written, not committed)
    kept that transaction, and the rows' locks, for as long as the freeze lasted: the
    worker its account went to failed every cycle on those locks, and a worker starting
    could not even apply schema.sql. The server ends such a transaction now."""
    sim = await simulator(orders=4000, seed=7)
    env = await add_accounts({"a0": sim}, database_url)
    args = ["serve", "--database-url", database_url, "--interval", "1", "--heartbeat-timeout",
            "3", "--lock-timeout", "2", "--db-reconnect", "2", "--integrity-interval", "0",
            "--log-format", "json"]  # fmt: skip
    procs = [await start_worker(args, env, tmp_path / f"worker{n}.log") for n in range(2)]
    # A worker's sessions carry its name (asyncsync worker host:pid), over TCP or a socket.
    open_writes = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE '%:' || $1::text AND backend_xid IS NOT NULL"
    )
    frozen: asyncio.subprocess.Process | None = None
    try:
        deadline = time.monotonic() + 60
        while frozen is None:  # freeze a worker while a transaction of its has written
            assert time.monotonic() < deadline, "no merge was caught open"
            for proc in procs:
                if not await db.fetchval(open_writes, str(proc.pid)):
                    continue
                os.kill(proc.pid, signal.SIGSTOP)
                await asyncio.sleep(0.3)  # a statement sent before the stop has ended
                idle = f"{open_writes} AND state = 'idle in transaction'"
                if await db.fetchval(idle, str(proc.pid)):
                    frozen = proc
                    break
                os.kill(proc.pid, signal.SIGCONT)
            await asyncio.sleep(0.005)
        froze_at = await db.fetchval("SELECT now()")
        procs.append(await start_worker(args, env, tmp_path / "worker2.log"))  # one more
        deadline = time.monotonic() + 30
        while await db.fetchval(
            "SELECT count(*) FILTER (WHERE started_at > $1 AND mode = 'sync' "
            "AND outcome = 'ok') < 2 FROM sync_runs WHERE account = 'a0'", froze_at
        ):  # fmt: skip
            assert time.monotonic() < deadline, (
                "a0 had not two cycles ended ok in 30 s while the worker holding it was "
                "frozen mid-merge (heartbeat timeout 3 s)"
            )
            await asyncio.sleep(0.2)
        os.kill(frozen.pid, signal.SIGCONT)  # it wakes to a lease and a transaction gone
        frozen = None
        deadline = time.monotonic() + 60
        while diff(sim.snapshot(), await mirror(db, "a0")):
            assert time.monotonic() < deadline, diff(sim.snapshot(), await mirror(db, "a0"))
            await asyncio.sleep(1)
    finally:
        if frozen is not None:
            os.kill(frozen.pid, signal.SIGCONT)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 60) for p in procs]
    assert codes == [0, 0, 0]
