"""Issue 5, integrity: damage a synced mirror on purpose, then let integrity heal it."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections import Counter
from pathlib import Path

import orjson

from asyncsync.clock import utcnow
from asyncsync.jobs import integrity as integrity_job
from asyncsync.jobs.integrity import deep_day
from asyncsync.jobs.retry import DEFAULT_POLICY
from asyncsync.modes import execute
from asyncsync.options import IntegrityOptions, OutputOptions
from asyncsync.records import FailureRecord, canonical_json, synthetic_id
from asyncsync.simulator import Quirks, TinySimulator
from asyncsync.status import Situacao

from . import helpers
from .helpers import full_sync
from .mirror import diff, mirror

T0 = dt.datetime(2031, 5, 4, 12, 0, tzinfo=dt.UTC)
FAST = {"max_retries": 2}  # a 500 costs one retry, not four
DAY = dt.timedelta(days=1)


async def sync(sim: TinySimulator, runtime_for) -> None:
    async with runtime_for(sim, **FAST) as rt:
        await full_sync(rt)


async def integrity(sim: TinySimulator, runtime_for, *, deep: bool = False, at=T0):
    async with runtime_for(sim, **FAST) as rt:
        return Found(await helpers.integrity(rt, deep=deep, at=at))


class Found:
    """An integrity report read the way these tests ask about it."""

    def __init__(self, report) -> None:
        self.report = report
        for name, ids in report.findings.items():
            setattr(self, name, list(ids))
        self.method = report.facts["method"]
        self.counts_agree = report.facts["counts_agree"]
        self.consistent = report.facts["consistent"]
        self.exit_code = report.exit_code
        self.listed = report.count("listed")
        self.pages = report.count("pages")
        self.interrupted = report.outcome == "interrupted"
        self.listing_errors = list(report.errors)

    def column(self, name: str) -> dict[int, int]:
        return {c: row[name] for c, row in self.report.by_status.items() if row[name]}


async def test_integrity_heals_the_damage_and_tracks_what_it_cannot(
    simulator, runtime_for, db
) -> None:
    sim = await simulator(orders=400, seed=11)
    no_id = sim.add_malformed("no_id", Situacao.ORCADA)  # recorded by the sync, id-less
    await sync(sim, runtime_for)
    expected = sim.snapshot()
    assert diff(expected, await mirror(db)) == []
    no_id_key = synthetic_id(canonical_json(no_id))
    assert await db.fetchval("SELECT id_ordem FROM import_failures") == no_id_key

    # The damage: 7 rows deleted (2 of them will fail to import, one is unavailable for
    # now), 4 statuses changed, 2 rows the API never had.
    ids = sorted(sim.orders)
    deleted, changed, extra = ids[10:17], ids[50:54], [9_000_000_001, 9_000_000_002]
    failing = {deleted[0]: "401", deleted[1]: "malformed"}
    down = deleted[2]
    sim.fail_detail[down] = "500"  # Tiny errs on it: no fault of the record
    await db.execute("DELETE FROM ordens_servico WHERE id = ANY($1::bigint[])", deleted)
    await db.execute(
        "UPDATE ordens_servico SET situacao = (situacao + 1) % 8 WHERE id = ANY($1::bigint[])",
        changed,
    )
    await db.execute(
        "INSERT INTO ordens_servico (id, numero, situacao, payload, list_hash, observed_at) "
        "SELECT x, 'X' || x, 3, '{}', '\\x00', now() FROM unnest($1::bigint[]) x",
        extra,
    )
    sim.fail_detail.update(failing)
    history_before = await db.fetchval("SELECT count(*) FROM ordem_status_history")

    report = await integrity(sim, runtime_for)

    # The report's numbers are exactly the damage done.
    assert (report.method, report.counts_agree) == ("full comparison", False)
    assert report.recovered == sorted(set(deleted) - set(failing) - {down})
    assert report.failed == sorted(failing) and report.unavailable == [down]
    fixed = [(s["id"], s["from"], s["to"]) for s in report.stale]
    assert fixed == [
        (i, (expected[i]["situacao"] + 1) % 8, expected[i]["situacao"]) for i in changed
    ]
    assert report.possibly_deleted == extra
    assert report.unreadable == report.reappeared == report.found_by_detail == []
    assert report.awaiting_retry == [] and report.listed == 400
    assert report.manual_review == [no_id_key]  # no id: no request can fetch it
    assert report.exit_code == 1 and not report.consistent  # failures persist
    assert sum(report.column("api").values()) == 401  # the malformed item is listed too
    assert sum(report.column("mirror_before").values()) == 400 - 7 + 2
    # The extra rows are flagged, not counted.
    assert sum(report.column("mirror_after").values()) == 400 - 3
    assert report.column("failing") == _statuses(
        [int(Situacao.ORCADA)]
        + [
            int(expected[i]["situacao"])
            for i in failing  # type: ignore[call-overload]
        ]
    )

    # The mirror is exact except the failing ids; the extra rows stay, flagged.
    got = await mirror(db)
    assert diff({i: o for i, o in expected.items() if i not in {*failing, down}}, got) == [
        f"extra {i}" for i in extra
    ]
    flagged = await db.fetch("SELECT id FROM ordens_servico WHERE possibly_deleted ORDER BY id")
    assert [r["id"] for r in flagged] == extra
    # Recovered orders are complete: detail and conclusion date included.
    assert not await db.fetchval(
        "SELECT count(*) FROM ordens_servico WHERE id = ANY($1::bigint[]) AND detalhe IS NULL",
        report.recovered,
    )
    # The status corrections are in the history, tagged 'integrity'; nothing else was
    # added: the rows deleted by hand kept their history, and their status had not moved.
    hist = await db.fetch(
        "SELECT id_os, status_antigo, status_novo, source FROM ordem_status_history "
        "ORDER BY seq OFFSET $1",
        history_before,
    )
    assert sorted((r["id_os"], r["status_antigo"], r["status_novo"]) for r in hist
                  if r["source"] == "integrity") == fixed  # fmt: skip
    assert [r["id_os"] for r in hist if r["source"] != "integrity"] == []

    # The failing ids sit in import_failures with the list item and the failing answer.
    rows = {
        r["id_ordem"]: r
        for r in await db.fetch(
            "SELECT id_ordem, erro, tentativas, resolvido, ultima_tentativa, dados_api::text AS raw"
            " FROM import_failures WHERE id_ordem > 0"
        )
    }
    assert sorted(rows) == sorted(failing)
    for order_id, row in rows.items():
        dados = orjson.loads(row["raw"])
        assert dados["list_item"]["id"] == order_id
        assert dados["list_item"]["numeroOrdemServico"] == expected[order_id]["numero"]
        assert row["tentativas"] == 1 and not row["resolvido"]
        assert row["ultima_tentativa"] == T0.replace(tzinfo=None)  # the session is in UTC
    # The order Tiny could not serve is no failed record: nothing in import_failures.
    assert "TinyOrderForbidden" in rows[deleted[0]]["erro"]
    assert "Token inválido" in rows[deleted[0]]["raw"]
    assert "TinyBadPayload" in rows[deleted[1]]["erro"]
    bad_body = orjson.loads(rows[deleted[1]]["raw"])["detail"]["body"]
    assert bad_body.startswith(f'{{"id": {deleted[1]}, "situacao"')  # the truncated answer

    # Tiny serves it again: the next run imports it.
    sim.fail_detail.pop(down)
    middle = await integrity(sim, runtime_for, at=T0 + dt.timedelta(seconds=0.5))
    assert middle.recovered == [down] and middle.unavailable == []
    assert middle.awaiting_retry == sorted(failing)  # their retry is not due yet

    # A second run on the healed mirror: the pre-check sees agreement at 8 list requests.
    before = sim.stats.requests_total
    again = await integrity(sim, runtime_for, at=T0 + dt.timedelta(seconds=1))
    assert sim.stats.requests_total - before <= 8
    assert (again.method, again.counts_agree, again.consistent) == ("pre-check", True, True)
    assert again.exit_code == 0 and again.manual_review == [no_id_key]
    # The totals agree counting the missing orders whose retry is not due: the verdict
    # names them, as the full comparison's does (it said "1 at manual review" alone: K2).
    assert again.awaiting_retry == sorted(failing)
    assert again.report.title.endswith(
        f"consistent but for known failures ({len(failing)} awaiting retry, 1 at manual review)"
    )

    # --deep compares every id anyway, and leaves failures that are not due to the retry mode.
    deep = await integrity(sim, runtime_for, deep=True, at=T0 + dt.timedelta(seconds=2))
    assert deep.consistent and deep.exit_code == 0 and deep.counts_agree is None
    assert deep.awaiting_retry == sorted(failing)
    assert await db.fetchval("SELECT max(tentativas) FROM import_failures WHERE id_ordem > 0") == 1
    assert deep.report.title.endswith(
        f"consistent but for known failures ({len(failing)} awaiting retry, 1 at manual review)"
    )

    # A missing order past its last attempt is at manual review, not awaiting a retry.
    exhausted, *rest = sorted(failing)
    await db.execute("UPDATE import_failures SET tentativas = 5 WHERE id_ordem = $1", exhausted)
    later = await integrity(sim, runtime_for, deep=True, at=T0 + dt.timedelta(seconds=3))
    assert later.awaiting_retry == rest
    assert later.manual_review == sorted([no_id_key, exhausted])

    runs = await db.fetch("SELECT consistent, report FROM integrity_runs ORDER BY id")
    assert [r["consistent"] for r in runs] == [False, False, True, True, True]
    stored = orjson.loads(runs[0]["report"])
    assert stored["findings_total"]["recovered"] == 4 and stored["exit_code"] == 1


def _statuses(codes: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for s in codes:
        out[s] = out.get(s, 0) + 1
    return out


async def test_changes_in_the_api_are_caught_without_a_sync(simulator, runtime_for, db) -> None:
    sim = await simulator(orders=250, seed=4)
    await sync(sim, runtime_for)
    ids = sorted(sim.orders)
    moved, gone, back, skipped = ids[3], ids[7], ids[9], ids[11]
    old = sim.orders[moved].situacao
    new = Situacao.CANCELADA if old != Situacao.CANCELADA else Situacao.EM_ABERTO
    sim.set_status(moved, new)
    sim.delete_order(gone)
    await db.execute("UPDATE ordens_servico SET possibly_deleted = true WHERE id = $1", back)
    # An order the listings miss (as offset paging can) while its detail still answers.
    sim._index.remove(skipped, sim.orders[skipped].situacao)

    report = await integrity(sim, runtime_for)
    assert report.stale == [{"id": moved, "from": int(old), "to": int(new)}]
    assert report.possibly_deleted == [gone] and report.reappeared == [back]
    assert report.found_by_detail == [skipped]  # asked before flagging: alive, not flagged
    assert report.exit_code == 0 and not report.consistent
    hist = await db.fetch("SELECT id_os FROM ordem_status_history WHERE source = 'integrity'")
    assert [r["id_os"] for r in hist] == [moved]
    # The next sync agrees: the corrected row's list fields are the listing's own.
    async with runtime_for(sim, **FAST) as rt:
        after = await full_sync(rt)
    assert after.count("changed") == 0 and after.count("inserted") == 0
    snapshot = sim.snapshot()
    got = await mirror(db)
    assert diff(snapshot, {i: o for i, o in got.items() if i != gone}) == []


async def test_a_row_deleted_by_hand_is_imported_onto_the_history_it_left(
    simulator, runtime_for, db
) -> None:
    """asyncsync never deletes a mirror row, so one that is missing was deleted by hand
    and its history is still there. The import that restores it continues that history:
    no second first sighting (status_antigo NULL) where nothing moved, and a move while
    the row was away is a move, old -> new (before: NULL -> new, so a move into 3 -
    Finalizada was no conclusion the history could date, and each order's history was no
    longer a chain)."""
    sim = await simulator(orders=60, seed=21)
    await sync(sim, runtime_for)
    ids = sorted(sim.orders)
    same = ids[4]
    moved = next(i for i in ids if sim.orders[i].situacao != Situacao.FINALIZADA)
    old = int(sim.orders[moved].situacao)
    history = (
        "SELECT status_antigo, status_novo, source FROM ordem_status_history"
        " WHERE id_os = $1 ORDER BY seq"
    )
    kept = [tuple(r) for r in await db.fetch(history, same)]
    await db.execute("DELETE FROM ordens_servico WHERE id = ANY($1::bigint[])", [same, moved])
    sim.set_status(moved, Situacao.FINALIZADA)

    report = await integrity(sim, runtime_for)

    assert report.recovered == sorted([same, moved])
    assert [tuple(r) for r in await db.fetch(history, same)] == kept == [(None, 3, "list")]
    assert [tuple(r) for r in await db.fetch(history, moved)] == [
        (None, old, "list"),
        (old, int(Situacao.FINALIZADA), "integrity"),
    ]
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_without_paginacao_the_full_comparison_runs(simulator, runtime_for, db) -> None:
    sim = await simulator(orders=150, seed=2, quirks=Quirks(omit_paginacao=True))
    await sync(sim, runtime_for)
    report = await integrity(sim, runtime_for)
    assert report.method == "full comparison" and report.counts_agree is False
    assert report.consistent and report.exit_code == 0 and report.listed == 150


async def test_the_mode_prints_a_table_and_writes_json(
    simulator, database_url, runtime_for, db, tmp_path: Path, capsys
) -> None:
    sim = await simulator(orders=120, seed=9)
    await sync(sim, runtime_for)
    victim = sorted(sim.orders)[5]
    await db.execute("DELETE FROM ordens_servico WHERE id = $1", victim)
    common = helpers.common_for(sim, database_url, **FAST)
    common = dataclasses.replace(common, output=OutputOptions(json_path=tmp_path / "report.json"))
    code = await execute("integrity", common, IntegrityOptions(), asyncio.Event())
    assert code == 0
    text = capsys.readouterr().out
    assert "missing, recovered" in text and str(victim) in text and "│ total" in text
    data = orjson.loads((tmp_path / "report.json").read_bytes())
    assert data["findings"]["recovered"] == [victim] and data["exit_code"] == 0
    assert data["api"]["requests_total"] > 0 and "latency_p95_ms" in data["api"]
    assert data["mode"] == "integrity" and data["outcome"] == "ok"


async def test_a_status_that_cannot_be_listed_flags_nothing(simulator, runtime_for, db) -> None:
    sim = await simulator(orders=200, seed=6)
    await sync(sim, runtime_for)
    await db.execute("DELETE FROM ordens_servico WHERE id = $1", sorted(sim.orders)[0])

    def broken(_sim: TinySimulator, params: dict[str, str]) -> None:
        if params.get("situacao") == str(int(Situacao.FINALIZADA)):
            raise RuntimeError("simulated outage")  # the simulator answers 500

    sim.on_list_page = broken
    report = await integrity(sim, runtime_for)
    assert len(report.listing_errors) == 1
    assert (
        f"listing of status {int(Situacao.FINALIZADA)} failed: TinyUnavailable"
        in (report.listing_errors[0])
    )
    # Orders of the unlisted status are not "in no listing": nothing is flagged.
    assert report.possibly_deleted == [] and report.exit_code == 1
    assert not await db.fetchval("SELECT count(*) FROM ordens_servico WHERE possibly_deleted")


async def test_a_stop_mid_listing_changes_nothing(simulator, runtime_for, db) -> None:
    sim = await simulator(orders=600, seed=8)
    await sync(sim, runtime_for)
    victim = sorted(sim.orders)[0]
    await db.execute("DELETE FROM ordens_servico WHERE id = $1", victim)
    stop = asyncio.Event()
    sim.on_list_page = lambda _sim, params: stop.set() if params.get("limit") != "1" else None
    async with runtime_for(sim, **FAST) as rt:
        report = Found(await helpers.integrity(rt, at=T0, stop=stop))
    assert report.interrupted and not report.consistent
    assert report.recovered == report.possibly_deleted == [] and report.pages < 10
    assert not await db.fetchval("SELECT count(*) FROM ordens_servico WHERE possibly_deleted")
    assert await db.fetchval("SELECT count(*) FROM ordens_servico") == 599


async def test_a_stop_before_anything_was_found_is_no_verdict(simulator, runtime_for, db) -> None:
    """A deep check stopped as its first pages come (SIGTERM) was titled "inconsistencies
    found and fixed" with every finding 0, and stored consistent = false: nothing was
    compared. It says it was interrupted, and its verdict is unknown (NULL)."""
    sim = await simulator(orders=300, seed=9)
    await sync(sim, runtime_for)
    stop = asyncio.Event()
    sim.on_list_page = lambda _sim, _params: stop.set()
    async with runtime_for(sim, **FAST) as rt:
        report = Found(await helpers.integrity(rt, deep=True, at=T0, stop=stop))
    assert report.interrupted and report.exit_code == 130
    assert report.report.title == (
        "integrity check (full comparison, deep) — interrupted, nothing found before the stop"
    )
    assert report.consistent is None
    assert await db.fetchval("SELECT consistent IS NULL FROM integrity_runs") is True


async def test_a_stop_during_the_pre_check_reports_no_status_empty(
    simulator, runtime_for, db
) -> None:
    """Stopped as the pre-check's totals come back, the full comparison lists nothing: its
    report showed Tiny's total of every status as 0 (none of its pages answered). Now a
    status's total is the pre-check's, or unknown (None): never a count nobody made."""
    sim = await simulator(orders=300, seed=9)
    await sync(sim, runtime_for)
    await db.execute("DELETE FROM ordens_servico WHERE id = $1", sorted(sim.orders)[0])
    stop = asyncio.Event()
    sim.on_list_page = lambda _sim, params: stop.set() if params.get("limit") == "1" else None
    async with runtime_for(sim, **FAST) as rt:
        report = Found(await helpers.integrity(rt, at=T0, stop=stop))
    assert report.interrupted and not report.consistent and report.recovered == []
    truth = Counter(o.situacao for o in sim.orders.values())
    totals = {c: row["api"] for c, row in report.report.by_status.items()}
    assert all(total in (None, truth[c]) for c, total in totals.items()), (totals, truth)
    assert await db.fetchval("SELECT count(*) FROM ordens_servico") == 299


async def test_a_failing_detail_is_not_taken_for_a_deletion(simulator, runtime_for, db) -> None:
    sim = await simulator(orders=120, seed=6)
    await sync(sim, runtime_for)
    down, broken = sorted(sim.orders)[5], sorted(sim.orders)[6]
    for hidden in (down, broken):  # missed by the listings...
        sim._index.remove(hidden, sim.orders[hidden].situacao)
    sim.fail_detail[down] = "500"  # ...and their detail fails: nothing proves them gone
    sim.fail_detail[broken] = "malformed"
    report = await integrity(sim, runtime_for)
    assert report.possibly_deleted == [] and report.exit_code == 1
    assert report.failed == [broken] and report.unavailable == [down]
    flagged = "SELECT count(*) FROM ordens_servico WHERE possibly_deleted"
    assert not await db.fetchval(flagged)
    rows = await db.fetch("SELECT id_ordem, resolvido, erro FROM import_failures")
    # A bad answer is a failed record; an unavailable Tiny is not.
    assert [(r["id_ordem"], r["resolvido"]) for r in rows] == [(broken, False)]
    assert "TinyBadPayload" in rows[0]["erro"]


async def test_failures_a_person_ignored_are_left_alone_for_good(
    simulator, runtime_for, db
) -> None:
    # Ignored: never asked again, never "not fixed", and the pre-check still agrees with
    # the API (which lists the ignored records and counts them).
    sim = await simulator(orders=200, seed=43)
    no_id = sim.add_malformed("no_id", Situacao.EM_ABERTO)
    broken = sorted(sim.orders)[10]
    async with runtime_for(sim) as rt:
        await helpers.full_sync(rt)
        await db.execute("DELETE FROM ordens_servico WHERE id = $1", broken)
        sim.fail_detail[broken] = "malformed"
        report = await helpers.integrity(rt, deep=True)
        assert report.findings["failed"] == [broken] and report.exit_code == 1
        ignored = await rt.store.failures.ignore(
            [broken, synthetic_id(canonical_json(no_id))], now=utcnow(), policy=DEFAULT_POLICY
        )
        assert len(ignored) == 2
        for _ in range(2):
            details = sim.stats.requests_by_endpoint["detail"]
            lists = sim.stats.requests_by_endpoint["list"]
            report = await helpers.integrity(rt)
            assert report.exit_code == 0, report.findings
            assert sim.stats.requests_by_endpoint["detail"] == details  # not asked again
            assert sim.stats.requests_by_endpoint["list"] - lists == 8  # the pre-check agrees


async def test_a_missing_order_at_manual_review_that_reads_again_waits_for_a_listing(
    simulator, runtime_for, db
) -> None:
    """An order the mirror lacks, its list item and its detail broken until its failure
    used up its attempts, then fixed in Tiny. Section 6: after the last attempt the failure
    stays for a person, no automatic attempt: the full comparison reports it at manual
    review and asks no detail. The listing that reads it whole (the next sync's) imports
    it and resolves its failure, as it resolves any failure of a record fixed in Tiny."""
    sim = await simulator(orders=40, seed=3)
    victim = sorted(sim.orders)[5]
    mend = helpers.break_list_item(sim, victim)
    sim.fail_detail[victim] = "malformed"
    now = T0
    async with runtime_for(sim, **FAST) as rt:
        await helpers.full_sync(rt)
        for _ in range(5):
            now += dt.timedelta(hours=1)
            retried = await helpers.retry(rt, now=now)
        assert retried.findings["manual_review"] == [victim]
        mend()  # fixed in Tiny: its list item and its detail read again
        sim.fail_detail.clear()
        details = sim.stats.requests_by_endpoint["detail"]
        report = Found(await helpers.integrity(rt, deep=True, at=now))
        asked = sim.stats.requests_by_endpoint["detail"] - details
        attempts = await db.fetchval(
            "SELECT tentativas FROM import_failures WHERE id_ordem = $1", victim
        )
        await helpers.full_sync(rt)
        check = Found(await helpers.integrity(rt, deep=True, at=now))
    assert report.manual_review == [victim] and report.recovered == report.failed == []
    assert report.exit_code == 0 and asked == 0 and attempts == 5
    assert check.manual_review == [] and check.exit_code == 0
    resolved = "SELECT resolvido FROM import_failures WHERE id_ordem = $1"
    assert await db.fetchval(resolved, victim), "imported, yet its failure waits for a person"
    assert diff(sim.snapshot(), await mirror(db)) == []  # the mirror is exact


async def test_a_missing_order_at_manual_review_still_broken_stays_there_costing_nothing(
    simulator, runtime_for, db
) -> None:
    """Its list item reads but its detail is still broken: section 6 stops at 5 attempts,
    then a person decides. The full comparison reports it at manual review, a known
    failure, and neither asks its detail nor counts an attempt: it asked it at every full
    comparison (a detail request each) and counted it, 6, 7, ... past the limit."""
    sim = await simulator(orders=40, seed=3)
    victim = sorted(sim.orders)[5]
    sim.fail_detail[victim] = "malformed"
    now = T0
    failure = "SELECT tentativas, resolvido, erro, primeira_tentativa FROM import_failures"
    async with runtime_for(sim, **FAST) as rt:
        await helpers.full_sync(rt)
        await db.execute(  # its attempts used up, with the list item as integrity keeps it
            "UPDATE import_failures SET tentativas = 5, ultima_tentativa = $2,"
            " erro = 'TinyBadPayload: earlier', dados_api = jsonb_build_object("
            "'list_item', (SELECT payload FROM ordens_servico WHERE id = $1),"
            " 'detail', dados_api) WHERE id_ordem = $1",
            victim, now.replace(tzinfo=None),
        )  # fmt: skip
        await db.execute("DELETE FROM ordens_servico WHERE id = $1", victim)
        details = sim.stats.requests_by_endpoint["detail"]
        for day in (1, 2):
            report = Found(await helpers.integrity(rt, deep=True, at=now + day * DAY))
        before = await db.fetchrow(f"{failure} WHERE id_ordem = $1", victim)
        # A full listing brings the order back into the mirror: its failure,
        # the same list item held, stays for a person. It was resolved by that listing,
        # and the detail failing again reopened it at attempt 1, its first attempt
        # forgotten: five more automatic attempts (sweep K).
        await helpers.full_sync(rt)
    assert report.manual_review == [victim] and report.failed == report.recovered == []
    assert report.exit_code == 0 and sim.stats.requests_by_endpoint["detail"] - details == 0
    assert (before["tentativas"], before["resolvido"]) == (5, False)
    assert before["erro"] == "TinyBadPayload: earlier"  # not asked: nothing newer to say
    assert await db.fetchval("SELECT count(*) FROM ordens_servico WHERE id = $1", victim) == 1
    assert await db.fetchrow(f"{failure} WHERE id_ordem = $1", victim) == before


async def test_an_unlisted_order_at_manual_review_is_asked_but_not_counted_again(
    simulator, runtime_for, db
) -> None:
    """A mirror row in no listing, its failure at manual review and its detail broken: the
    full comparison asks its detail (only a 404 says it is gone), and the answer that
    fails again is no sixth attempt: section 6 stops counting at 5 (it rose by one at
    every full comparison)."""
    sim = await simulator(orders=40, seed=3)
    victim = sorted(sim.orders)[5]
    now = T0
    async with runtime_for(sim, **FAST) as rt:
        await helpers.full_sync(rt)
        sim._index.remove(victim, sim.orders[victim].situacao)  # missed by the listings
        sim.fail_detail[victim] = "malformed"
        await rt.store.failures.record(
            [FailureRecord(victim, "TinyBadPayload: earlier", None)],
            now=now - DAY, counts_as_attempt=True,
        )  # fmt: skip
        await db.execute("UPDATE import_failures SET tentativas = 5 WHERE id_ordem = $1", victim)
        details = sim.stats.requests_by_endpoint["detail"]
        for day in (1, 2):
            report = Found(await helpers.integrity(rt, deep=True, at=now + day * DAY))
    assert sim.stats.requests_by_endpoint["detail"] - details == 2  # asked: deleted or not
    assert report.possibly_deleted == [] and report.manual_review == [victim]
    row = await db.fetchrow(
        "SELECT tentativas, resolvido, erro FROM import_failures WHERE id_ordem = $1", victim
    )
    assert (row["tentativas"], row["resolvido"]) == (5, False)
    assert "TinyBadPayload" in row["erro"] and "earlier" not in row["erro"]  # its newest answer


async def test_an_order_at_manual_review_deleted_in_tiny_is_no_longer_asked_about(
    simulator, runtime_for, db
) -> None:
    """Its failure used up its attempts (Tiny listed it and its detail answered 404), then
    Tiny deleted it: the full comparison finds it in no listing, its detail answers 404,
    and it is flagged possibly_deleted. Its failure is resolved with it, as a retry's 404
    resolves one: it stayed open at manual review for ever, a person asked about an order
    that no longer exists (integrity exit 0 with it reported, retry exit 1 at every run)."""
    sim = await simulator(orders=40, seed=3)
    victim = sorted(sim.orders)[9]
    now = T0
    async with runtime_for(sim, **FAST) as rt:
        await helpers.full_sync(rt)
        await rt.store.failures.record(  # five attempts, each a 404 while Tiny listed it
            [FailureRecord(victim, "TinyNotFound: HTTP 404", None)],
            now=now - dt.timedelta(hours=2), counts_as_attempt=True,
        )  # fmt: skip
        await db.execute("UPDATE import_failures SET tentativas = 5 WHERE id_ordem = $1", victim)
        sim.delete_order(victim)
        check = Found(await helpers.integrity(rt, deep=True, at=now))
        retried = await helpers.retry(rt, now=now)
    assert check.possibly_deleted == [victim] and check.manual_review == []
    row = await db.fetchrow(
        "SELECT tentativas, resolvido FROM import_failures WHERE id_ordem = $1", victim
    )
    assert (row["tentativas"], row["resolvido"]) == (5, True), "gone, yet it waits for a person"
    assert retried.findings["manual_review"] == [] and retried.exit_code == 0


async def test_a_listed_order_whose_detail_answers_404_reaches_manual_review(
    simulator, runtime_for, db
) -> None:
    """Tiny lists it, its detail answers 404 (an order the app may list but not read):
    each retry takes the 404 for a deletion and resolves the failure, and each integrity
    run, finding it listed and missing, imports it and fails again. That is one failure
    failing over and over (section 6: at most 5 attempts, then a person), not a new one
    each day at attempt 1: every check reported it as a problem NOT fixed, exit 1, for
    ever, and no person was ever asked to look."""
    sim = await simulator(orders=40, seed=3)
    victim = sorted(sim.orders)[9]
    now = T0
    async with runtime_for(sim, **FAST) as rt:
        await helpers.full_sync(rt)
        await db.execute("DELETE FROM ordens_servico WHERE id = $1", victim)
        sim.fail_detail[victim] = "404"
        attempts = []
        for _ in range(5):  # serve: the daily check, the retries between
            check = Found(await helpers.integrity(rt, at=now))
            attempts.append(await db.fetchval(
                "SELECT tentativas FROM import_failures WHERE id_ordem = $1", victim))  # fmt: skip
            now += dt.timedelta(hours=1)
            await helpers.retry(rt, now=now)
            now += dt.timedelta(days=1)
        assert attempts == [1, 2, 3, 4, 5]
        assert check.manual_review == [victim]  # its fifth attempt failed in that run
        retried = await helpers.retry(rt, now=now)
        check = Found(await helpers.integrity(rt, at=now))
    row = await db.fetchrow(
        "SELECT tentativas, resolvido, erro, dados_api FROM import_failures WHERE id_ordem = $1",
        victim,
    )
    assert not row["resolvido"] and "404" in row["erro"]
    assert orjson.loads(row["dados_api"])["list_item"]["id"] == victim
    assert retried.findings["manual_review"] == [victim] and retried.exit_code == 1
    assert check.manual_review == [victim] and check.failed == [] and check.exit_code == 0


def test_serve_compares_every_id_once_a_week_each_account_on_its_own_day() -> None:
    week = [dt.date(2026, 12, 7) + dt.timedelta(days=n) for n in range(7)]
    days = {
        a: [d for d in week if deep_day(a, d)]
        for a in ("default", *(f"acct{i}" for i in range(40)))
    }
    assert all(len(d) == 1 for d in days.values())  # exactly one day in any week
    assert len({d[0].weekday() for d in days.values()}) >= 5  # spread over the week
    later = dt.date(2026, 12, 7) + dt.timedelta(days=7 * 30)
    assert deep_day("default", days["default"][0] + (later - dt.date(2026, 12, 7)))


async def test_orders_in_no_listing_are_flagged_only_on_a_404_a_few_per_run(
    simulator, runtime_for, db, monkeypatch
) -> None:
    monkeypatch.setattr(integrity_job, "CONFIRM_LIMIT", 3)  # a run asks at most this many
    sim = await simulator(orders=100, seed=44)
    gone = sorted(sim.orders)[:5]
    async with runtime_for(sim) as rt:
        await helpers.full_sync(rt)
        for order_id in gone:
            sim.delete_order(order_id)
        first = await helpers.integrity(rt, deep=True)
        second = await helpers.integrity(rt, deep=True)
    assert first.findings["possibly_deleted"] == gone[:3]
    assert first.findings["unconfirmed"] == gone[3:] and first.exit_code == 1
    assert second.findings["possibly_deleted"] == gone[3:] and second.exit_code == 0


async def test_a_status_it_could_not_list_leaves_no_verdict(simulator, runtime_for, db) -> None:
    # Nothing inconsistent found, one status unlisted: stored consistent = false, and a
    # dashboard on integrity_runs.consistent showed the mirror inconsistent (sweep K).
    sim = await simulator(orders=120, seed=6)
    await sync(sim, runtime_for)

    def broken(_sim: TinySimulator, params: dict[str, str]) -> None:
        if params.get("situacao") == str(int(Situacao.FINALIZADA)):
            raise RuntimeError("simulated outage")  # the simulator answers 500

    sim.on_list_page = broken
    async with runtime_for(sim) as rt:
        report = Found(await helpers.integrity(rt, deep=True))
    assert report.consistent is None and report.exit_code == 1 and report.listing_errors
    assert await db.fetchval("SELECT consistent IS NULL FROM integrity_runs") is True


async def test_a_status_integrity_could_not_correct_is_not_called_consistent(
    simulator, runtime_for, db
) -> None:
    # A row observed "later" than the listing (a host whose clock runs ahead wrote it) is
    # not overwritten by it; the run must say so, not report the mirror consistent.
    sim = await simulator(orders=100, seed=45)
    skewed = sorted(sim.orders)[7]
    async with runtime_for(sim) as rt:
        await helpers.full_sync(rt)
        wrong = (int(sim.orders[skewed].situacao) + 1) % 8
        await db.execute(
            "UPDATE ordens_servico SET situacao = $2, observed_at = now() + interval '10 min' "
            "WHERE id = $1", skewed, wrong,
        )  # fmt: skip
        report = await helpers.integrity(rt, deep=True)
    assert report.findings["not_corrected"] == [skewed] and report.exit_code == 1


async def test_a_stop_during_the_import_of_missing_orders_keeps_what_arrived(
    simulator, runtime_for, db
) -> None:
    """Stopped while importing missing orders, integrity stops soon and keeps what it
    fetched (README: exit 130 merges what arrived; the next run resumes). A request still
    waiting at the limiter at the stop is not sent: nor is it a failure."""
    sim = await simulator(orders=600, seed=12)
    missing = sorted(sim.orders)[:500]
    stop = asyncio.Event()
    async with runtime_for(sim, max_retries=2) as rt:
        await full_sync(rt)
        await db.execute("DELETE FROM ordens_servico WHERE id = ANY($1::bigint[])", missing)
        before = sim.stats.requests_by_endpoint["detail"]
        asked = 0
        get_order = rt.client.get_order

        async def counted(*args, **kwargs):  # SIGTERM arrives after 60 detail requests
            nonlocal asked
            asked += 1
            if asked == 60:
                stop.set()
            return await get_order(*args, **kwargs)

        rt.client.get_order = counted  # type: ignore[method-assign]
        report = await helpers.integrity(rt, stop=stop)
    assert report.outcome == "interrupted"
    # The stop is heeded: the requests in flight end, no new one starts, and none that
    # waited at the limiter (the 60th among them) is sent...
    assert asked <= 60 + 16, asked
    sent = sim.stats.requests_by_endpoint["detail"] - before
    assert 0 < sent < 60, sent
    # ...and what arrived before it is in the mirror, reported as recovered.
    recovered = report.findings["recovered"]
    assert len(recovered) == sent
    assert await db.fetchval("SELECT count(*) FROM ordens_servico") == 100 + len(recovered)
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0
    # What it found before the stop is known: the mirror was not consistent, and what it
    # found missing and did not ask is said (it listed only the imported: sweep K).
    assert sorted([*recovered, *report.findings["not_imported"]]) == missing
    unfixed = len(missing) - len(recovered)
    assert report.title.endswith(f"— interrupted, {unfixed} problem(s) NOT fixed before the stop")
    assert report.facts["consistent"] is False
    assert await db.fetchval("SELECT consistent FROM integrity_runs") is False


async def test_the_full_comparison_shows_its_progress(simulator, runtime_for, caplog) -> None:
    # Every status listed whole (thousands of pages at a small quota) said nothing until
    # its report: no bar on a terminal, no progress line in the logs.
    sim = await simulator(orders=120, seed=92)
    await sync(sim, runtime_for)
    with caplog.at_level(logging.INFO, logger="asyncsync.progress"):
        found = await integrity(sim, runtime_for, deep=True)
    assert found.method == "full comparison" and found.listed == 120
    said = [r.fields for r in caplog.records if r.getMessage() == "integrity progress"]
    assert said, "no progress"
    last = said[-1]
    assert last["listing"]["done"] == last["listing"]["total"] == 120
    assert last["partitions"] == {"done": 8, "total": 8} and last["pages"] == found.pages
