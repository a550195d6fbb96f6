"""A record PostgreSQL cannot take never blocks the others: NUL characters (in a record and
in what failed), a record or a detail the database refuses, an amount no number holds, a
huge answer, a placeholder date."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import orjson
import pytest

from asyncsync.errors import TinyAnswerTooLarge
from asyncsync.simulator import TinySimulator
from asyncsync.status import Situacao

from ..helpers import break_list_item, full_sync, incremental_sync, integrity, retry
from ..mirror import diff, mirror
from .conftest import asyncsync_measured, cli_env, peak_rss_mib

#: What a constraint of the user's own refuses: "POISON" in the client's name, or in a
#: detail's observations.
NAME = "cliente_nome NOT LIKE '%POISON%'"
DETAIL = "coalesce(detalhe->>'observacoes', '') NOT LIKE '%POISON%'"


async def refuse(db: asyncpg.Pool, check: str) -> None:
    """A constraint of the user's own on the mirror: PostgreSQL refuses what breaks it."""
    await db.execute(f"ALTER TABLE ordens_servico ADD CONSTRAINT no_poison CHECK ({check})")


async def test_nul_characters_are_cleaned_and_nothing_is_lost(simulator, runtime_for, db) -> None:
    sim = await simulator(orders=800, seed=31)
    dirty = sorted(sim.orders)[100]
    order = sim.orders[dirty]
    order.cliente = {**order.cliente, "nome": "Ana\x00 Maria"}
    order.extra = {**order.extra, "observacoes": "urgente\x00\x00!"}
    async with runtime_for(sim) as rt:
        report = await full_sync(rt)
    assert report.outcome == "ok" and report.count("import_failures") == 0
    expected = sim.snapshot()
    expected[dirty]["cliente_nome"] = "Ana Maria"  # what PostgreSQL can hold of it
    assert diff(expected, await mirror(db)) == []
    row = await db.fetchrow(
        "SELECT payload->'cliente'->>'nome' AS nome, detalhe->>'observacoes' AS obs "
        "FROM ordens_servico WHERE id = $1",
        dirty,
    )
    assert (row["nome"], row["obs"]) == ("Ana Maria", "urgente!")


async def test_a_record_the_database_refuses_goes_alone_to_import_failures(
    simulator, runtime_for, db
) -> None:
    # A constraint of the user's own refuses one record: the rest of its batch is stored.
    await refuse(db, NAME)
    sim = await simulator(orders=1200, seed=32)
    poisoned = sorted(sim.orders)[600]
    sim.orders[poisoned].cliente = {**sim.orders[poisoned].cliente, "nome": "POISON Ltda"}
    for _ in range(2):  # and again: the same record does not block the next run either
        async with runtime_for(sim) as rt:
            report = await full_sync(rt, batch_size=400)
        assert report.outcome == "ok"
    expected = {i: o for i, o in sim.snapshot().items() if i != poisoned}
    assert diff(expected, await mirror(db)) == []
    rows = await db.fetch("SELECT id_ordem, erro, dados_api, tentativas FROM import_failures")
    assert [r["id_ordem"] for r in rows] == [poisoned]
    assert "no_poison" in rows[0]["erro"] and "POISON Ltda" in rows[0]["dados_api"]
    assert rows[0]["tentativas"] == 1  # the listing seeing it again is not an attempt
    history = await db.fetchval("SELECT count(*) FROM ordem_status_history")
    assert history == 1199


async def test_nul_characters_in_what_failed_never_block_a_run(simulator, runtime_for, db) -> None:
    # A failure row carries what the API answered and the error: a list item that is not
    # an object, and a detail whose body is not JSON, both with a NUL character in them.
    sim = await simulator(orders=300, seed=36)
    not_object, not_json = sorted(sim.orders)[50], sorted(sim.orders)[150]
    render = sim._renderer.list_item
    sim._renderer.list_item = lambda o: (
        ["broken\x00item", o.id] if o.id == not_object else (render(o))
    )
    sim.orders[not_json].extra = {**sim.orders[not_json].extra, "observacoes": "ZZMARK"}
    sim.byte_patches.append(("ZZMARK", b'a\x00b"}}'))  # a raw NUL byte, then broken JSON
    for run in range(2):  # and the next run is not stuck on them either
        async with runtime_for(sim) as rt:
            report = await full_sync(rt)
        # The second run does not ask the failed detail again (retry owns it), and the
        # broken item, counted in its status's total, costs no listing again; seen again,
        # it writes no failure row: none then.
        assert report.outcome == "ok" and report.count("import_failures") == (2, 0)[run]
        assert report.count("relisted") == 0
    rows = await db.fetch("SELECT id_ordem, erro, dados_api::text AS raw FROM import_failures")
    assert len(rows) == 2
    assert all("\x00" not in r["erro"] and "\\u0000" not in r["raw"] for r in rows)
    assert any("brokenitem" in r["raw"] for r in rows)
    assert not_json in {r["id_ordem"] for r in rows}
    expected = {i: o for i, o in sim.snapshot().items() if i != not_object}
    expected[not_json]["data_conclusao"] = None  # its detail is what failed
    assert diff(expected, await mirror(db)) == []


async def test_a_record_nested_deeper_than_json_writers_go_is_a_failed_record(
    simulator, runtime_for, db
) -> None:
    """A field nested 300 levels deep (orjson reads 1,024 levels, writes 254): the record,
    serialized for its payload and hash, raised orjson's TypeError, and every run stopped
    on it (a list item's in the listing's writer, a detail's in the details pass)."""
    sim = await simulator(orders=300, seed=35)
    in_list, in_detail = sorted(sim.orders)[40], sorted(sim.orders)[140]
    as_array = sorted(sim.orders)[240]  # a list item that is no object, but an array as deep
    sim.orders[in_list].cliente = {**sim.orders[in_list].cliente, "extra": "ZZDEEP"}
    sim.orders[in_detail].extra = {**sim.orders[in_detail].extra, "equipamento": "ZZDEEP"}
    deep = b"[" * 300 + b'"fundo"' + b"]" * 300
    sim.byte_patches.append(("ZZDEEP", b'x","fundo":' + deep + b',"y":"y'))
    render = sim._renderer.list_item
    sim._renderer.list_item = lambda o: ["ZZARRAY"] if o.id == as_array else render(o)
    sim.byte_patches.append(("ZZARRAY", b'x",' + deep + b',"y'))
    # As deep as orjson writes, and its situacao unknown: its failure row wraps it (with
    # the status it was listed under) one level deeper than orjson writes.
    at_edge = sorted(sim.orders)[200]
    sim.orders[at_edge].cliente = {**sim.orders[at_edge].cliente, "extra": "ZZEDGE"}
    edge = b"[" * 252 + b'"fundo"' + b"]" * 252
    sim.byte_patches.append(("ZZEDGE", b'x","fundo":' + edge + b',"y":"y'))
    listed = sim._renderer.list_item
    sim._renderer.list_item = lambda o: (
        {**listed(o), "situacao": "ZZ"} if o.id == at_edge else listed(o)
    )
    for _ in range(2):  # and the next run is not stuck on them either
        async with runtime_for(sim) as rt:
            report = await full_sync(rt)
        assert report.outcome == "ok"
    rows = await db.fetch(
        "SELECT id_ordem, erro, dados_api #>> '{}' AS raw FROM import_failures ORDER BY id_ordem"
    )
    assert [r["id_ordem"] for r in rows][1:] == sorted([in_list, in_detail, at_edge])
    assert rows[0]["id_ordem"] < 0  # the array's: no id, a synthetic one
    deeper = [r for r in rows if r["id_ordem"] != at_edge]
    # The raw answer is kept whole, as text: jsonb would take it, nothing after it would.
    assert all("nested too deeply" in r["erro"] and "fundo" in r["raw"] for r in deeper), rows
    assert all("situacao" in r["erro"] and "fundo" in r["raw"] for r in rows if r not in deeper)
    expected = {i: o for i, o in sim.snapshot().items() if i not in (in_list, as_array, at_edge)}
    expected[in_detail]["data_conclusao"] = None  # its detail is what failed
    assert diff(expected, await mirror(db)) == []


async def test_a_record_nested_past_what_any_reader_reads_is_a_failed_record_not_a_stop(
    simulator, runtime_for, db
) -> None:
    """A list item nested 1,100 levels deep (orjson reads 1,024, Python's json about as
    many): its whole page was unreadable, asked again, and the run failed, every run, with
    the pages of other statuses thrown away (sweep L). What lies past 300 levels is cut:
    the page reads, that record is an import failure, the rest of the mirror is whole."""
    sim = await simulator(orders=300, seed=35)
    victim = sorted(sim.orders)[40]
    sim.orders[victim].cliente = {**sim.orders[victim].cliente, "extra": "ZZDEEP"}
    deep = b"[" * 1100 + b'"fundo"' + b"]" * 1100
    sim.byte_patches.append(("ZZDEEP", b'x","fundo":' + deep + b',"y":"y'))
    async with runtime_for(sim) as rt:
        report = await full_sync(rt)
    assert report.outcome == "ok"
    row = await db.fetchrow("SELECT id_ordem, erro FROM import_failures")
    assert row is not None and row["id_ordem"] == victim and "nested too deeply" in row["erro"]
    expected = {i: o for i, o in sim.snapshot().items() if i != victim}
    assert diff(expected, await mirror(db)) == []


async def test_a_detail_the_database_refuses_goes_alone_to_import_failures(
    simulator, runtime_for, db
) -> None:
    await refuse(db, DETAIL)
    sim = await simulator(orders=300, seed=37)
    poisoned = sorted(sim.orders)[100]
    sim.orders[poisoned].extra = {**sim.orders[poisoned].extra, "observacoes": "POISON"}
    for _ in range(2):
        async with runtime_for(sim) as rt:
            report = await full_sync(rt)
        assert report.outcome == "ok"
    with_detail = await db.fetchval("SELECT count(*) FROM ordens_servico WHERE detalhe IS NOT NULL")
    assert with_detail == 299
    rows = await db.fetch("SELECT id_ordem, erro, dados_api, tentativas FROM import_failures")
    assert [(r["id_ordem"], r["tentativas"]) for r in rows] == [(poisoned, 1)]
    assert "no_poison" in rows[0]["erro"] and "POISON" in rows[0]["dados_api"]


async def test_an_amount_no_number_holds_is_a_failed_record(simulator, runtime_for, db) -> None:
    """... nor one read two ways: ``"1,234.56"`` (US form) was read the Brazilian way,
    dots dropped, as 1.23, silently; ``"1.234"`` (Brazilian thousands, no cents) as
    1.23."""
    sim = await simulator(orders=200, seed=38)
    in_list, in_detail = sorted(sim.orders)[20], sorted(sim.orders)[120]
    us_form, grouped = sorted(sim.orders)[60], sorted(sim.orders)[80]
    render = sim._renderer.list_item

    def list_item(order):  # type: ignore[no-untyped-def]
        item = render(order)
        if order.id == us_form:
            return {**item, "valor": "1,234.56"}
        if order.id == grouped:  # R$ 1.234 the Brazilian way, 1.234 the other: was 1.23
            return {**item, "valor": "1.234"}
        return {**item, "valor": "1e9999999"} if order.id == in_list else item

    sim._renderer.list_item = list_item
    sim.orders[in_detail].extra = {**sim.orders[in_detail].extra, "desconto": "-1E+999999999"}
    async with runtime_for(sim) as rt:
        report = await full_sync(rt)
    assert report.outcome == "ok"
    rows = await db.fetch("SELECT id_ordem, erro FROM import_failures ORDER BY id_ordem")
    assert [(r["id_ordem"], r["erro"].split(": ", 2)[1]) for r in rows] == [
        (in_list, "amount out of range '1e9999999'"),
        (us_form, "ambiguous amount '1,234.56' (a dot after the comma)"),
        (grouped, "ambiguous amount '1.234' (thousands or three decimals)"),
    ]
    assert await db.fetchval("SELECT count(*) FROM ordens_servico") == 197
    # A detail's amounts are not columns: the detail is stored as it came.
    desconto = "SELECT detalhe->>'desconto' FROM ordens_servico WHERE id = $1"
    assert await db.fetchval(desconto, in_detail) == "-1E+999999999"


async def test_a_retry_the_database_still_refuses_is_a_failed_attempt(
    simulator, runtime_for, db
) -> None:
    await refuse(db, NAME)
    sim = await simulator(orders=300, seed=39)
    poisoned = sorted(sim.orders)[100]
    sim.orders[poisoned].cliente = {**sim.orders[poisoned].cliente, "nome": "POISON Ltda"}
    async with runtime_for(sim) as rt:
        await full_sync(rt, batch_size=100)
        # Imported from its detail, the order is refused again: not resolved, one more attempt.
        report = await retry(rt, now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    assert report.findings["resolved"] == [] and report.findings["failed_again"] == [poisoned]
    row = await db.fetchrow("SELECT resolvido, tentativas FROM import_failures")
    assert (row["resolvido"], row["tentativas"]) == (False, 2)
    assert await db.fetchval("SELECT count(*) FROM ordens_servico WHERE id = $1", poisoned) == 0


async def test_a_huge_detail_is_refused_unread(simulator, database_url, db) -> None:
    sim: TinySimulator = await simulator(orders=200, seed=33)
    sim.huge_detail_bytes = 120 * 1024 * 1024
    huge = sorted(sim.orders)[10]
    sim.fail_detail[huge] = "huge"
    env = cli_env(
        TINY_CLIENT_ID=sim.config.client_id, TINY_CLIENT_SECRET=sim.config.client_secret,
        TINY_REFRESH_TOKEN=sim.valid_refresh_token() or "",
    )  # fmt: skip
    proc = await asyncsync_measured(
        "sync", "--database-url", database_url, "--api-base-url", sim.base_url,
        "--token-url", sim.token_url, "--max-answer-mb", "50", "--log-format", "json", env=env,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    peak_mib = peak_rss_mib(err.decode())
    # A 120 MB answer read whole would take 120 MB and more to parse; refused, it is not
    # read at all (the run's whole peak stays well below the answer's size).
    assert 20 < peak_mib < 120, peak_mib
    row = await db.fetchrow("SELECT erro, resolvido FROM import_failures WHERE id_ordem=$1", huge)
    assert row is not None and "TinyAnswerTooLarge" in row["erro"] and "cap" in row["erro"]
    got = await mirror(db)
    assert (
        diff(
            {i: o for i, o in sim.snapshot().items() if i != huge},
            {i: o for i, o in got.items() if i != huge},
        )
        == []
    )


async def test_a_huge_listing_page_fails_the_run_with_a_clear_error(simulator, runtime_for) -> None:
    sim = await simulator(orders=50, seed=34)
    sim.pad_list_bytes = 3 * 1024 * 1024
    async with runtime_for(sim, max_answer_mb=1.0) as rt:
        with pytest.raises(TinyAnswerTooLarge, match="1,048,576-byte cap"):
            await full_sync(rt)


async def test_a_placeholder_date_is_no_date(simulator, runtime_for, db) -> None:
    """... also as a date-time at Brazil's offset, whose instant is past year 9999 in UTC
    (an emission date so sent stopped every run with an OverflowError: it was read as a
    São Paulo instant through UTC, where the digits alone had said 9999-12-31)."""
    sim = await simulator(orders=40, seed=35)
    placeholder, with_offset = sorted(sim.orders)[3], sorted(sim.orders)[7]
    sim.orders[placeholder].data_prevista = dt.datetime(9999, 12, 31, 0, 0)
    render = sim._renderer.list_item

    def list_item(order):  # type: ignore[no-untyped-def]
        item = render(order)
        if order.id != with_offset:
            return item
        return {**item, "data": "9999-12-31T23:59:59-03:00",
                "dataPrevista": "9999-12-31T23:59:59-03:00"}  # fmt: skip

    sim._renderer.list_item = list_item
    async with runtime_for(sim) as rt:
        report = await full_sync(rt)
    assert report.outcome == "ok"
    value = await db.fetchval(
        "SELECT data_prevista::text FROM ordens_servico WHERE id = $1", placeholder
    )
    assert value is None  # not 'infinity'
    row = await db.fetchrow(
        "SELECT data_emissao, data_prevista FROM ordens_servico WHERE id = $1", with_offset
    )
    assert row is not None and tuple(row) == (None, None)
    assert await db.fetchval("SELECT count(*) FROM ordens_servico") == 40
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0


async def test_an_import_the_database_refuses_counts_one_attempt_each_time(
    simulator, runtime_for, db
) -> None:
    # Integrity imports a missing order; PostgreSQL refuses it: one attempt. Retries then
    # build it from its detail, which lands, and refuse the detail: one attempt each, the
    # count kept (not reset by the row landing in between).
    sim = await simulator(orders=300, seed=40)
    x = sorted(sim.orders)[100]
    async with runtime_for(sim) as rt:
        await full_sync(rt, batch_size=100)
        await db.execute("DELETE FROM ordens_servico WHERE id = $1", x)
        await refuse(db, f"{NAME} AND {DETAIL}")
        sim.orders[x].cliente = {**sim.orders[x].cliente, "nome": "POISON Ltda"}
        report = await integrity(rt)
        assert report.findings["failed"] == [x] and report.findings["recovered"] == []
        attempts = "SELECT tentativas, resolvido FROM import_failures WHERE id_ordem = $1"
        assert tuple(await db.fetchrow(attempts, x)) == (1, False)
        # The name is mended, the detail is not: the row lands, its detail is refused.
        sim.orders[x].cliente = {**sim.orders[x].cliente, "nome": "Ana"}
        sim.orders[x].extra = {**sim.orders[x].extra, "observacoes": "POISON"}
        now = dt.datetime.now(dt.UTC)
        for n in (2, 3):
            now += dt.timedelta(hours=1)
            report = await retry(rt, now=now)
            assert report.findings["resolved"] == [] and report.findings["failed_again"] == [x]
            assert tuple(await db.fetchrow(attempts, x)) == (n, False)
    detail = "SELECT detalhe IS NULL FROM ordens_servico WHERE id = $1"
    assert await db.fetchval(detail, x) is True  # the row is there, its detail is not


#: Incremental cycles with the sweep far away: a status is listed whole only when short.
QUIET_CYCLE = {"page_size": 20, "recent_days": 45, "sweep_interval_s": 1e9}


@pytest.mark.parametrize("first", ["cycle", "integrity"])
@pytest.mark.parametrize("bad", [9, None, "Finalizada"])
async def test_a_record_with_an_unknown_status_does_not_relist_its_status_every_cycle(
    bad, first, simulator, runtime_for, db
) -> None:
    """A listed record whose own situacao is no status code is a failure, counted in the
    status it was listed under: else that status looks short and is listed whole again
    at every cycle (the sweep's cost every 15 minutes), and every integrity check finds
    the totals apart and lists every status. So whichever run reads it first: an
    integrity check that did recorded it without that status (35 requests of status 3
    per quiet cycle here, not 3)."""
    sim = await simulator(orders=400, seed=61, max_limit=20)
    async with runtime_for(sim) as rt:
        await full_sync(rt, **QUIET_CYCLE)
    item = sim.add_malformed("bad_date", Situacao.FINALIZADA)  # listed among the 3s
    item["data"] = "2019-05-05"  # a date that parses: only its situacao is wrong
    item["situacao"] = bad
    async with runtime_for(sim) as rt:
        if first == "cycle":
            assert (await incremental_sync(rt, **QUIET_CYCLE)).count("import_failures") == 1
        else:
            assert (await integrity(rt)).findings["unreadable"] == [item["id"]]
    failing = await db.fetchval("SELECT count(*) FROM import_failures WHERE NOT resolvido")
    assert failing == 1
    for _ in range(2):
        before = sim.stats.list_requests_by_status[3]
        async with runtime_for(sim) as rt:
            quiet = await incremental_sync(rt, **QUIET_CYCLE)
        # The window's page and the status's total; not the ~17 pages of the whole status.
        assert sim.stats.list_requests_by_status[3] - before <= 3, quiet.counts
        assert quiet.count("relisted") == 0
    async with runtime_for(sim) as rt:
        check = await integrity(rt)
        deep = await integrity(rt, deep=True)
    assert check.facts["method"] == "pre-check", check.by_status
    # Read again by a full comparison, the open failure is a known one, named as such (it
    # was in neither list: only the failing count said it was there).
    assert deep.findings["unreadable"] == [] and deep.findings["awaiting_retry"] == [item["id"]]
    assert deep.title.endswith("but for known failures (1 awaiting retry)"), deep.title


async def test_a_failure_whose_listed_status_no_int_holds_stops_no_run(
    simulator, runtime_for, db
) -> None:
    """An open failure of a list item whose situacao is "99999999999", as an integrity run
    that saw the item first recorded it (``{"list_item": ...}``, no ``listed_as``): the
    count of what the mirror knows per status cast it to int, and every cycle and every
    integrity run after it stopped on 'out of range for type integer'."""
    sim = await simulator(orders=200, seed=62)
    async with runtime_for(sim) as rt:
        await full_sync(rt)
    item = sim.add_malformed("bad_date", Situacao.FINALIZADA)
    item["situacao"] = "99999999999"
    dados = {"list_item": item}
    await db.execute(
        "INSERT INTO import_failures (id_ordem, erro, dados_api) VALUES ($1, $2, $3::jsonb)",
        item["id"], "unknown situacao code 99999999999", orjson.dumps(dados).decode(),
    )  # fmt: skip
    async with runtime_for(sim) as rt:
        cycle = await incremental_sync(rt, **QUIET_CYCLE)
        check = await integrity(rt)
    assert cycle.outcome == "ok" and check.outcome != "failed"
    assert diff(sim.snapshot(), await mirror(db)) == []


@pytest.mark.parametrize("first", ["cycle", "integrity", "retry"])
async def test_a_broken_record_that_moves_is_counted_in_its_new_status(
    first, simulator, runtime_for, db
) -> None:
    """An order the mirror lacks (its list item never parses, its detail neither) that moves
    in Tiny, 6 → 7: its open failure kept the status of the listing that recorded it
    (a listing left an open row as it was), so the mirror's count of what it knows had one
    too many in 6 and one too few in 7 for as long as the failure stayed open — status 7
    listed whole again at every cycle (35 requests, not 3) and every integrity check a full
    comparison. Whatever wrote the row: a cycle's listing, an integrity check, a retry."""
    sim = await simulator(orders=400, seed=61, max_limit=20)
    victim = next(i for i, o in sorted(sim.orders.items()) if o.situacao == Situacao.EM_ANDAMENTO)
    break_list_item(sim, victim)
    sim.fail_detail[victim] = "malformed"
    async with runtime_for(sim) as rt:
        await full_sync(rt, **QUIET_CYCLE)
        if first == "integrity":
            await db.execute("DELETE FROM import_failures")
            assert (await integrity(rt)).findings["unreadable"] == [victim]
        elif first == "retry":
            later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
            assert (await retry(rt, now=later)).findings["failed_again"] == [victim]
    sim.set_status(victim, Situacao.CANCELADA)
    async with runtime_for(sim) as rt:
        await incremental_sync(rt, **QUIET_CYCLE)  # sees the move
        for _ in range(2):
            before = sim.stats.list_requests_by_status[7]
            quiet = await incremental_sync(rt, **QUIET_CYCLE)
            assert sim.stats.list_requests_by_status[7] - before <= 3, quiet.counts
            assert quiet.count("relisted") == 0
        check = await integrity(rt)
    assert check.facts["method"] == "pre-check", check.by_status
    row = await db.fetchrow("SELECT tentativas, resolvido FROM import_failures WHERE id_ordem = $1",
                            victim)  # fmt: skip
    assert not row["resolvido"] and row["tentativas"] == (2 if first == "retry" else 1)
