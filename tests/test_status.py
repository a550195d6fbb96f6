"""``asyncsync status`` and ``asyncsync failures list|retry|ignore``, as an operator runs
them: the real command line, a real database, the bundled simulator."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from urllib.parse import urlsplit

import pytest

from asyncsync.clock import utcnow
from asyncsync.errors import ConfigError
from asyncsync.flags import parse
from asyncsync.modes import execute
from asyncsync.options import IntegrityOptions, RetryOptions, SyncOptions
from asyncsync.report import failed_report
from asyncsync.status import Situacao
from asyncsync.store import Database, open_database
from asyncsync.store.database import connect_pool

from .helpers import common_for, cycle
from .test_cli import run_cli


def cli_json(*args: str, database_url: str) -> tuple[int, dict]:
    result = run_cli(*args, "--json", "--database-url", database_url)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


async def test_status_reports_runs_freshness_mirror_failures_tokens_and_lock(
    simulator, database_url, db, tmp_path
) -> None:
    code, empty = await asyncio.to_thread(cli_json, "status", database_url=database_url)
    assert code == 1  # never synced: stale
    [never] = empty["accounts"]
    assert never["freshness"]["fresh"] is False and never["last_runs"] == {}
    assert never["token"] is None and never["lock"] == {"held": False, "holder": None}

    sim = await simulator(orders=300, seed=31)
    broken = sorted(sim.orders)[:3]
    for order_id in broken:
        sim.fail_detail[order_id] = "malformed"  # the record is at fault
    common = common_for(sim, database_url, max_retries=1)
    assert await execute("sync", common, SyncOptions(cycle=cycle()), asyncio.Event()) == 0
    # A retry with nothing due sends no request: it saw no quota (it recorded the pace it
    # would have started at, and status showed that as the quota seen).
    limited = common_for(sim, database_url, max_retries=1, rate_limit_per_minute=90)
    assert await execute("retry", limited, RetryOptions(), asyncio.Event()) == 0
    await db.execute("UPDATE import_failures SET tentativas = 5 WHERE id_ordem = $1", broken[0])

    async with open_database(database_url, tmp_path) as database:
        store = database.account("default")
        async with store.lock("backfill"):  # another run holds the account
            code, shown = await asyncio.to_thread(cli_json, "status", database_url=database_url)
    assert code == 0
    [status] = shown["accounts"]
    assert status["account"] == "default"
    assert status["freshness"]["fresh"] is True and status["freshness"]["age_s"] < 60
    sync = status["last_runs"]["sync"]
    assert (sync["title"], sync["outcome"], sync["invoked_as"]) == ("full sync", "ok", "sync")
    assert sync["requests"] > 300 and sync["rate_limited_429"] == 0
    assert status["last_success"]["sync"] == sync["finished_at"]
    by_status = {int(k): v for k, v in status["orders_by_status"].items()}
    expected = {int(s): 0 for s in Situacao}
    for order in sim.orders.values():
        expected[int(order.situacao)] += 1
    assert {k: v for k, v in by_status.items() if v} == {k: v for k, v in expected.items() if v}
    assert status["orders_total"] == 300 and status["detail_backlog"] == 0
    assert status["failures"] == {"pending": 2, "manual_review": 1, "ignored": 0}
    token = status["token"]
    assert 0 <= token["refresh_token_age_s"] < 60
    assert 14_000 < token["access_expires_in_s"] <= 14_400  # the simulator's 4 hours
    assert status["quota_per_minute"] == sim.config.rate_limit_per_minute
    assert status["lock"] == {"held": True, "holder": "asyncsync backfill"}

    assert status["integrity_consistent"] is None  # no check yet

    # An integrity check, then orders whose details are not fetched yet (the backlog).
    assert await execute("integrity", common, IntegrityOptions(), asyncio.Event()) == 0
    for order_id in sorted(sim.orders)[10:17]:
        sim.set_status(order_id, Situacao.CANCELADA)
    listing_only = SyncOptions(cycle=cycle(detail_budget=0))
    assert await execute("sync", common, listing_only, asyncio.Event()) == 0
    code, later = await asyncio.to_thread(cli_json, "status", database_url=database_url)
    [after] = later["accounts"]
    moved = sum(1 for i in sorted(sim.orders)[10:17] if i not in broken)
    backlog = await db.fetchval(
        "SELECT count(*) FROM ordens_servico o WHERE detail_stale AND NOT EXISTS (SELECT 1 "
        "FROM import_failures f WHERE f.id_ordem = o.id AND NOT f.resolvido)"
    )  # the orders with an open failure are the retry mode's
    assert after["detail_backlog"] == backlog > 0 and backlog <= moved
    assert after["integrity_consistent"] is True
    assert after["last_runs"]["integrity"]["outcome"] == "ok"
    assert after["last_runs"]["sync"]["title"] == "incremental cycle"

    # The table says the same for a person.
    table = await asyncio.to_thread(
        run_cli, "status", "--log-format", "text", "--database-url", database_url
    )
    assert "account default — fresh: statuses listed completely" in table.stdout
    assert "│ failures for manual review   │ 1 " in table.stdout
    assert "│ run lock                     │ free" in table.stdout

    # A standby (read-only) answers status and health too: their connections made the
    # merges' temporary staging tables, which a standby refuses (exit 6, "read-only").
    name = urlsplit(database_url).path.lstrip("/")
    await db.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        code, standby = await asyncio.to_thread(cli_json, "status", database_url=database_url)
        health = await asyncio.to_thread(run_cli, "health", "--database-url", database_url)
    finally:
        await db.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    assert code == 0 and standby["accounts"][0]["orders_total"] == 300
    assert health.returncode == 0 and health.stdout.startswith("healthy"), health.stdout


async def test_failures_list_retry_and_ignore(simulator, database_url, db) -> None:
    sim = await simulator(orders=200, seed=32)
    broken = sorted(sim.orders)[:4]
    for order_id in broken:
        sim.fail_detail[order_id] = "malformed"  # the record is at fault
    malformed = sim.add_malformed("bad_date", Situacao.EM_ABERTO)
    common = common_for(sim, database_url, max_retries=1)
    assert await execute("sync", common, SyncOptions(cycle=cycle()), asyncio.Event()) == 0
    await db.execute(
        "UPDATE import_failures SET tentativas = 5 WHERE id_ordem = ANY($1)", broken[:2]
    )

    def failures(*args: str) -> dict:
        code, shown = cli_json("failures", *args, database_url=database_url)
        assert code == 0, shown
        return shown

    listed = await asyncio.to_thread(failures, "list")
    states = {f["id"]: f["state"] for f in listed["failures"]}
    assert states == {
        broken[0]: "review", broken[1]: "review", broken[2]: "pending", broken[3]: "pending",
        malformed["id"]: "pending",
    }  # fmt: skip
    assert all(f["error"] for f in listed["failures"])
    review = await asyncio.to_thread(failures, "list", "--state", "review")
    assert sorted(f["id"] for f in review["failures"]) == broken[:2]

    # Ignored: resolved, and the next listing shows the same broken record without reopening it.
    ignored = await asyncio.to_thread(failures, "ignore", str(malformed["id"]), "99")
    assert ignored == {"account": "default", "ignored": [malformed["id"]], "not_open": [99]}
    assert await execute("sync", common, SyncOptions(cycle=cycle()), asyncio.Event()) == 0
    again = await asyncio.to_thread(failures, "list", "--state", "ignored")
    assert [f["id"] for f in again["failures"]] == [malformed["id"]]
    row = await db.fetchrow(
        "SELECT resolvido, tentativas FROM import_failures WHERE id_ordem = $1", malformed["id"]
    )
    assert tuple(row) == (True, 1)

    # Retried now, under the run lock: the API healed, so both resolve.
    sim.fail_detail.clear()
    args = ["failures", "retry", str(broken[0]), str(broken[2]), "--log-format", "json"]
    retried = await asyncio.to_thread(run_cli, *args, "--database-url", database_url, env={
        "TINY_CLIENT_ID": sim.config.client_id, "TINY_CLIENT_SECRET": sim.config.client_secret,
        "TINY_REFRESH_TOKEN": sim.valid_refresh_token(), "TINY_API_BASE_URL": sim.base_url,
        "TINY_TOKEN_URL": sim.token_url, "TINY_RATE_LIMIT_PER_MINUTE": "60000",
    })  # fmt: skip
    assert retried.returncode == 1, retried.stderr  # broken[1] still waits for a person
    report = json.loads(retried.stdout)
    assert report["mode"] == "retry" and report["findings"]["resolved"] == sorted(
        [broken[0], broken[2]]
    )
    assert report["findings"]["manual_review"] == [broken[1]]
    row = await db.fetchrow("SELECT mode, invoked_as FROM sync_runs ORDER BY id DESC LIMIT 1")
    assert tuple(row) == ("retry", "failures")
    left = await asyncio.to_thread(failures, "list")
    assert sorted(f["id"] for f in left["failures"]) == [broken[1], broken[3]]

    refused = run_cli("failures", "ignore", "--database-url", database_url)
    assert refused.returncode == 2 and "needs order ids" in refused.stderr

    # Nothing left for a person: ``retry --all`` says so from the database, with no
    # credentials at hand (it would need them to ask Tiny for anything).
    everyone = await asyncio.to_thread(failures, "ignore", "--all")
    assert everyone["ignored"] == [broken[1]]
    nothing = await asyncio.to_thread(failures, "retry", "--all")
    assert nothing == {"account": "default", "rearmed": []}


async def test_the_latest_runs_are_read_by_index_however_long_the_history(database_url) -> None:
    """``sync_runs`` gains a row every serve cycle (~35,000 a year an account at the
    default interval, kept 400 days): the latest run of each mode, read by the status and by
    every worker's gauges, was a sort of the account's whole history (0.5 s at 100,000
    runs), and listing the accounts read every run. Both are a few index lookups,
    whatever the history's length."""
    async with connect_pool(database_url, max_size=1, application_name="tests") as pool:
        await pool.execute(MANY_RUNS)
        await pool.execute("ANALYZE sync_runs")
        await pool.execute("SELECT pg_stat_force_next_flush()")
        before = await pool.fetchval(ROWS_READ)
        await pool.execute("SELECT pg_stat_force_next_flush()")
        last, success = await Database(pool).account("acme").runs.latest()
        await pool.execute("SELECT pg_stat_force_next_flush()")
        read = await pool.fetchval(ROWS_READ) - before
        accounts = await Database(pool).accounts()  # status --all-accounts
        await pool.execute("SELECT pg_stat_force_next_flush()")
        listed = await pool.fetchval(ROWS_READ) - before - read
    assert accounts == ["acme", "other"]
    assert listed < 50, f"listing the accounts read {listed:,} rows of sync_runs"
    assert {mode: run.outcome for mode, run in last.items()} == {
        "integrity": "ok", "retry": "attention", "sync": "failed"
    }  # fmt: skip
    assert success["sync"].outcome == "ok" and success["sync"].title == "cycle 2"
    assert success.keys() == last.keys()
    assert read < 50, f"the latest runs read {read:,} rows of sync_runs"


async def test_run_history_is_pruned_past_its_days_but_never_the_newest_success(
    database_url,
) -> None:
    """With ``--run-history-days 10`` a run that lands takes its mode's runs older than 10
    days with it, reading the index from the cutoff down (the next run reads a few rows);
    never another account's or another mode's, nor the mode's newest successful run and
    what came after it, however old (the status shows "last success")."""
    async with connect_pool(database_url, max_size=1, application_name="tests") as pool:
        await pool.execute(MANY_RUNS)  # 3,000 runs of acme over 31 days, as many of other
        await pool.execute(OLD_BACKFILLS)
        runs = Database(pool, run_history_days=10).account("acme").runs
        now = utcnow()
        await runs.record(failed_report("sync", "acme", now, RuntimeError("x")), invoked_as="t")
        await runs.record(failed_report("backfill", "acme", now, RuntimeError("x")), invoked_as="t")
        kept = {
            (row["account"], row["mode"]): (row["n"], row["oldest"])
            for row in await pool.fetch(
                "SELECT account, mode, count(*) n, max(now() - started_at) oldest"
                " FROM sync_runs GROUP BY 1, 2"
            )
        }
        last, success = await Database(pool).account("acme").runs.latest()
        await pool.execute("SELECT pg_stat_force_next_flush()")
        before = await pool.fetchval(ROWS_READ)
        await runs.record(failed_report("sync", "acme", utcnow(), RuntimeError("y")),
                          invoked_as="t")  # fmt: skip
        await pool.execute("SELECT pg_stat_force_next_flush()")
        read = await pool.fetchval(ROWS_READ) - before
    n, oldest = kept["acme", "sync"]
    assert oldest < dt.timedelta(days=10), oldest
    assert 950 < n < 965, n  # 4 an hour for 10 days, and the one just recorded
    assert kept["other", "sync"][0] == 2998  # another account's history is untouched
    assert kept["acme", "integrity"][0] == kept["acme", "retry"][0] == 1  # other modes too
    # backfill: ok 40 days ago, failed 30 and 20 days ago, failed now; one older ok gone
    assert kept["acme", "backfill"][0] == 4, kept["acme", "backfill"]
    assert success["backfill"].title == "newest ok" and last["backfill"].outcome == "failed"
    assert success["sync"].outcome == "ok"
    assert read < 50, f"recording a run read {read:,} rows of sync_runs"


async def test_a_run_history_postgresql_cannot_reach_back_to_is_refused(database_url) -> None:
    """Days of history whose cutoff falls before 4713 BC: every run's record failed
    ('timestamp out of range', a warning, the run unrecorded, exit 0), and past 999,999,999
    days every mode failed with an OverflowError traceback. Refused now (exit 2); the
    largest accepted still records."""
    for days in ("10000000", "1000000000"):
        with pytest.raises(ConfigError, match="--run-history-days must be from 0 to 1000000"):
            parse(["sync", "--run-history-days", days], {})
    most = parse(["sync", "--run-history-days", "1000000"], {}).common.database
    async with connect_pool(database_url, max_size=1, application_name="tests") as pool:
        runs = Database(pool, run_history_days=most.run_history_days).account("acme").runs
        await runs.record(failed_report("sync", "acme", utcnow(), RuntimeError("x")),
                          invoked_as="t")  # fmt: skip
        assert await pool.fetchval("SELECT count(*) FROM sync_runs") == 1


OLD_BACKFILLS = """
INSERT INTO sync_runs (account, mode, invoked_as, title, started_at, finished_at, outcome,
                       report)
SELECT 'acme', 'backfill', 'backfill', t, now() - d * interval '1 day',
       now() - d * interval '1 day' + interval '5 s', o, '{"facts": {}}'
FROM (VALUES ('older ok', 50, 'ok'), ('newest ok', 40, 'ok'), ('after', 30, 'failed'),
             ('after', 20, 'failed')) v(t, d, o)
"""

# 3,000 runs of acme (and as many of another account): the newest sync failed, the one
# before it (cycle 2) was ok; a retry and an integrity check long ago.
MANY_RUNS = """
INSERT INTO sync_runs (account, mode, invoked_as, title, started_at, finished_at, outcome,
                       report)
SELECT a, m, 'serve', 'cycle ' || g, now() - g * interval '15 min',
       now() - g * interval '15 min' + interval '5 s',
       CASE WHEN g = 1 AND m = 'sync' THEN 'failed' WHEN m = 'retry' THEN 'attention'
            ELSE 'ok' END,
       '{"facts": {}}'
FROM generate_series(1, 3000) g, unnest(ARRAY['acme', 'other']) a,
     LATERAL (SELECT CASE WHEN g = 2000 THEN 'integrity' WHEN g = 2500 THEN 'retry'
                          ELSE 'sync' END) s(m)
"""

ROWS_READ = """
SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables
WHERE relname = 'sync_runs'
"""


async def test_a_periodic_unit_waiting_for_its_next_turn_is_not_aged_from_its_first_run(
    database_url, db
) -> None:
    """``status`` showed a cycle waiting for its next turn (``deferred``) as old as the row:
    a cycle that put itself back every 15 minutes for three days read "oldest 3 days",
    as if stuck. Its age counts from when it was put back, not from its first enqueue."""
    from pathlib import Path

    async with open_database(database_url, Path("/nonexistent")) as database:
        await database.queue.install()
        await db.execute(
            "INSERT INTO pgqueuer (priority, entrypoint, payload, status, created, updated,"
            " execute_after, dedupe_key) VALUES (0, 'asyncsync.cycle',"
            " convert_to('{\"account\": \"default\"}', 'UTF8'), 'queued',"
            " now() - interval '3 days', now() - interval '1 minute',"
            " now() + interval '14 minutes', 'cycle:default')"
        )
        counts = await database.queue.census("default")
    [deferred] = [c for c in counts if c.kind == "asyncsync.cycle"]
    assert deferred.state == "deferred"
    assert deferred.oldest_s < 3600, deferred  # put back a minute ago, not 3 days
