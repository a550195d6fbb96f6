"""The simulator's failures and stress: outages, injected 500s, unstable ``situacao``,
huge streamed answers and quota accounting."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from asyncsync.simulator import Quirks, SimConfig, TinySimulator
from asyncsync.simulator.access import RateWindow
from asyncsync.status import parse_situacao

from .test_simulator import TODAY, Api, access_token, refresh


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def started(http: aiohttp.ClientSession, config: SimConfig) -> tuple[TinySimulator, Api]:
    sim = TinySimulator(config)
    await sim.start()
    return sim, Api(http, sim, await access_token(http, sim))


@pytest.mark.parametrize("mode", ["503", "500"])
async def test_outage_answers_everything_without_charging(
    http: aiohttp.ClientSession, mode: str
) -> None:
    sim, api = await started(http, SimConfig(orders=20, rate_limit_per_minute=5))
    try:
        order_id = next(iter(sim.orders))
        assert (await api.get("/ordem-servico"))[2]["X-RateLimit-Remaining"] == "4"
        with pytest.raises(ValueError):
            sim.set_outage("404")
        sim.set_outage(mode)
        assert sim.outage == mode
        for path in ("/ordem-servico", f"/ordem-servico/{order_id}"):
            for _ in range(3):
                status, body, _ = await api.get(path)
                assert status == int(mode)
                assert set(body) == {"mensagem", "detalhes"} and body["mensagem"]
        token = sim.valid_refresh_token()
        assert token is not None
        status, body = await refresh(http, sim, token)
        assert status == int(mode) and body["detalhes"] is None
        assert sim.stats.outage_answers == 7 and sim.stats.token_refreshes == 1
        sim.set_outage(None)
        status, _, headers = await api.get("/ordem-servico")
        assert status == 200 and headers["X-RateLimit-Remaining"] == "3"  # 5xx cost nothing
        assert sim.stats.requests_total == 8
    finally:
        await sim.aclose()


@pytest.mark.parametrize(("mode", "code"), [("html", 200), ("waf", 403)])
async def test_outage_pages_answer_without_charging(
    http: aiohttp.ClientSession, mode: str, code: int
) -> None:
    # A load balancer's maintenance page in front of the API (200, text/html), or a
    # firewall's block page (403, text/html, blocking every request for a while): no rate
    # headers, nothing charged; the token endpoint (another host at Tiny) stays up.
    sim, api = await started(http, SimConfig(orders=20, rate_limit_per_minute=5))
    try:
        order_id = next(iter(sim.orders))
        assert (await api.get("/ordem-servico"))[2]["X-RateLimit-Remaining"] == "4"
        sim.set_outage(mode)
        assert sim.outage == mode
        for path in ("/ordem-servico", f"/ordem-servico/{order_id}"):
            status, body, headers = await api.get(path)
            assert status == code and headers["Content-Type"].startswith("text/html")
            assert "<html>" in body and "X-RateLimit-Remaining" not in headers
        token = sim.valid_refresh_token()
        assert token is not None
        assert (await refresh(http, sim, token))[0] == 200
        assert sim.stats.outage_answers == 2
        sim.set_outage(None)
        status, _, headers = await api.get("/ordem-servico")
        assert status == 200 and headers["X-RateLimit-Remaining"] == "3"  # pages cost nothing
        if mode == "html":
            sim.fail_detail[order_id] = "html"  # the page for one address only
            status, body, headers = await api.get(f"/ordem-servico/{order_id}")
            assert status == 200 and headers["Content-Type"].startswith("text/html")
            assert "<html>" in body
    finally:
        await sim.aclose()


async def test_the_token_endpoint_answers_its_own_maintenance_page(
    http: aiohttp.ClientSession,
) -> None:
    # token_page: the token host down behind its proxy, which answers its maintenance
    # page (200, text/html, no OAuth JSON) while the API is up; switched over HTTP too.
    async with TinySimulator(SimConfig(orders=5)) as sim:
        async with http.post(sim.origin + "/_sim/control", json={"token_page": True}) as resp:
            assert resp.status == 200 and (await resp.json())["token_page"] is True
        token = sim.valid_refresh_token()
        assert token is not None
        with pytest.raises(aiohttp.ContentTypeError) as page:  # no OAuth JSON
            await refresh(http, sim, token)
        assert page.value.status == 200 and "text/html" in page.value.message
        assert sim.valid_refresh_token() == token  # nothing granted, nothing rotated
        assert sim.stats.outage_answers == 1 and sim.stats.token_refreshes == 0
        sim.token_page = False
        status, body = await refresh(http, sim, token)
        assert status == 200 and body["refresh_token"] != token
        api = Api(http, sim, body["access_token"])
        assert (await api.get("/ordem-servico"))[0] == 200


async def test_outage_reset_drops_connections(http: aiohttp.ClientSession) -> None:
    sim, api = await started(http, SimConfig(orders=20))
    try:
        sim.set_outage("reset")
        with pytest.raises(aiohttp.ClientConnectionError):
            await api.get("/ordem-servico")
        token = sim.valid_refresh_token()
        assert token is not None
        with pytest.raises(aiohttp.ClientConnectionError):
            await refresh(http, sim, token)
        # aiohttp retries an idempotent request once on a dropped keep-alive connection.
        assert sim.stats.outage_answers >= 2
        sim.set_outage(None)
        assert (await api.get("/ordem-servico"))[0] == 200
    finally:
        await sim.aclose()


async def test_outage_hang_times_out_and_resumes_when_lifted(
    http: aiohttp.ClientSession,
) -> None:
    sim, api = await started(http, SimConfig(orders=20))
    try:
        sim.set_outage("hang")
        headers = {"Authorization": f"Bearer {api.token}"}
        url = sim.base_url + "/ordem-servico"
        with pytest.raises(asyncio.TimeoutError):
            async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=0.2)):
                pass
        waiting = asyncio.create_task(api.get("/ordem-servico"))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        sim.set_outage(None)
        status, body, _ = await asyncio.wait_for(waiting, 2)
        assert status == 200 and body["itens"]
        sim.set_outage("hang")
        stuck = asyncio.create_task(api.get("/ordem-servico"))
        await asyncio.sleep(0.05)
    finally:
        started_at = time.monotonic()
        await sim.aclose()  # releases hung requests instead of waiting for them
    assert time.monotonic() - started_at < 2
    try:
        outcome: object = (await asyncio.wait_for(stuck, 1))[0]
    except aiohttp.ClientConnectionError:
        outcome = "dropped"
    assert outcome in (503, "dropped")


async def test_injected_error_rates(http: aiohttp.ClientSession) -> None:
    config = SimConfig(orders=20, seed=3, detail_error_rate=0.5, rate_limit_per_minute=1000)
    sim, api = await started(http, config)
    try:
        order_id = next(iter(sim.orders))
        statuses = [(await api.get(f"/ordem-servico/{order_id}"))[0] for _ in range(40)]
        assert set(statuses) == {200, 500}  # per request, not per order: a retry can work
        assert sim.stats.injected_errors == statuses.count(500)
        assert 8 <= statuses.count(500) <= 32
        assert {(await api.get("/ordem-servico"))[0] for _ in range(5)} == {200}
        sim.detail_error_rate, sim.list_error_rate = 0.0, 1.0
        status, body, headers = await api.get("/ordem-servico")
        assert status == 500 and body["mensagem"] and "X-RateLimit-Remaining" in headers
        assert (await api.get(f"/ordem-servico/{order_id}"))[0] == 200
        assert sim.stats.injected_errors == statuses.count(500) + 1
    finally:
        await sim.aclose()


async def test_unstable_situacao_changes_between_answers(http: aiohttp.ClientSession) -> None:
    quirks = Quirks(situacao_style="unstable")
    sim, api = await started(http, SimConfig(orders=200, seed=4, today=TODAY, quirks=quirks))
    try:
        forms: defaultdict[int, set[object]] = defaultdict(set)
        for _ in range(3):
            _, body, _ = await api.get("/ordem-servico", situacao=3, limit=50)
            for item in body["itens"]:
                forms[item["id"]].add(item["situacao"])
                assert parse_situacao(item["situacao"]) == 3
        some = next(iter(forms))
        for _ in range(6):
            forms[some].add((await api.get(f"/ordem-servico/{some}"))[1]["situacao"])
        assert {type(f) for fs in forms.values() for f in fs} == {int, str}
        assert sum(len(fs) > 1 for fs in forms.values()) > len(forms) // 2
        assert forms[some] == {3, "3", "3 - Finalizada"}
    finally:
        await sim.aclose()


async def raw_get(api: Api, path: str) -> tuple[bytes, Any]:
    headers = {"Authorization": f"Bearer {api.token}"}
    async with api.http.get(api.sim.base_url + path, headers=headers) as resp:
        assert resp.status == 200
        return await resp.read(), resp.headers


async def test_huge_answers_are_streamed_valid_json(http: aiohttp.ClientSession) -> None:
    sim, api = await started(http, SimConfig(orders=60, seed=2))
    try:
        plain, _ = await raw_get(api, "/ordem-servico?limit=20")
        sim.pad_list_bytes = 3_000_000
        padded, headers = await raw_get(api, "/ordem-servico?limit=20")
        assert len(padded) == 3_000_000 == int(headers["Content-Length"])
        body = orjson.loads(padded)
        assert set(body) == {"itens", "paginacao", "_padding"}
        assert {k: v for k, v in body.items() if k != "_padding"} == orjson.loads(plain)
        order = next(o for o in sim.orders.values() if o.extra["observacoes"])
        normal, _ = await raw_get(api, f"/ordem-servico/{order.id}")
        sim.fail_detail[order.id] = "huge"
        sim.huge_detail_bytes = 3_000_000
        huge, _ = await raw_get(api, f"/ordem-servico/{order.id}")
        assert len(huge) == 3_000_000
        detail, expected = orjson.loads(huge), orjson.loads(normal)
        assert detail["observacoes"].startswith(order.extra["observacoes"])
        assert {**detail, "observacoes": None} == {**expected, "observacoes": None}
    finally:
        await sim.aclose()


async def test_window_accounting_and_runtime_rate_limit(http: aiohttp.ClientSession) -> None:
    t0 = time.monotonic()  # windows start when the simulator is built: just after t0
    config = SimConfig(orders=10, rate_limit_per_minute=3, rate_window_s=0.5)
    sim, api = await started(http, config)
    try:
        statuses = [(await api.get("/ordem-servico"))[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        sim.set_rate_limit(5)  # this window has been used: the next one gets it
        status, _, headers = await api.get("/ordem-servico")
        assert status == 429 and headers["X-RateLimit-Limit"] == "3"
        assert (sim.stats.window_peak, sim.stats.windows) == (3, 1)
        await asyncio.sleep(t0 + 0.6 - time.monotonic())  # well inside the second window
        seen = [await api.get("/ordem-servico") for _ in range(6)]
        assert [s for s, _, _ in seen] == [200] * 5 + [429]
        assert seen[0][2]["X-RateLimit-Limit"] == "5" and sim.rate_limit == 5
        assert (sim.stats.window_peak, sim.stats.windows) == (5, 2)
        assert sim.stats.rate_limited == 4
    finally:
        await sim.aclose()
    async with TinySimulator(SimConfig(orders=5, rate_limit_per_minute=3)) as fresh:
        fresh.set_rate_limit(40)  # no request yet: applies at once
        api = Api(http, fresh, await access_token(http, fresh))
        assert (await api.get("/ordem-servico"))[2]["X-RateLimit-Limit"] == "40"


def test_the_accounts_other_apps_spend_its_window_as_it_opens() -> None:
    # Tiny's quota is the account's, shared by every app connected to it: what the other
    # apps spent is gone from X-RateLimit-Remaining, though this caller never saw it go.
    now = [0.0]
    window = RateWindow(10, 60.0, clock=lambda: now[0])
    first = window.hit()
    assert (first.allowed, first.remaining, first.reset_s) == (True, 9, 60)
    window.other_apps = 4  # switched on mid-window: spent at once
    assert window.peek().remaining == 5
    assert [window.hit().allowed for _ in range(6)] == [True] * 5 + [False]
    assert (window.peak, window.windows_seen) == (6, 1)  # the callers' own, not theirs
    now[0] = 60.0  # a new window: theirs spent as it opens
    assert window.peek().remaining == 6 and window.hit().remaining == 5
    assert window.windows_seen == 2


async def test_other_apps_are_switched_on_over_http(http: aiohttp.ClientSession) -> None:
    async with TinySimulator(SimConfig(orders=5, rate_limit_per_minute=50)) as sim:
        url = sim.origin + "/_sim/control"
        async with http.post(url, json={"other_apps": 40}) as resp:
            assert resp.status == 200 and (await resp.json())["other_apps"] == 40
        assert sim.other_apps == 40
        async with http.post(url, json={"other_apps": -1}) as resp:
            assert resp.status == 400 and sim.other_apps == 40
