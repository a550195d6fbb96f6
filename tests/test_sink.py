"""The sink's merge rules, directly: stale observations lose, checkpoints ride along."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

import asyncpg
import pytest

from asyncsync import metrics
from asyncsync.errors import RecordError
from asyncsync.records import FailureRecord, OrderRecord, parse_list_item
from asyncsync.seams import Checkpoint
from asyncsync.store import Database, open_database
from asyncsync.store.database import connect_pool

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def item(order_id: int, situacao: int, valor: str = "10.00") -> dict[str, object]:
    return {"id": order_id, "situacao": situacao, "data": "2025-12-01", "valor": valor}


async def test_a_workers_merge_lands_only_while_its_lease_is_held(db) -> None:
    """A worker frozen past its heartbeat timeout loses its lease session, and its units
    go to another worker; woken, it went on merging the pages it had fetched for up to a
    lease check beside the one that took over (each could write the same status change
    into the history). A worker's merges check the lease before they commit."""
    from asyncsync.errors import LeaseLost
    from asyncsync.records import parse_detail

    database = Database(db)
    async with database.leases("worker-a") as leases:
        assert await leases.take("default") is None
        store = database.account("default", open_statuses=[0], fence=leases.fence("default"))
        sink = store.orders
        await sink.merge_listed([parse_list_item(item(1, 0), T0)])
        pid = leases.session_pid("default")
        assert pid is not None
        await db.execute("SELECT pg_terminate_backend($1)", pid)  # its session timed out
        gone = "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)"
        while not await db.fetchval(gone, pid):  # noqa: ASYNC110 (its locks go with it)
            await asyncio.sleep(0.05)
        later = T0 + dt.timedelta(seconds=1)
        counted = metrics.value("asyncsync_import_failures_total", {"account": "default"})
        bad = [FailureRecord(3, "valor: not a number", '{"id": 3}')]
        with pytest.raises(LeaseLost, match="lease ended"):
            await sink.merge_listed(
                [parse_list_item(item(1, 3), later), parse_list_item(item(2, 0), later)], bad
            )
        detail = parse_detail({"id": 1, "situacao": 3}, 1, later)
        with pytest.raises(LeaseLost):
            await sink.merge_details([detail], bad)
        with pytest.raises(LeaseLost):  # a failure alone (a retry's, a listing's)
            await store.failures.record(bad, now=later, counts_as_attempt=True)
        # Their failures rolled back with them: none written, none counted.
        assert not await db.fetchval("SELECT count(*) FROM import_failures")
        assert metrics.value("asyncsync_import_failures_total", {"account": "default"}) == counted
        assert await leases.check() == {"default"}  # what the worker learns at its next check
    rows = await db.fetch("SELECT id, situacao FROM ordens_servico ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, 0)]  # nothing of the merges after it landed
    history = await db.fetch("SELECT id_os, status_novo FROM ordem_status_history")
    assert [tuple(r) for r in history] == [(1, 0)]


LOCK_SESSION = (  # this database's: a server may hold other asyncsync runs' sessions
    "SELECT pid FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name = 'asyncsync sync'"
)


async def cut_lock_session(db: asyncpg.Pool) -> int:
    """End the session holding a one-shot sync's run lock; return once it is gone (and its
    lock with it): its pid."""
    pid = int(await db.fetchval(LOCK_SESSION))
    await db.execute("SELECT pg_terminate_backend($1)", pid)
    gone = "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)"
    while not await db.fetchval(gone, pid):  # noqa: ASYNC110 (its lock goes)
        await asyncio.sleep(0.05)
    return pid


async def test_a_one_shot_runs_merge_lands_only_while_its_run_lock_is_held(
    db, database_url
) -> None:
    """A one-shot run's lock session ended under it (the run frozen past its statement
    timeout) and another run took the account: woken, its merges landed beside that run's
    until its lock check stopped it. They wait for the lock now: once the check finds
    another holder, the run stops (LockBusy) and nothing of theirs was written."""
    from asyncsync.errors import LockBusy

    other = await asyncpg.connect(database_url)  # another run, on its own session
    try:
        with pytest.raises(LockBusy, match="lost its run lock mid-sync"):
            async with connect_pool(database_url, max_size=4) as pool:
                store = Database(pool).account("default", open_statuses=[0])
                sink = store.orders
                async with store.lock("sync"):
                    await sink.merge_listed([parse_list_item(item(1, 0), T0)])
                    await cut_lock_session(db)
                    taken = "SELECT pg_try_advisory_lock(hashtext($1)::bigint)"
                    assert await other.fetchval(taken, "asyncsync.run:default")
                    later = T0 + dt.timedelta(seconds=1)
                    await sink.merge_listed(
                        [parse_list_item(item(1, 3), later), parse_list_item(item(2, 0), later)]
                    )
    finally:
        await other.close()
    rows = await db.fetch("SELECT id, situacao FROM ordens_servico ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, 0)]  # nothing of the merge after it landed
    history = await db.fetch("SELECT id_os, status_novo FROM ordem_status_history")
    assert [tuple(r) for r in history] == [(1, 0)]


async def test_a_one_shot_runs_merge_after_its_lock_session_died_lands_within_its_reconnect(
    db, database_url, caplog
) -> None:
    """The lock session of a one-shot run died (a database restart, a cut connection) and
    nobody else took the account: the merge that finds the lock gone has the watch take it
    again at once, and lands within the run's --db-reconnect. It waited for the watch's
    next check (up to 5 s, then 5 s more for each failed take), so a restart a run with
    --db-reconnect 2 rode out before the lock check failed it with exit 6."""
    from asyncsync.store.resilience import Reconnect

    async with connect_pool(database_url, max_size=4) as pool:
        store = Database(pool, Reconnect(within_s=2.0)).account("default", open_statuses=[0])
        async with store.lock("sync"):
            await store.orders.merge_listed([parse_list_item(item(1, 0), T0)])
            pid = await cut_lock_session(db)
            later = T0 + dt.timedelta(seconds=1)
            await store.orders.merge_listed([parse_list_item(item(1, 3), later)])
            assert await db.fetchval(LOCK_SESSION) not in (None, pid)  # held again, anew
    rows = await db.fetch("SELECT id, situacao FROM ordens_servico ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, 3)]
    # The dead session's lock went with it: nothing to release, nothing to warn about (it
    # said "could not release asyncsync.run:default cleanly ...: dropping the connection").
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in said if "release" in m or "dropping" in m], said


async def test_a_one_shot_run_whose_lock_session_died_with_no_reconnect_exits_6(
    db, database_url
) -> None:
    """With --db-reconnect 0 nothing is ridden: a merge that finds the run's lock session
    cut (the database up, one session gone) does not wait for the lock to be taken again,
    and the run ends as for any session cut mid-statement, a database outage (exit 6). Its
    sentence said 'the merge waits until the lock is taken again' as the run ended."""
    from asyncsync.cli import report_failure
    from asyncsync.errors import DatabaseUnavailable
    from asyncsync.store.resilience import Reconnect

    async with connect_pool(database_url, max_size=4) as pool:
        store = Database(pool, Reconnect(within_s=0.0)).account("default", open_statuses=[0])
        async with store.lock("sync"):
            await store.orders.merge_listed([parse_list_item(item(1, 0), T0)])
            await cut_lock_session(db)
            later = T0 + dt.timedelta(seconds=1)
            with pytest.raises(DatabaseUnavailable) as ended:
                await store.orders.merge_listed([parse_list_item(item(1, 3), later)])
    rows = await db.fetch("SELECT id, situacao FROM ordens_servico ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, 0)]  # the merge did not land
    assert report_failure("sync", ended.value) == 6
    said = str(ended.value)
    assert said.startswith("account 'default': the session holding this run's lock is gone")
    assert "wait for the lock to be taken again for up to --db-reconnect seconds" in said


async def test_an_account_leased_again_after_its_session_died_is_not_reported_lost(db) -> None:
    """A take that met the dead lease session left every account it held marked lost, to
    be reported at the next check; an account leased again since (its units had ended)
    was reported too, and the check stopped a unit of its new lease."""
    from asyncsync.errors import DatabaseUnavailable

    database = Database(db)
    async with database.leases("worker-a") as leases:
        assert await leases.take("c") is None
        pid = leases.session_pid("c")
        await db.execute("SELECT pg_terminate_backend($1)", pid)
        gone = "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)"
        while not await db.fetchval(gone, pid):  # noqa: ASYNC110 (its locks go with it)
            await asyncio.sleep(0.05)
        with pytest.raises(DatabaseUnavailable):
            await leases.take("x")  # meets the dead session: c is lost with it
        assert await leases.take("c") is None  # its units ended; leased anew
        assert await leases.check() == set()
        assert leases.session_pid("c") is not None


async def test_taking_a_lease_ends_the_open_writes_of_workers_that_lost_theirs(
    database_url, db
) -> None:
    """A worker frozen past its heartbeat timeout loses its lease session, but a COPY of
    its that waits for the frozen process's data is active, not idle: it kept the rows it
    wrote locked for the statement timeout (2 minutes), and the worker that took the
    account over failed every merge on them. Taking a lease ends such transactions (they
    could not commit: the fence); a worker that still holds a lease keeps its own."""
    import asyncpg

    async def session(name: str) -> asyncpg.Connection:
        return await asyncpg.connect(database_url, server_settings={"application_name": name})

    write = (
        "INSERT INTO ordens_servico (account, id, situacao, payload, list_hash, observed_at)"
        " VALUES ($1, $2, 0, '{}', '', now())"
    )
    database = Database(db)
    frozen = await session("asyncsync worker ghost:1")  # its lease session already ended
    busy = await session("asyncsync worker busy:2")
    async with database.leases("asyncsync worker busy:2", 30) as alive:
        assert await alive.take("b0") is None  # a live worker, mid-merge of its account
        for conn, account in ((frozen, "a0"), (busy, "b0")):
            await conn.execute("BEGIN")
            await conn.execute(write, account, 1)
        await asyncio.sleep(0.7)  # both transactions older than the silence bound
        async with database.leases("asyncsync worker new:3", 0.5) as taking:
            assert await taking.take("a0") is None
        gone = "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)"
        for _ in range(40):
            if await db.fetchval(gone, frozen.get_server_pid()):
                break
            await asyncio.sleep(0.05)
        assert await db.fetchval(gone, frozen.get_server_pid()), "the frozen write was left"
        async with db.acquire() as merging, merging.transaction():  # the lock is free now
            await merging.execute("SET LOCAL lock_timeout = '1s'")
            await merging.execute(write, "a0", 1)
        assert await busy.fetchval("SELECT 1") == 1  # the live worker's transaction stays
        await busy.execute("ROLLBACK")
    await busy.close()
    frozen.terminate()


async def test_two_starts_after_an_upgrade_apply_the_schema_once(
    database_url, db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both found the old fingerprint before either took the schema lock, and the second
    applied schema.sql again behind the first (its CREATE INDEX waiting on the merges the
    first one's start had let begin): it asks again under the lock."""
    from asyncsync.store import database as module

    await db.execute("CREATE TABLE schema_applies (n serial)")
    real = module.sql

    def counting(name: str) -> str:
        text = real(name)
        return text + "\nINSERT INTO schema_applies DEFAULT VALUES;" if name == "schema" else text

    monkeypatch.setattr(module, "sql", counting)
    await db.execute("UPDATE asyncsync_schema SET fingerprint = 'the release before'")
    async with connect_pool(database_url, max_size=3) as pool:
        async with db.acquire() as holder, holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock(hashtext('asyncsync.schema'))")
            starts = [asyncio.create_task(module.migrate(pool)) for _ in range(2)]
            await asyncio.sleep(0.5)  # both past their first look, waiting for the lock
        await asyncio.gather(*starts)
    assert await db.fetchval("SELECT count(*) FROM schema_applies") == 1


async def test_two_first_starts_on_an_empty_database_say_created_and_current(admin_dsn) -> None:
    """Both looked for the schema's fingerprint before the lock (no such table, which
    the session then kept), and the second, under the lock, found the first's mirror but
    not its fingerprint: "schema updated from an earlier release's" on a database created
    a second before (sweep J)."""
    from asyncsync.seams import Migration
    from asyncsync.store import database as module
    from asyncsync.store.database import with_database

    name = f"asyncsync_t_empty_{id(admin_dsn) % 100_000}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(admin_dsn, name)
        async with connect_pool(dsn, max_size=3) as pool, pool.acquire() as holder:
            await holder.execute("SELECT pg_advisory_lock(hashtext('asyncsync.schema'))")
            starts = [asyncio.create_task(module.migrate(pool)) for _ in range(2)]
            await asyncio.sleep(0.5)  # both past their first look, waiting for the lock
            await holder.execute("SELECT pg_advisory_unlock(hashtext('asyncsync.schema'))")
            found = sorted(m.value for m in await asyncio.gather(*starts))
        assert found == sorted([Migration.CREATED.value, Migration.CURRENT.value]), found
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_an_older_observation_never_overwrites_a_newer_one(db) -> None:
    sink = Database(db).account("default", open_statuses=[0, 1, 2, 5, 6]).orders
    await sink.merge_listed([parse_list_item(item(1, 6), T0)])
    # Seen as 3 at t+2 (merged first), then a stale page from t+1 still saying 6.
    newer = parse_list_item(item(1, 3), T0 + dt.timedelta(seconds=2))
    stale = parse_list_item(item(1, 6), T0 + dt.timedelta(seconds=1))
    first = await sink.merge_listed([newer])
    second = await sink.merge_listed([stale])
    assert (first.changed, first.status_changes, first.first_sightings) == (1, 1, 0)
    assert (second.changed, second.unchanged, second.status_changes) == (0, 1, 0)
    assert await db.fetchval("SELECT situacao FROM ordens_servico WHERE id = 1") == 3
    rows = await db.fetch(
        "SELECT status_antigo, status_novo FROM ordem_status_history ORDER BY seq"
    )
    assert [tuple(r) for r in rows] == [(None, 6), (6, 3)]


async def test_one_batch_with_an_order_twice_keeps_the_latest(db) -> None:
    sink = Database(db).account("default", open_statuses=[0]).orders
    batch = [
        parse_list_item(item(7, 0), T0 + dt.timedelta(seconds=1)),
        parse_list_item(item(7, 5), T0 + dt.timedelta(seconds=3)),
        parse_list_item(item(8, 0), T0),
    ]
    stats = await sink.merge_listed(batch)
    assert (stats.received, stats.inserted, stats.first_sightings) == (3, 2, 2)
    assert await db.fetchval("SELECT situacao FROM ordens_servico WHERE id = 7") == 5
    assert await db.fetchval("SELECT count(*) FROM ordem_status_history") == 2


async def test_mixed_batch_and_checkpoint_commit_together(db) -> None:
    sink = Database(db).account("default", open_statuses=[0]).orders
    await sink.merge_listed([parse_list_item(item(1, 0), T0)])
    mixed = [
        parse_list_item(item(1, 0, valor="11.00"), T0 + dt.timedelta(seconds=1)),  # changed
        parse_list_item(item(2, 0), T0 + dt.timedelta(seconds=1)),  # new
    ]
    stats = await sink.merge_listed(mixed, checkpoints=[Checkpoint("k", '{"offset": 2}')])
    assert (stats.inserted, stats.changed, stats.status_changes) == (1, 1, 0)
    assert stats.first_sightings == 1  # the new order; the changed one kept its status
    assert await Database(db).account("default").metadata.get("k") == '{"offset": 2}'
    assert await db.fetchval("SELECT valor FROM ordens_servico WHERE id = 1") == 11
    assert await db.fetchval("SELECT detail_stale FROM ordens_servico WHERE id = 1") is True


async def test_a_merge_cancelled_mid_copy_leaves_nothing_and_the_pool_works(db) -> None:
    sink = Database(db).account("default", open_statuses=[0]).orders
    batch = [parse_list_item(item(i, 3), T0) for i in range(1, 200_001)]
    task = asyncio.create_task(sink.merge_listed(batch))
    await asyncio.sleep(0.3)  # inside the COPY of 200k rows
    assert not task.done()  # the cancel lands inside the merge's transaction
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The transaction rolled back as a whole, and the connections still serve.
    assert await db.fetchval("SELECT count(*) FROM ordens_servico") == 0
    assert await db.fetchval("SELECT count(*) FROM ordem_status_history") == 0
    stats = await sink.merge_listed(batch[:1000])
    assert stats.inserted == 1000


async def test_accounts_share_a_database_without_touching_each_other(db) -> None:
    a, b = (
        Database(db).account("loja-a", open_statuses=[0]).orders,
        Database(db).account("loja-b", open_statuses=[0]).orders,
    )
    await a.merge_listed([parse_list_item(item(1, 0), T0), parse_list_item(item(2, 3), T0)])
    await b.merge_listed([parse_list_item(item(1, 3), T0)])  # same Tiny id, other account
    assert await a.counts_by_status() == {0: 1, 3: 1}
    assert await b.counts_by_status() == {3: 1}
    await Database(db).account("loja-a").metadata.set("k", "a")
    assert await Database(db).account("loja-b").metadata.get("k") is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("valor", 10**12), ("valor", "1.000.000.000.000,00"), ("id", 2**63), ("id", -4)],
)
def test_values_the_columns_cannot_hold_are_bad_records(field: str, value: object) -> None:
    raw = {**item(1, 3), field: value}
    with pytest.raises(RecordError, match=field):
        parse_list_item(raw, T0)


async def test_an_emptied_mirror_does_not_leave_a_whole_table_lookup_behind(database_url) -> None:
    """A cached generic plan, built while ``ordens_servico`` is empty, probes by the
    account alone (the first column of another index) and reads every row of the account
    for each id of a batch. Plans are made for each execution's values instead: the
    lookup of a re-sync after the table was emptied and refilled reads no other index."""

    def batch(ids: range, situacao: int, at: int) -> list[OrderRecord]:
        return [parse_list_item(item(i, situacao), T0 + dt.timedelta(seconds=at)) for i in ids]

    async with connect_pool(database_url, max_size=1, application_name="tests") as pool:
        sink = Database(pool).account("default", open_statuses=[0]).orders
        await sink.merge_listed(batch(range(1, 201), 0, 0))
        for at in range(1, 9):  # enough executions of the lookup for a generic plan
            await sink.merge_listed(batch(range(1, 201), 0, at))
        await pool.execute("TRUNCATE ordens_servico, ordem_status_history")
        await sink.merge_listed(batch(range(1, 201), 0, 10))  # planned on an empty table
        for start in range(201, 4001, 400):
            await sink.merge_listed(batch(range(start, start + 400), 0, 11))
        await pool.execute("SELECT pg_stat_force_next_flush()")
        before = await pool.fetchval(INDEX_TUPLES_READ)
        await pool.execute("SELECT pg_stat_force_next_flush()")
        stats = await sink.merge_listed(batch(range(1, 1001), 5, 12))  # a re-sync
        await pool.execute("SELECT pg_stat_force_next_flush()")
        after = await pool.fetchval(INDEX_TUPLES_READ)
    assert (stats.changed, stats.status_changes) == (1000, 1000)
    assert after - before < 1000, f"the lookup read {after - before:,} entries of another index"


INDEX_TUPLES_READ = """
SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes
WHERE relname = 'ordens_servico' AND indexrelname <> 'ordens_servico_pkey'
"""


async def test_a_first_load_copies_new_batches_straight_in_and_falls_back_on_a_known_id(
    db,
) -> None:
    """After an all-new batch the next is copied without the lookup; one whose ids are
    partly in the mirror already is sent back through it, whole, with nothing doubled."""
    sink = Database(db).account("default", open_statuses=[0]).orders
    for start in (1, 101):
        stats = await sink.merge_listed(
            [parse_list_item(item(i, 0), T0) for i in range(start, start + 100)]
        )
        assert (stats.inserted, stats.first_sightings) == (100, 100)
    later = T0 + dt.timedelta(seconds=5)
    mixed = [parse_list_item(item(i, 5 if i <= 200 else 0), later) for i in range(151, 251)]
    stats = await sink.merge_listed(mixed, checkpoints=[Checkpoint("k", '"after"')])
    assert (stats.inserted, stats.changed, stats.status_changes) == (50, 50, 50)
    rows = await db.fetch("SELECT id, situacao FROM ordens_servico ORDER BY id")
    assert [(r["id"], r["situacao"]) for r in rows] == [
        (i, 5 if 151 <= i <= 200 else 0) for i in range(1, 251)
    ]
    history = await db.fetch(
        "SELECT id_os, status_antigo, status_novo FROM ordem_status_history ORDER BY id_os, seq"
    )
    expected = [(i, None, 0) for i in range(1, 251)] + [(i, 0, 5) for i in range(151, 201)]
    assert [tuple(r) for r in history] == sorted(expected, key=lambda r: (r[0], r[1] is not None))
    assert await db.fetchval("SELECT valor FROM sync_metadata WHERE chave = 'k'") == '"after"'


OLD_HISTORY = """
DROP TABLE ordem_status_history CASCADE;  -- and the view over it: migrate makes it again
CREATE TABLE ordem_status_history (
    seq bigserial PRIMARY KEY, account text NOT NULL DEFAULT 'default', id_os bigint NOT NULL,
    status_antigo smallint, status_novo smallint NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(), source text NOT NULL DEFAULT 'list'
);
CREATE INDEX idx_ordem_status_history_os ON ordem_status_history (account, id_os, changed_at);
DROP TABLE asyncsync_schema;  -- older installs had no fingerprint of their schema.sql
"""

HISTORY_INDEXES = """
SELECT i.indexrelid::regclass::text AS name, i.indisprimary AS primary,
       array_agg(a.attname::text ORDER BY k.ord) AS columns
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = 'ordem_status_history'::regclass
GROUP BY 1, 2
"""


async def test_an_older_install_has_its_history_rekeyed_by_order_and_keeps_it(db) -> None:
    """Installs from before 2026-12-06 keyed the history by seq, plus an index by order;
    migrating leaves one primary key (account, id_os, seq), every row, and the sequence."""
    from asyncsync.store.database import migrate

    fresh = [tuple(r) for r in await db.fetch(HISTORY_INDEXES)]
    await db.execute(OLD_HISTORY)
    sink = Database(db).account("default", open_statuses=[0]).orders
    await sink.merge_listed([parse_list_item(item(i, 0), T0) for i in (5, 3, 4)])
    await sink.merge_listed([parse_list_item(item(3, 5), T0 + dt.timedelta(seconds=1))])
    before = [tuple(r) for r in await db.fetch("SELECT * FROM ordem_status_history ORDER BY seq")]
    assert len(before) == 4 and len(await db.fetch(HISTORY_INDEXES)) == 2

    for _ in range(2):  # the second run finds nothing to do
        await migrate(db)
        indexes = [tuple(r) for r in await db.fetch(HISTORY_INDEXES)]
        assert (
            indexes == fresh == [("ordem_status_history_pkey", True, ["account", "id_os", "seq"])]
        )
    after = [tuple(r) for r in await db.fetch("SELECT * FROM ordem_status_history ORDER BY seq")]
    assert after == before
    await sink.merge_listed([parse_list_item(item(3, 6), T0 + dt.timedelta(seconds=2))])
    seqs = [r["seq"] for r in await db.fetch("SELECT seq FROM ordem_status_history ORDER BY seq")]
    assert seqs == [1, 2, 3, 4, 5]


async def test_a_start_skips_the_schema_it_already_has_and_waits_on_no_merge(
    database_url, db
) -> None:
    """Applying schema.sql at every start waited for every write in flight on
    ``ordens_servico`` (``CREATE INDEX IF NOT EXISTS`` takes a SHARE lock even when the
    index is there) and held back the writes queued behind it: a run started next to a
    worker's long merge failed on its lock timeout. A start now skips the schema it
    already has; a changed schema.sql is applied, and ``migrate`` applies it always."""
    from asyncsync.store.database import migrate

    async with db.acquire() as writer, writer.transaction():
        await writer.execute(
            "INSERT INTO ordens_servico (id, situacao, payload, list_hash, observed_at)"
            " VALUES (1, 0, '{}', '', now())"
        )  # a merge in flight, holding ROW EXCLUSIVE on ordens_servico
        async with open_database(database_url, Path("/nonexistent"), lock_timeout_s=1):
            pass  # applied, it would wait 1 s for the lock and fail
    await db.execute("DROP INDEX idx_ordens_servico_detail_stale")
    indexes = "SELECT count(*) FROM pg_indexes WHERE tablename = 'ordens_servico'"
    await migrate(db)
    assert await db.fetchval(indexes) == 2  # the same schema.sql: not applied
    await migrate(db, always=True)  # asyncsync migrate
    assert await db.fetchval(indexes) == 3
    await db.execute("DROP INDEX idx_ordens_servico_detail_stale")
    await db.execute("UPDATE asyncsync_schema SET fingerprint = 'an older schema.sql'")
    await migrate(db)
    assert await db.fetchval(indexes) == 3


async def test_a_merge_tried_again_still_resolves_a_failure_of_an_order_read_whole(
    simulator, runtime_for, db, monkeypatch
) -> None:
    """The connection drops after the listing merge resolved an open failure of an order
    it read whole: the transaction rolls back and the merge is tried again, which must
    resolve it again (the ids with an open failure it keeps are what the database holds,
    not what a rolled-back transaction did)."""
    import datetime as dt

    from asyncsync.clock import utcnow
    from asyncsync.records import FailureRecord
    from asyncsync.store.orders import PgOrderStore

    from .helpers import full_sync

    sim = await simulator(orders=40, seed=3)
    victim = sorted(sim.orders)[5]
    real = PgOrderStore._resolve_listed
    dropped = []

    async def drop_once(self, conn, records, now):
        resolved = await real(self, conn, records, now)
        if not dropped and any(r.id == victim for r in records):
            dropped.append(victim)
            raise ConnectionResetError("the connection dropped")
        return resolved

    async with runtime_for(sim) as rt:
        await full_sync(rt)
        # Its detail failed five times (manual review); since fixed in Tiny.
        t = utcnow() - dt.timedelta(hours=6)
        for n in range(5):
            await rt.store.failures.record(
                [FailureRecord(victim, "TinyBadPayload: not JSON", None)],
                now=t + dt.timedelta(hours=n),
                counts_as_attempt=True,
            )
    monkeypatch.setattr(PgOrderStore, "_resolve_listed", drop_once)
    async with runtime_for(sim) as rt:  # the next run: it reads the open failures afresh
        await full_sync(rt)
    assert dropped == [victim]
    assert await db.fetchval("SELECT resolvido FROM import_failures WHERE id_ordem = $1", victim)


async def test_a_stores_first_merge_asks_which_orders_are_new_alone(
    db, database_url, monkeypatch
) -> None:
    """A store's first merge asks which of its ids are new (find_changed.sql) of a mirror
    that may be empty and never analyzed: the planner then looks each id up through the
    status index, walking every entry of the account, and the entries a merge in flight
    is COPYing count too (5,000 ids by 5,000 entries: from seconds to over a minute of
    PostgreSQL CPU, seen four times in 200 fast first loads with auto_explain). So a
    second merge waits for the first's answer (is this a first load?), then copies its
    orders straight in beside it; before, with two merges in flight, both asked at once."""
    from asyncsync.store import orders
    from asyncsync.store.resilience import Reconnect

    asked: list[str] = []
    named = orders.sql

    def spied(name: str) -> str:
        asked.append(name)
        return named(name)

    monkeypatch.setattr(orders, "sql", spied)
    release = asyncio.Event()
    checked: list[int] = []

    class HeldFence:  # holds the first merge in its transaction, before it commits
        async def check(self, conn: asyncpg.Connection) -> None:
            checked.append(len(checked))
            if len(checked) == 1:
                await release.wait()

    async with connect_pool(database_url, max_size=4) as pool:
        store = Database(pool, Reconnect(within_s=0.0)).account(
            "default",
            open_statuses=[0],
            fence=HeldFence(),  # type: ignore[arg-type]
        )
        batch = [[parse_list_item(item(i, 0), T0) for i in range(k, k + 50)] for k in (1, 51)]
        first, second = (asyncio.create_task(store.orders.merge_listed(b)) for b in batch)
        for _ in range(500):  # the one that asked is held; the other goes on beside it
            if len(checked) == 2:
                break
            await asyncio.sleep(0.01)
        beside = len(checked) == 2
        release.set()
        stats = await asyncio.gather(first, second)
    assert beside, "the second merge waited for the first to commit"
    assert asked.count("find_changed") == 1  # the other waited for the answer, then copied
    assert [s.inserted for s in stats] == [50, 50]
    assert await db.fetchval("SELECT count(*) FROM ordens_servico") == 100
    assert await db.fetchval("SELECT count(*) FROM ordem_status_history") == 100
