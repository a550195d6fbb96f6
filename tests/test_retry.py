"""Issue 5, retries: exponential backoff on a controllable clock, then manual review."""

from __future__ import annotations

import asyncio
import datetime as dt

import orjson
import pytest

from asyncsync.clock import utcnow
from asyncsync.errors import DatabaseError, TinyUnavailable
from asyncsync.jobs.retry import DEFAULT_POLICY, retry_due
from asyncsync.options import ServeOptions
from asyncsync.records import FailureRecord, canonical_json, synthetic_id
from asyncsync.report import Outcome, RunReport, render_text
from asyncsync.seams import RetryPolicy
from asyncsync.simulator import TinySimulator
from asyncsync.status import Situacao
from asyncsync.work.cycle import cycle as serve_cycle

from . import helpers
from .helpers import full_sync
from .mirror import diff, mirror

SECOND = dt.timedelta(seconds=1)

FAST = {"max_retries": 2}


def test_the_schedule_is_30s_2min_8min_32min_then_nothing() -> None:
    p = DEFAULT_POLICY
    assert [p.delay_s(n) for n in (1, 2, 3, 4)] == [30, 120, 480, 1920]
    t = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert p.due_at(t, 1) == t + dt.timedelta(seconds=30)
    assert p.due_at(t, 4) == t + dt.timedelta(minutes=32)
    assert p.due_at(t, 5) is None and RetryPolicy(max_attempts=3).due_at(t, 3) is None


class Retried:
    """A retry report read the way these tests ask about it."""

    def __init__(self, report) -> None:
        self.report = report
        for name, ids in report.findings.items():
            setattr(self, name, list(ids))
        self.due = report.count("due")
        self.pending = report.count("pending")
        self.next_due_at = report.facts["next_due_at"]
        self.exit_code = report.exit_code


async def failures(db) -> dict[int, tuple[int, bool, dt.datetime]]:
    rows = await db.fetch(
        "SELECT id_ordem, tentativas, resolvido, ultima_tentativa FROM import_failures"
    )
    return {r["id_ordem"]: (r["tentativas"], r["resolvido"], r["ultima_tentativa"]) for r in rows}


async def test_retry_backs_off_resolves_and_gives_up_after_five(simulator, runtime_for, db) -> None:
    sim: TinySimulator = await simulator(orders=120, seed=5)
    no_id = sim.add_malformed("no_id", Situacao.EM_ABERTO)
    ids = sorted(sim.orders)
    late, hard, flaky = ids[2], ids[20], ids[40]
    sim.fail_detail[late] = "401"  # the sync lists it but cannot get its detail
    async with runtime_for(sim, **FAST) as rt:
        await full_sync(rt)
    sim.fail_detail.clear()
    # Integrity, an hour from now, fails to import two orders missing from the mirror.
    await db.execute("DELETE FROM ordens_servico WHERE id = ANY($1::bigint[])", [hard, flaky])
    sim.fail_detail.update({hard: "401", flaky: "malformed"})
    t0 = utcnow().replace(microsecond=0) + dt.timedelta(hours=1)
    async with runtime_for(sim, **FAST) as rt:
        report = await helpers.integrity(rt, at=t0)
    assert report.findings["failed"] == sorted([hard, flaky])
    synthetic = synthetic_id(canonical_json(no_id))
    state = await failures(db)
    assert sorted(state) == sorted([synthetic, late, hard, flaky])

    async with runtime_for(sim, **FAST) as rt:

        async def retry(at: dt.datetime) -> Retried:
            return Retried(await helpers.retry(rt, now=at))

        # 29 s after the failures: only the sync's failure (recorded an hour ago) is due,
        # and it imports now; the id-less record is for a person from the start.
        r = await retry(t0 + dt.timedelta(seconds=29))
        assert (r.due, r.resolved, r.failed_again) == (1, [late], [])
        assert r.pending == 2 and r.next_due_at == (t0 + dt.timedelta(seconds=30)).isoformat()
        assert r.manual_review == [synthetic] and r.exit_code == 1
        assert (await failures(db))[late][1] is True
        # 30 s: both are due, both fail again.
        now = t0 + dt.timedelta(seconds=30)
        r = await retry(now)
        assert r.resolved == [] and r.failed_again == sorted([hard, flaky])
        state = await failures(db)
        assert state[hard][:2] == state[flaky][:2] == (2, False)
        assert state[hard][2] == now.replace(tzinfo=None)
        # Next wait is 2 min: not due a second early, due on the dot; then flaky heals.
        assert (await retry(now + dt.timedelta(seconds=119))).due == 0
        now += dt.timedelta(seconds=120)
        sim.fail_detail.pop(flaky)
        r = await retry(now)
        assert (r.resolved, r.failed_again) == ([flaky], [hard])
        assert (await failures(db))[hard][0] == 3
        # hard keeps failing: attempts 4 (after 8 min) and 5 (after 32 min), then no more.
        now += dt.timedelta(minutes=8)
        assert (await retry(now)).failed_again == [hard]
        now += dt.timedelta(minutes=32)
        r = await retry(now)
        assert (r.failed_again, r.exhausted) == ([], [hard])
        assert sorted(r.manual_review) == sorted([synthetic, hard])
        detail_requests = sim.stats.requests_by_endpoint["detail"]
        r = await retry(now + dt.timedelta(days=30))
        assert r.due == 0 and r.pending == 0 and r.next_due_at is None
        assert sim.stats.requests_by_endpoint["detail"] == detail_requests
        assert r.exit_code == 1 and str(hard) in render_text(r.report)

    state = await failures(db)
    assert state[hard][:2] == (5, False) and state[flaky][1] and state[late][1]
    # What the retries imported is exactly the API's.
    snapshot = sim.snapshot()
    assert diff({i: o for i, o in snapshot.items() if i != hard}, await mirror(db)) == []


async def test_a_write_tried_again_after_its_answer_was_lost_is_not_done_twice(
    simulator, runtime_for, db
) -> None:
    # The store tries a statement again on a fresh connection when the first one died;
    # if the first had committed before its answer was lost, the second is a replay.
    sim: TinySimulator = await simulator(orders=10, seed=6)
    now = utcnow().replace(microsecond=0)
    report = RunReport(
        mode="retry", account="default", started_at=now, finished_at=now,
        outcome=Outcome.OK, errors=("Tiny answered 400: a\x00b",),
    )  # fmt: skip
    async with runtime_for(sim) as rt:
        failed = [FailureRecord(7, "TinyBadPayload: not JSON", '{"body": "x"}')]
        for _ in range(2):
            await rt.store.failures.record(failed, now=now, counts_as_attempt=False)
        for _ in range(2):  # one attempt, its statement sent twice
            await rt.store.failures.record(failed, now=now + SECOND, counts_as_attempt=True)
        first, again = [await rt.store.runs.record(report, invoked_as="retry") for _ in "ab"]
        for _ in range(2):
            await rt.store.integrity.save_run(now, now, True, '{"x": "a\\u0000b"}')
    assert (await failures(db))[7][:2] == (2, False)  # the listing's, then one attempt
    assert first == again and await db.fetchval("SELECT count(*) FROM sync_runs") == 1
    assert await db.fetchval("SELECT errors FROM sync_runs") == ["Tiny answered 400: ab"]
    assert await db.fetchval("SELECT count(*) FROM integrity_runs") == 1


async def test_no_write_counts_an_attempt_past_the_last(simulator, runtime_for, db) -> None:
    """Section 6: at most 5 attempts, then a person decides. A failure at its fifth that
    fails again (an integrity check asks the detail of an order in no listing, whatever
    its failure), or that something resolved and a listing brings back with the same
    broken item, takes the newest error but no sixth attempt: it went 6, 7, ..."""
    sim: TinySimulator = await simulator(orders=10, seed=6)
    now = utcnow().replace(microsecond=0)
    async with runtime_for(sim) as rt:
        for n in range(7):
            failed = [FailureRecord(7, f"TinyBadPayload: answer {n}", None)]
            await rt.store.failures.record(failed, now=now + n * SECOND, counts_as_attempt=True)
        seventh = (await failures(db))[7][:2]
        erro = await db.fetchval("SELECT erro FROM import_failures WHERE id_ordem = 7")
        await db.execute("UPDATE import_failures SET resolvido = true")
        await rt.store.failures.record(
            failed, now=now + 8 * SECOND, counts_as_attempt=False, listed=True
        )
    assert seventh == (5, False) and erro == "TinyBadPayload: answer 6"
    assert (await failures(db))[7][:2] == (5, False)  # back at manual review, not at 6


async def test_a_listings_failures_are_written_whole_or_not_at_all(
    simulator, runtime_for, db
) -> None:
    # A listing's failures take two statements (the open rows' newest list item, then the
    # upsert): one transaction, so a refused second statement leaves the first undone.
    sim: TinySimulator = await simulator(orders=10, seed=6)
    t0 = utcnow().replace(microsecond=0)
    t1 = t0 + dt.timedelta(minutes=15)
    old, moved, new = '{"id": 7, "situacao": "9"}', '{"id": 7, "situacao": "8"}', '{"x": 1}'
    listing = [FailureRecord(7, "RecordError: situacao", moved), FailureRecord(8, "no id", new)]
    async with runtime_for(sim) as rt:
        record = rt.store.failures.record
        await record([FailureRecord(7, "RecordError: situacao", old)], now=t0,
                     counts_as_attempt=False, listed=True)  # fmt: skip
        await db.execute(  # a constraint of the user's refuses the second statement
            "ALTER TABLE import_failures ADD CONSTRAINT no_8 CHECK (id_ordem <> 8)"
        )
        with pytest.raises(DatabaseError):
            await record(listing, now=t1, counts_as_attempt=False, listed=True)
        assert await db.fetchval("SELECT dados_api::text FROM import_failures") == old
        await db.execute("ALTER TABLE import_failures DROP CONSTRAINT no_8")
        assert await record(listing, now=t1, counts_as_attempt=False, listed=True) == [8]
        due = {f.id_ordem: f.next_due_at for f in
               await rt.store.failures.listing("pending", DEFAULT_POLICY, 10)}  # fmt: skip
    rows = {
        r["id_ordem"]: tuple(r.values())[1:]
        for r in await db.fetch(
            "SELECT id_ordem, dados_api::text, erro, tentativas, resolvido, primeira_tentativa,"
            " ultima_tentativa FROM import_failures ORDER BY id_ordem"
        )
    }
    naive = [t.replace(tzinfo=None) for t in (t0, t1)]
    assert rows == {  # 7 takes the newest item (no attempt); 8 is new, attempt 1
        7: (moved, "RecordError: situacao", 1, False, naive[0], naive[0]),
        8: (new, "no id", 1, False, naive[1], naive[1]),
    }
    assert due == {7: t0 + 30 * SECOND, 8: t1 + 30 * SECOND}


async def test_a_retry_goes_through_every_due_failure_chunk_by_chunk(
    simulator, runtime_for, db
) -> None:
    # More failures due than one chunk: every chunk is tried, and the report counts them.
    sim: TinySimulator = await simulator(orders=60, seed=7)
    gone = sorted(sim.orders)[:7]
    async with runtime_for(sim) as rt:
        await full_sync(rt)
        await db.execute("DELETE FROM ordens_servico WHERE id = ANY($1::bigint[])", gone)
        failed = [FailureRecord(i, "TinyBadPayload: not JSON", None) for i in gone]
        now = utcnow()
        await rt.store.failures.record(failed, now=now, counts_as_attempt=True)
        s = rt.store
        report = await retry_due(
            rt.client, s.orders, s.failures, helpers.context(rt), now=now + 60 * SECOND, chunk=3
        )
    assert report.counts["due"] == 7 and report.findings["resolved"] == gone
    assert report.counts["pending"] == 0
    assert await db.fetchval("SELECT count(*) FROM import_failures WHERE NOT resolvido") == 0
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_a_retry_stops_asking_once_told_to_stop(simulator, runtime_for, db) -> None:
    """A chunk of 200 due failures (2 requests at a time, 50 ms each: 5 s) stops starting
    requests once the run is told to stop (a worker's SIGTERM, its lease lost): it went on
    for the whole chunk, minutes at a small quota, and serve's drain was cut at
    --drain-timeout (a lost lease's unit spent the quota beside the account's new holder)."""
    sim: TinySimulator = await simulator(orders=200, seed=8, latency_s=0.05)
    gone = sorted(sim.orders)  # none mirrored yet: each detail builds its order's row
    async with runtime_for(sim, max_concurrency=2) as rt:
        failed = [FailureRecord(i, "TinyBadPayload: not JSON", None) for i in gone]
        now = utcnow()
        await rt.store.failures.record(failed, now=now, counts_as_attempt=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        details = sim.stats.requests_by_endpoint["detail"]
        report = await helpers.retry(rt, now=now + 60 * SECOND, stop=stop)
        asked = sim.stats.requests_by_endpoint["detail"] - details
    assert report.outcome is Outcome.INTERRUPTED
    assert asked < 60, f"{asked} details asked after the stop"
    # What was not asked is still due, its attempts unchanged.
    left = await db.fetchval("SELECT count(*) FROM import_failures WHERE NOT resolvido")
    assert left == 200 - len(report.findings["resolved"])
    assert await db.fetchval("SELECT count(*) FROM import_failures WHERE tentativas > 2") == 0


async def test_a_list_item_that_stays_broken_reaches_manual_review(
    simulator, runtime_for, db
) -> None:
    """A list item that stays broken while its detail imports: each retry's fix does not
    hold, and the failure must still reach its last attempt and manual review (section 6:
    at most 5 attempts, then kept for a person), not be "resolved" at every cycle."""
    sim: TinySimulator = await simulator(orders=40, seed=3)
    victim = sorted(sim.orders)[5]
    helpers.break_list_item(sim, victim)  # for good; its detail is fine
    now = utcnow()
    resolved_by = []
    async with runtime_for(sim, max_retries=2) as rt:
        await helpers.full_sync(rt)
        for _ in range(8):  # serve: a cycle's listing, its retries, the next cycle...
            now += dt.timedelta(hours=1)
            report = await helpers.retry(rt, now=now)
            resolved_by.append(report.findings["resolved"])
            await helpers.full_sync(rt)
    row = await db.fetchrow(
        "SELECT tentativas, resolvido FROM import_failures WHERE id_ordem = $1", victim
    )
    # It was never imported for good: every listing shows it failing again.
    assert (row["tentativas"], row["resolvido"]) == (5, False)
    assert report.findings["manual_review"] == [victim] and report.exit_code == 1
    assert resolved_by[-1] == []  # no longer asked (and "resolved") at every cycle


async def test_a_failure_at_manual_review_fixed_in_tiny_is_resolved(
    simulator, runtime_for, db
) -> None:
    """A record that failed until it used up its attempts, then was fixed in Tiny, is
    resolved by the listing that reads it whole: not left for manual review while the
    mirror holds it right."""
    sim: TinySimulator = await simulator(orders=40, seed=3)
    victim = sorted(sim.orders)[5]
    render = sim._renderer.list_item
    broken = False

    def listed(order):
        item = render(order)
        if order.id == victim and broken:
            item["data"] = "31/02/2020x"  # someone typed a date Tiny should have refused
        return item

    sim._renderer.list_item = listed  # type: ignore[method-assign]
    now = utcnow()
    async with runtime_for(sim, max_retries=2) as rt:
        await helpers.full_sync(rt)
        broken = True
        sim.fail_detail[victim] = "malformed"  # its detail is broken too
        await helpers.full_sync(rt)
        for _ in range(5):
            now += dt.timedelta(hours=1)
            report = await helpers.retry(rt, now=now)
        assert report.findings["manual_review"] == [victim]
        # Fixed in Tiny: the list item and the detail are what they were.
        broken = False
        sim.fail_detail.clear()
        await helpers.full_sync(rt)
        now += dt.timedelta(hours=1)
        report = await helpers.retry(rt, now=now)
        check = await helpers.integrity(rt, deep=True, at=now)
    assert diff(sim.snapshot(), await mirror(db)) == []  # the mirror is exact
    assert await db.fetchval("SELECT resolvido FROM import_failures WHERE id_ordem = $1", victim), (
        "the order is fine, yet its failure waits for a person"
    )
    assert report.findings["manual_review"] == [] and report.exit_code == 0
    assert check.findings["manual_review"] == [] and check.exit_code == 0


@pytest.mark.parametrize("budget", [40, 0])
async def test_a_cycle_retries_no_more_than_its_detail_budget(
    simulator, runtime_for, db, budget
) -> None:
    """A serve cycle's retries keep to the cycle's detail budget: thousands due at once,
    against a quota lower than that demand, must not hold the account for hours; the rest
    stays due for the next cycle, and the report says so. A budget of 0 asks none (it
    asked one a cycle)."""
    sim = await simulator(orders=600, seed=21)
    # Closed orders emitted long ago: no listing of the cycle shows them (they wait for the
    # daily sweep), so only the retries touch them.
    old = dt.date.today() - dt.timedelta(days=90)
    closed = (Situacao.FINALIZADA, Situacao.NAO_APROVADA, Situacao.CANCELADA)
    gone = sorted(i for i, o in sim.orders.items() if o.situacao in closed and o.data < old)
    gone = gone[:300]
    assert len(gone) == 300
    options = ServeOptions(interval_s=900, cycle=helpers.cycle(detail_budget=budget))
    async with runtime_for(sim, max_retries=2) as rt:
        await helpers.full_sync(rt)
        # Their details failed five minutes ago (Tiny answered garbage for a while): due now.
        failed = [FailureRecord(i, "TinyBadPayload: not JSON", None) for i in gone]
        await rt.store.failures.record(
            failed, now=utcnow() - dt.timedelta(minutes=5), counts_as_attempt=True
        )
        details = sim.stats.requests_by_endpoint["detail"]
        (_sync, retry), _ = await serve_cycle(rt, options, asyncio.Event())
        asked = sim.stats.requests_by_endpoint["detail"] - details
    assert asked <= budget, f"one cycle asked {asked} details; its budget is {budget}"
    assert len(retry.findings["resolved"]) == asked
    # What the budget left is still due, and the report counts it.
    assert retry.count("still_due") == 300 - asked


async def test_a_detail_that_fails_now_and_then_is_retried_each_time(
    simulator, runtime_for, db
) -> None:
    """An order whose detail answers garbage once in a while (a proxy's page, a cut body),
    each time retried and imported 30 s later, is retried the next time too: episodes
    weeks apart are not attempts at one failure. Counting them pushed an order that had
    five such blips in its life straight to manual review, its detail never asked again
    (the backlog skips orders with an open failure)."""
    sim: TinySimulator = await simulator(orders=40, seed=3)
    victim = next(i for i, o in sorted(sim.orders.items()) if o.situacao == Situacao.EM_ANDAMENTO)
    now = utcnow()
    async with runtime_for(sim, max_retries=2) as rt:
        await helpers.full_sync(rt)
        for episode in range(6):
            # It changes: the cycle asks its detail, and this time Tiny answers garbage.
            sim.set_status(victim, Situacao.APROVADA if episode % 2 == 0 else Situacao.EM_ANDAMENTO)
            sim.fail_detail[victim] = "malformed"
            await helpers.incremental_sync(rt)
            row = await db.fetchrow(
                "SELECT tentativas, resolvido, erro FROM import_failures WHERE id_ordem = $1",
                victim,
            )
            assert row is not None and not row["resolvido"] and "JSON" in row["erro"], row
            # The blip is over; the retry imports it.
            sim.fail_detail.clear()
            now += dt.timedelta(days=14)
            report = await helpers.retry(rt, now=now)
            assert report.findings["resolved"] == [victim], (episode, dict(row))
            assert report.findings["manual_review"] == []
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_a_failure_whose_order_was_deleted_in_tiny_is_not_left_for_review(
    simulator, runtime_for, db
) -> None:
    """An order deleted in Tiny while its failure was open answers 404 to every retry: it
    is gone, not a persistent failure. Counted as attempts, it sat at manual review for
    good (retry exit 1 at every run), and one the mirror lacks (its list item broken) was
    still counted by the integrity pre-check in its listed status, which the API no longer
    counted: every integrity run was a full comparison, for ever."""
    sim: TinySimulator = await simulator(orders=60, seed=3)
    closed = (Situacao.FINALIZADA, Situacao.NAO_APROVADA, Situacao.CANCELADA)
    open_orders = [i for i, o in sorted(sim.orders.items()) if o.situacao not in closed]
    absent, held = open_orders[0], open_orders[1]
    helpers.break_list_item(sim, absent)  # never in the mirror
    sim.fail_detail.update({absent: "malformed", held: "malformed"})
    now = utcnow()
    async with runtime_for(sim, max_retries=2) as rt:
        await full_sync(rt)
        assert sorted(await failures(db)) == sorted([absent, held])
        sim.delete_order(absent)
        sim.delete_order(held)
        sim.fail_detail.clear()
        now += dt.timedelta(hours=1)
        report = await helpers.retry(rt, now=now)
        assert report.findings["gone"] == sorted([absent, held])
        assert report.findings["failed_again"] == [] and report.findings["manual_review"] == []
        assert report.exit_code == 0 and "deleted in Tiny" in render_text(report)
        for _ in range(5):  # nothing more to ask
            now += dt.timedelta(hours=1)
            report = await helpers.retry(rt, now=now)
            assert report.count("due") == 0 and report.exit_code == 0
        before = sim.stats.requests_total
        check = await helpers.integrity(rt, at=now)
        assert (check.facts["method"], check.exit_code) == ("pre-check", 0)
        assert sim.stats.requests_total - before <= 8
    state = await failures(db)
    assert state[absent][1] and state[held][1]  # resolved: nothing left to import
    # The row the mirror held is flagged, as a sync or an integrity check flags a 404.
    assert await db.fetchval("SELECT possibly_deleted FROM ordens_servico WHERE id = $1", held)


async def test_an_order_tiny_lists_whose_detail_answers_404_is_a_failure_not_a_deletion(
    simulator, runtime_for, db
) -> None:
    """Tiny lists it at every cycle, its detail answers 404: each details pass took the
    404 for a deletion and flagged it possibly_deleted, each listing cleared the flag and
    asked its detail again (a detail request and a status listed again per cycle, a live
    order a BI filter on the flag lost, an integrity pre-check that never agreed). Listed
    by the run whose detail answered 404, it is an import failure with its list item,
    retried on the schedule (a 404 again is a failed attempt while the listings show it),
    then left for a person; once Tiny stops listing it, the 404 flags it as before."""
    sim: TinySimulator = await simulator(orders=60, seed=3)
    open_orders = [i for i, o in sorted(sim.orders.items()) if o.situacao in (1, 2, 5, 6)]
    victim, gone = open_orders[0], open_orders[1]
    sim.fail_detail[victim] = "404"
    now = utcnow()
    rounds = []
    async with runtime_for(sim, **FAST) as rt:
        await full_sync(rt)  # keeps no listed ids: its 404 flags the order, as before
        first = await db.fetchval("SELECT possibly_deleted FROM ordens_servico WHERE id = $1",
                                  victim)  # fmt: skip
        sim.delete_order(gone)  # deleted for real: absent from the listings, 404
        for _ in range(6):  # serve: a cycle, the retries due, the next cycle...
            details = sim.stats.requests_by_endpoint["detail"]
            await helpers.incremental_sync(rt)
            asked = sim.stats.requests_by_endpoint["detail"] - details
            row = await db.fetchrow(
                "SELECT o.possibly_deleted, o.detail_stale, f.tentativas, f.resolvido "
                "FROM ordens_servico o LEFT JOIN import_failures f ON f.id_ordem = o.id "
                "WHERE o.id = $1",
                victim,
            )
            now += dt.timedelta(hours=1)
            retried = Retried(await helpers.retry(rt, now=now))
            rounds.append((asked, *row.values(), retried.failed_again + retried.exhausted))
        check = await helpers.integrity(rt, at=now)
        failure = await db.fetchrow(
            "SELECT erro, dados_api FROM import_failures WHERE id_ordem = $1", victim
        )
        sim.delete_order(victim)  # Tiny stops listing it: the next cycle's 404 flags it
        await helpers.incremental_sync(rt)
        # Deleted for real: no person is left to ask about it (resolved, as a retry's 404
        # resolves a failure whose order is gone), and nothing is asked again.
        now += dt.timedelta(hours=1)
        after = Retried(await helpers.retry(rt, now=now))
        state = await failures(db)
    # asked (the vanished one, and the victim listed again, once), flagged, stale,
    # attempts, resolved; retried
    assert first is True
    assert rounds == [
        (2, False, True, 1, False, [victim]),
        (0, False, True, 2, False, [victim]),
        (0, False, True, 3, False, [victim]),
        (0, False, True, 4, False, [victim]),
        (0, False, True, 5, False, []),
        (0, False, True, 5, False, []),
    ]
    assert retried.manual_review == [victim] and retried.gone == []
    assert "404" in failure["erro"]
    dados = orjson.loads(failure["dados_api"])
    assert dados["list_item"]["id"] == victim and dados["detail"] == {"status": 404}
    assert (check.facts["method"], check.findings["reappeared"]) == ("pre-check", [])
    flagged = await db.fetch("SELECT id FROM ordens_servico WHERE possibly_deleted")
    assert sorted(r["id"] for r in flagged) == sorted([gone, victim])
    assert state[victim][:2] == (5, True), "deleted in Tiny, yet it waits for a person"
    assert (after.manual_review, after.due, after.exit_code) == ([], 0, 0)


async def test_a_retry_through_a_wrong_base_url_resolves_nothing(
    simulator, runtime_for, db
) -> None:
    """A wrong TINY_API_BASE_URL (or a proxy misrouting during a deploy) answers every
    detail 404 with a page of its own (aiohttp's, nginx's ``404: Not Found``, text/plain),
    not Tiny's JSON 404. Taken for Tiny's word, a retry resolved every due failure as
    deleted in Tiny and flagged their mirror rows possibly_deleted (out of the
    ordens_finalizadas view BI reads): now it is an outage whose sentence names the
    variable to check, nothing resolved, no attempt counted, no row flagged."""
    sim: TinySimulator = await simulator(orders=60, seed=3)
    victims = sorted(sim.orders)[:6]
    sim.fail_detail.update({i: "malformed" for i in victims})
    async with runtime_for(sim, **FAST) as rt:
        await full_sync(rt)
    assert sorted(await failures(db)) == victims
    sim.fail_detail.clear()
    now = utcnow() + dt.timedelta(hours=1)
    wrong = sim.origin + "/wrong/v3"  # the simulator's aiohttp answers its own 404 there
    async with runtime_for(sim, api_base_url=wrong, breaker_failures=4, **FAST) as rt:
        with pytest.raises(TinyUnavailable) as caught:
            await helpers.retry(rt, now=now)
    assert "not_json" in str(caught.value), caught.value
    hint = "check TINY_API_BASE_URL (--api-base-url), or the account's api_base_url in the"
    assert hint in str(caught.value), caught.value
    assert {i: s[:2] for i, s in (await failures(db)).items()} == {i: (1, False) for i in victims}
    assert await db.fetchval("SELECT count(*) FROM ordens_servico WHERE possibly_deleted") == 0
    # The address put right: the same failures import.
    async with runtime_for(sim, **FAST) as rt:
        retried = Retried(await helpers.retry(rt, now=now))
    assert (retried.resolved, retried.gone, retried.exit_code) == (victims, [], 0)
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_a_retry_report_says_how_many_wait_for_a_person_beyond_the_five_it_names(
    simulator, runtime_for, db
) -> None:
    # Its notes named the first five failures at manual review and stopped: seven read as five.
    sim = await simulator(orders=5)
    for order_id in range(1, 8):
        await db.execute(
            "INSERT INTO import_failures (id_ordem, erro, tentativas) VALUES ($1, 'broken', 5)",
            order_id,
        )
    async with runtime_for(sim) as rt:
        report = await helpers.retry(rt, now=utcnow())
    review = [n for n in report.notes if n.startswith("manual review:")]
    assert len(review) == 6, review
    assert review[-1] == "manual review: 2 more (`asyncsync failures list --state review`)"
