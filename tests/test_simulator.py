"""The Tiny API simulator, exercised over real HTTP on port 0."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from asyncsync.simulator import Quirks, SimConfig, TinySimulator, serve
from asyncsync.simulator.__main__ import parse_quirks
from asyncsync.status import OPEN_STATUSES, Situacao

TODAY = dt.date(2024, 6, 30)
CONFIG = SimConfig(orders=600, seed=7, today=TODAY)


@pytest.fixture
async def sim() -> AsyncIterator[TinySimulator]:
    async with TinySimulator(CONFIG) as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def refresh(
    http: aiohttp.ClientSession, sim: TinySimulator, token: str, **form: str
) -> tuple[int, dict[str, Any]]:
    data = {
        "grant_type": "refresh_token",
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "refresh_token": token,
        **form,
    }
    async with http.post(sim.token_url, data=data) as resp:
        return resp.status, await resp.json()


async def access_token(http: aiohttp.ClientSession, sim: TinySimulator) -> str:
    token = sim.valid_refresh_token()
    assert token is not None
    status, body = await refresh(http, sim, token)
    assert status == 200, body
    return str(body["access_token"])


class Api:
    """A bearer-authenticated GET helper."""

    def __init__(self, http: aiohttp.ClientSession, sim: TinySimulator, token: str) -> None:
        self.http, self.sim, self.token = http, sim, token

    async def get(self, path: str, **params: object) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        query = {k: str(v) for k, v in params.items()}
        async with self.http.get(self.sim.base_url + path, params=query, headers=headers) as r:
            text = await r.text()
            is_json = r.content_type == "application/json"
            try:
                body: Any = await r.json() if is_json else text
            except (ValueError, aiohttp.ContentTypeError):
                body = text
            return r.status, body, r.headers

    async def list_all(self, **params: object) -> tuple[list[dict[str, Any]], set[int]]:
        items: list[dict[str, Any]] = []
        totals: set[int] = set()
        offset = 0
        while True:
            status, body, _ = await self.get("/ordem-servico", offset=offset, **params)
            assert status == 200, body
            items.extend(body["itens"])
            totals.add(body["paginacao"]["total"])
            if len(body["itens"]) < body["paginacao"]["limit"]:
                return items, totals
            offset += len(body["itens"])


@pytest.fixture
async def api(http: aiohttp.ClientSession, sim: TinySimulator) -> Api:
    return Api(http, sim, await access_token(http, sim))


async def test_token_grant_rotation_and_invalid_grant(
    http: aiohttp.ClientSession, sim: TinySimulator
) -> None:
    status, body = await refresh(http, sim, "sim-refresh-0")
    assert status == 200
    assert body["token_type"] == "Bearer" and body["expires_in"] == 14400
    assert body["refresh_expires_in"] == 86400
    new = body["refresh_token"]
    assert new != "sim-refresh-0" and sim.valid_refresh_token() == new
    status, body = await refresh(http, sim, "sim-refresh-0")  # rotated away
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await refresh(http, sim, new, client_secret="wrong")
    assert (status, body["error"]) == (401, "invalid_client")
    status, body = await refresh(http, sim, new, grant_type="password")
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    status, body = await refresh(http, sim, new)
    assert status == 200
    sim.revoke_refresh_tokens()
    assert sim.valid_refresh_token() is None
    status, body = await refresh(http, sim, body["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")
    assert sim.stats.requests_by_endpoint["token"] == 6
    assert sim.stats.token_refreshes == 2
    assert sim.stats.requests_total == 0


async def test_no_rotation_keeps_the_refresh_token(http: aiohttp.ClientSession) -> None:
    async with TinySimulator(SimConfig(orders=10, rotate_refresh_tokens=False)) as sim:
        for _ in range(2):
            status, body = await refresh(http, sim, "sim-refresh-0")
            assert status == 200 and body["refresh_token"] == "sim-refresh-0"


async def test_bearer_token_required(
    http: aiohttp.ClientSession, sim: TinySimulator, api: Api
) -> None:
    async with http.get(sim.base_url + "/ordem-servico") as resp:
        assert resp.status == 401
        assert await resp.json() == {"mensagem": "Token inválido", "detalhes": None}
        assert resp.headers["X-RateLimit-Limit"] == "120"
    assert (await api.get("/ordem-servico"))[0] == 200
    sim.expire_access_tokens()
    assert (await api.get("/ordem-servico"))[0] == 401
    assert sim.stats.unauthorized == 2 and sim.stats.requests_total == 3


async def test_pagination_covers_each_status_exactly_once(sim: TinySimulator, api: Api) -> None:
    expected: dict[int, list[int]] = {}
    for order_id, row in sim.snapshot().items():
        expected.setdefault(int(str(row["situacao"])), []).append(order_id)
    assert set(expected) == set(range(8))
    for status in Situacao:
        items, totals = await api.list_all(situacao=int(status), limit=37)
        ids = [item["id"] for item in items]
        assert ids == sorted(expected[status])  # ascending by id, no repeats
        assert totals == {len(ids)}
    desc, _ = await api.list_all(situacao="3", limit=100, orderBy="desc")
    assert [i["id"] for i in desc] == sorted(expected[3], reverse=True)
    everything, totals = await api.list_all(limit=250)  # capped to 100
    assert len(everything) == 600 and totals == {600}
    assert sim.stats.list_requests_by_status[3] > 0 and sim.stats.list_requests_by_status[-1] == 7


async def test_list_item_shape_and_bad_params(sim: TinySimulator, api: Api) -> None:
    status, body, _ = await api.get("/ordem-servico", situacao=3, limit=1000)
    assert status == 200 and body["paginacao"]["limit"] == 100
    item = body["itens"][0]
    order = sim.orders[item["id"]]
    assert item["situacao"] == 3 and isinstance(item["valor"], float)
    assert Decimal(str(item["valor"])) == order.valor
    assert item["data"] == order.data.isoformat()
    assert item["numeroOrdemServico"] == order.numero
    assert set(item["cliente"]) >= {"id", "nome", "codigo", "fantasia", "tipoPessoa", "cpfCnpj"}
    assert isinstance(item["marcadores"], list)
    for params, campo in [
        ({"limit": "x"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"dataInicialEmissao": "2024-13-01"}, "dataInicialEmissao"),
        ({"dataFinalEmissao": "30/06/2024"}, "dataFinalEmissao"),
        ({"situacao": "9"}, "situacao"),
    ]:
        status, body, headers = await api.get("/ordem-servico", **params)
        assert status == 400, params
        assert body["detalhes"][0]["campo"] == campo and body["mensagem"]
        assert "X-RateLimit-Remaining" in headers


async def test_date_window_is_inclusive(sim: TinySimulator, api: Api) -> None:
    days = sorted({o.data for o in sim.orders.values() if o.situacao is Situacao.FINALIZADA})
    lo, hi = days[len(days) // 2], days[len(days) // 2 + 3]
    items, totals = await api.list_all(
        situacao=3, dataInicialEmissao=lo.isoformat(), dataFinalEmissao=hi.isoformat(), limit=2
    )
    expected = sorted(
        o.id
        for o in sim.orders.values()
        if o.situacao is Situacao.FINALIZADA and lo <= o.data <= hi
    )
    assert [i["id"] for i in items] == expected and totals == {len(expected)}
    assert {i["data"] for i in items} >= {lo.isoformat(), hi.isoformat()}


async def test_quirks_are_visible(http: aiohttp.ClientSession) -> None:
    quirks = Quirks(situacao_style="label", zero_dates=True, money_as_string=True)
    async with TinySimulator(SimConfig(orders=300, seed=3, today=TODAY, quirks=quirks)) as sim:
        api = Api(http, sim, await access_token(http, sim))
        _, body, _ = await api.get("/ordem-servico", situacao=3)
        items = body["itens"]
        assert {i["situacao"] for i in items} == {"3 - Finalizada"}
        assert all(isinstance(i["valor"], str) for i in items)
        assert any("," in i["valor"] for i in items) and any("." in i["valor"] for i in items)
        no_due = next(o for o in sim.orders.values() if o.data_prevista is None)
        _, detail, _ = await api.get(f"/ordem-servico/{no_due.id}")
        assert detail["dataPrevista"] in ("0000-00-00", "0000-00-00 00:00:00")
        assert isinstance(detail["vlrComissao"], str)
    quirks = Quirks(situacao_style="mixed", omit_paginacao=True)
    async with TinySimulator(SimConfig(orders=300, seed=3, today=TODAY, quirks=quirks)) as sim:
        api = Api(http, sim, await access_token(http, sim))
        _, body, _ = await api.get("/ordem-servico", situacao="3")
        assert set(body) == {"itens"}
        assert {type(i["situacao"]) for i in body["itens"]} == {int, str}
        assert {"3", "3 - Finalizada", 3} == {i["situacao"] for i in body["itens"]}
        no_due = next(o for o in sim.orders.values() if o.data_prevista is None)
        _, detail, _ = await api.get(f"/ordem-servico/{no_due.id}")
        assert detail["dataPrevista"] is None and isinstance(detail["totalPecas"], str)
        assert set(detail["formaRecebimento"]) == {"id", "nome"} and "formaPagamento" not in detail
    older = SimConfig(orders=20, seed=3, today=TODAY, quirks=parse_quirks("forma-pagamento"))
    async with TinySimulator(older) as sim:  # the older spec's name for the payment form
        api = Api(http, sim, await access_token(http, sim))
        _, detail, _ = await api.get(f"/ordem-servico/{next(iter(sim.orders))}")
        assert set(detail["formaPagamento"]) == {"id", "nome"} and "formaRecebimento" not in detail
        assert detail["idForma"] == detail["formaPagamento"]["id"]


async def test_rate_limit_answers_429_with_headers(http: aiohttp.ClientSession) -> None:
    config = SimConfig(orders=20, rate_limit_per_minute=5, rate_window_s=0.5)
    async with TinySimulator(config) as sim:
        api = Api(http, sim, await access_token(http, sim))
        remaining: list[int] = []
        for _ in range(20):  # a burst may straddle a window boundary: look at its end
            status, body, headers = await api.get("/ordem-servico")
            if status == 429:
                break
            assert status == 200
            remaining.append(int(headers["X-RateLimit-Remaining"]))
        assert remaining[-5:] == [4, 3, 2, 1, 0]
        assert (status, body) == (429, "Too Many Requests")
        assert headers["X-RateLimit-Limit"] == "5" and headers["X-RateLimit-Remaining"] == "0"
        assert int(headers["X-RateLimit-Reset"]) >= 1
        assert sim.stats.rate_limited == 1
        await asyncio.sleep(0.55)
        assert (await api.get("/ordem-servico"))[0] == 200


async def test_detail_not_found_and_failure_modes(sim: TinySimulator, api: Api) -> None:
    finished = next(
        o for o in sim.orders.values() if o.situacao == 3 and o.data_conclusao is not None
    )
    assert finished.data_conclusao is not None
    status, body, _ = await api.get(f"/ordem-servico/{finished.id}")
    assert status == 200
    assert body["dataConclusao"] == finished.data_conclusao.strftime("%Y-%m-%d %H:%M:%S")
    assert body["totalOrdemServico"] == f"{finished.valor:.2f}"
    for key in ("totalServicos", "totalPecas", "desconto"):
        assert isinstance(body[key], str)
    assert body["contato"] == finished.cliente and "categoria" in body
    status, body, _ = await api.get("/ordem-servico/1")
    assert (status, body) == (
        404,
        {"mensagem": "Ordem de serviço não encontrada", "detalhes": None},
    )
    sim.fail_detail.update({finished.id: "500"})
    assert (await api.get(f"/ordem-servico/{finished.id}"))[0] == 500
    sim.fail_detail[finished.id] = "401"
    assert (await api.get(f"/ordem-servico/{finished.id}"))[0] == 401
    sim.fail_detail[finished.id] = "404"
    assert (await api.get(f"/ordem-servico/{finished.id}"))[0] == 404
    sim.fail_detail[finished.id] = "malformed"
    status, body, _ = await api.get(f"/ordem-servico/{finished.id}")
    assert status == 200 and isinstance(body, str)  # announced as JSON, does not parse
    assert sim.stats.requests_by_endpoint["detail"] == 6


async def test_on_list_page_mutation_shifts_later_pages(sim: TinySimulator, api: Api) -> None:
    before = sorted(i for i, o in sim.orders.items() if o.situacao is Situacao.CANCELADA)
    assert len(before) > 20

    def close_first(simulator: TinySimulator, params: dict[str, str]) -> None:
        if params.get("offset") == "0":
            simulator.set_status(before[0], Situacao.FINALIZADA)

    sim.on_list_page = close_first
    _, first, _ = await api.get("/ordem-servico", situacao=7, limit=10, offset=0)
    _, second, _ = await api.get("/ordem-servico", situacao=7, limit=10, offset=10)
    seen = [i["id"] for i in first["itens"] + second["itens"]]
    assert seen[:10] == before[:10]
    assert seen[10:] == before[11:21]  # before[10] moved to offset 9: skipped
    assert second["paginacao"]["total"] == len(before) - 1


async def test_control_api(sim: TinySimulator, api: Api) -> None:
    sim.clock = lambda: dt.datetime(2024, 6, 30, 12, 0, 0)
    open_id = next(o.id for o in sim.orders.values() if o.situacao in OPEN_STATUSES)
    sim.set_status(open_id, Situacao.FINALIZADA)
    assert sim.snapshot()[open_id]["data_conclusao"] == dt.datetime(2024, 6, 30, 12)
    sim.set_status(open_id, Situacao.EM_ANDAMENTO)
    assert sim.orders[open_id].data_conclusao == dt.datetime(2024, 6, 30, 12)
    new_id = sim.add_order(situacao=Situacao.EM_ABERTO, data=dt.date(2024, 6, 29))
    assert new_id > max(i for i in sim.orders if i != new_id)
    items, _ = await api.list_all(situacao=0, dataInicialEmissao="2024-06-29")
    assert new_id in {i["id"] for i in items}
    sim.delete_order(new_id)
    assert (await api.get(f"/ordem-servico/{new_id}"))[0] == 404
    assert new_id not in sim.snapshot()


async def test_malformed_items_are_listed(sim: TinySimulator, api: Api) -> None:
    no_id = sim.add_malformed("no_id", Situacao.EM_ABERTO)
    bad_date = sim.add_malformed("bad_date", Situacao.EM_ABERTO)
    bad_type = sim.add_malformed("bad_type", Situacao.EM_ABERTO)
    assert "id" not in no_id and bad_date["data"] == "2021-13-45"
    assert bad_type["valor"] == {"oops": 1} and len(sim.malformed) == 3
    assert bad_date["id"] not in sim.orders and bad_type["id"] not in sim.snapshot()
    items, totals = await api.list_all(situacao=0, limit=5)
    assert items[-1] == no_id and bad_date in items and bad_type in items
    assert totals == {sum(1 for o in sim.orders.values() if o.situacao == 0) + 3}
    desc, _ = await api.list_all(situacao=0, orderBy="desc")
    assert desc[-1] == no_id and desc[0] == bad_type  # the newest id comes first


def test_generator_is_deterministic_and_realistic() -> None:
    a = TinySimulator(SimConfig(orders=800, seed=11, today=TODAY)).snapshot()
    b = TinySimulator(SimConfig(orders=800, seed=11, today=TODAY)).snapshot()
    c = TinySimulator(SimConfig(orders=800, seed=12, today=TODAY)).snapshot()
    assert a == b and a != c
    ids = list(a)
    assert ids == sorted(ids) and len(set(ids)) == 800
    statuses = Counter(int(str(row["situacao"])) for row in a.values())
    assert set(statuses) == set(range(8))
    assert statuses[3] == max(statuses.values())
    assert 0.02 <= sum(statuses[s] for s in OPEN_STATUSES) / 800 <= 0.08
    finished = [row for row in a.values() if row["situacao"] == 3]
    assert any(row["data_conclusao"] is None for row in finished)
    emitted = [row["data_emissao"] for row in a.values()]
    assert all(isinstance(d, dt.date) and dt.date(2014, 1, 1) <= d <= TODAY for d in emitted)


def test_parse_quirks() -> None:
    assert parse_quirks("label,zero-dates,money-strings,no-paginacao") == Quirks(
        "label", zero_dates=True, money_as_string=True, omit_paginacao=True
    )
    with pytest.raises(ValueError):
        Quirks(situacao_style="roman")


async def test_serve_announces_and_stops(capsys: pytest.CaptureFixture[str]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(SimConfig(orders=10), "127.0.0.1", 0, stop))
    out = ""
    for _ in range(300):
        await asyncio.sleep(0.01)
        out += capsys.readouterr().out
        if "base_url=" in out:
            break
    found = re.search(r"base_url=(\S+)/public-api/v3 ", out)
    assert found is not None, out
    async with (
        aiohttp.ClientSession() as http,
        http.get(found.group(1) + "/_sim/stats") as resp,
    ):
        assert (await resp.json())["orders"] == 10
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_stats_endpoint(http: aiohttp.ClientSession, sim: TinySimulator, api: Api) -> None:
    await api.get("/ordem-servico", situacao=6)
    async with http.get(sim.base_url.replace("/public-api/v3", "/_sim/stats")) as resp:
        stats = await resp.json()
    assert stats["requests_total"] == 1 and stats["list_requests_by_status"] == {"6": 1}
    assert stats["requests_by_endpoint"] == {"list": 1, "token": 1} and stats["orders"] == 600
    assert stats["token_refreshes"] == 1


class _HostClock:
    """Pins the host's wall clock as the simulator reads it (``datetime``'s ``now`` and
    ``date``'s ``today``, in the host's own zone) to one aware moment."""

    def __init__(self, moment: dt.datetime) -> None:
        class Date(dt.date):
            @classmethod
            def today(cls) -> Date:
                local = moment.astimezone()
                return cls(local.year, local.month, local.day)

        class DateTime(dt.datetime):
            @classmethod
            def now(cls, tz: dt.tzinfo | None = None) -> DateTime:  # type: ignore[override]
                at = moment.astimezone(tz) if tz is not None else moment.astimezone()
                return cls.combine(at.date(), at.timetz() if tz else at.time())

        self.date, self.datetime = Date, DateTime
        self.timedelta, self.time, self.tzinfo, self.UTC = dt.timedelta, dt.time, dt.tzinfo, dt.UTC


@pytest.mark.parametrize(
    "utc",
    [
        dt.datetime(2024, 7, 1, 1, 30, tzinfo=dt.UTC),  # 22:30 of June 30th in São Paulo
        dt.datetime(2024, 6, 30, 9, 15, tzinfo=dt.UTC),  # 06:15 in São Paulo
    ],
)
def test_generated_and_stamped_times_are_never_past_sao_paulos_now(
    monkeypatch: pytest.MonkeyPatch, utc: dt.datetime
) -> None:
    """Tiny never reports a conclusion in the future, and its day is São Paulo's: the
    generator's default ``today`` and every time it draws or stamps, at any hour."""
    from asyncsync.simulator import data, state

    monkeypatch.setattr(data, "dt", _HostClock(utc))
    monkeypatch.setattr(state, "dt", _HostClock(utc))
    now = utc.astimezone(ZoneInfo("America/Sao_Paulo")).replace(tzinfo=None)
    sim = TinySimulator(SimConfig(orders=3000, seed=5, start_year=2024))
    rows = sim.snapshot().values()
    assert max(row["data_emissao"] for row in rows) == now.date()  # type: ignore[type-var]
    concluded = [row["data_conclusao"] for row in rows if row["data_conclusao"] is not None]
    assert concluded and max(concluded) <= now  # type: ignore[type-var, operator]
    assert any(moment.date() == now.date() for moment in concluded)  # type: ignore[attr-defined]
    # A given day stays deterministic: a past one, or São Paulo's today up to now.
    for today in (dt.date(2024, 6, 29), now.date()):
        config = SimConfig(orders=3000, seed=5, start_year=2024, today=today)
        again = TinySimulator(config).snapshot()
        assert again == TinySimulator(config).snapshot()
        moments = [row["data_conclusao"] for row in again.values()]
        assert max(m for m in moments if m is not None) <= now  # type: ignore[type-var]
    # Orders changing during a run are stamped with São Paulo's now, too.
    open_id = next(o.id for o in sim.orders.values() if o.situacao == Situacao.EM_ABERTO)
    sim.set_status(open_id, Situacao.FINALIZADA)
    added = sim.add_order(situacao=Situacao.FINALIZADA)
    assert sim.orders[open_id].data_conclusao == sim.orders[added].data_conclusao == now
    assert sim.orders[added].data == now.date()
