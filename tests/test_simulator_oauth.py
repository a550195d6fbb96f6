"""The simulator's OAuth2: the authorization-code flow, token lifetimes and stale refreshes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from asyncsync.simulator import SimConfig, TinySimulator
from asyncsync.simulator.oauth import TokenStore

from .test_simulator import Api, refresh

CALLBACK = "http://127.0.0.1:8765/callback"


@pytest.fixture
async def sim() -> AsyncIterator[TinySimulator]:
    async with TinySimulator(SimConfig(orders=20, seed=5)) as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def consent(
    http: aiohttp.ClientSession, sim: TinySimulator, **params: str
) -> tuple[int, str, dict[str, list[str]]]:
    """GET the authorization endpoint without following the redirect: status, Location
    (or the page text) and the redirect's query."""
    query = {
        "client_id": sim.config.client_id,
        "redirect_uri": CALLBACK,
        "scope": "openid",
        "response_type": "code",
        **params,
    }
    query = {k: v for k, v in query.items() if v != "<omit>"}
    async with http.get(sim.auth_url, params=query, allow_redirects=False) as resp:
        if resp.status == 302:
            location = resp.headers["Location"]
            return resp.status, location, parse_qs(urlsplit(location).query)
        return resp.status, await resp.text(), {}


async def exchange(
    http: aiohttp.ClientSession, sim: TinySimulator, code: str, redirect_uri: str = CALLBACK
) -> tuple[int, dict[str, Any]]:
    form = {
        "grant_type": "authorization_code",
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "redirect_uri": redirect_uri,
        "code": code,
    }
    async with http.post(sim.token_url, data=form) as resp:
        return resp.status, await resp.json()


async def test_code_flow_through_a_loopback_callback(
    http: aiohttp.ClientSession, sim: TinySimulator
) -> None:
    """The CLI-helper flow: the browser is redirected to a local callback with the code."""
    received: list[dict[str, str]] = []

    async def callback(request: web.Request) -> web.Response:
        received.append(dict(request.query))
        return web.Response(text="You can close this window.")

    app = web.Application()
    app.router.add_get("/callback", callback)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    redirect_uri = f"http://127.0.0.1:{runner.addresses[0][1]}/callback"
    try:
        params = {
            "client_id": sim.config.client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid",
            "response_type": "code",
            "state": "xyz 1",
        }
        async with http.get(sim.auth_url, params=params) as resp:
            assert resp.status == 200 and "close this window" in await resp.text()
    finally:
        await runner.cleanup()
    [query] = received
    assert query["state"] == "xyz 1" and query["session_state"] and query["code"]
    status, body = await exchange(http, sim, query["code"], redirect_uri)
    assert status == 200, body
    assert body["expires_in"] == 14400 and body["token_type"] == "Bearer"
    assert body["refresh_token"] != "sim-refresh-0"
    assert sim.valid_refresh_token() == body["refresh_token"]
    api = Api(http, sim, body["access_token"])
    assert (await api.get("/ordem-servico"))[0] == 200
    assert (await exchange(http, sim, query["code"], redirect_uri)) == (
        400,
        {"error": "invalid_grant", "error_description": "Code already used"},
    )
    # Rotation: the refresh token held before the new authorization no longer works.
    status, old = await refresh(http, sim, "sim-refresh-0")
    assert (status, old["error"]) == (400, "invalid_grant")
    status, renewed = await refresh(http, sim, body["refresh_token"])
    assert status == 200 and sim.valid_refresh_token() == renewed["refresh_token"]
    stats = sim.stats
    assert (stats.code_exchanges, stats.token_refreshes, stats.stale_refresh_uses) == (1, 1, 1)
    assert stats.requests_by_endpoint["auth"] == 1


async def test_authorization_endpoint_validates_like_keycloak(
    http: aiohttp.ClientSession, sim: TinySimulator
) -> None:
    status, page, _ = await consent(http, sim, client_id="someone-else")
    assert status == 400 and "Invalid client" in page
    for bad in (
        "<omit>",
        "/callback",
        "ftp://127.0.0.1/cb",
        "http://evil.example/cb",
        "http://127.0.0.1:8765/cb#frag",
        "http://127.0.0.1:99999/cb",
    ):
        status, page, _ = await consent(http, sim, redirect_uri=bad)
        assert status == 400 and "redirect_uri" in page, bad
    status, location, query = await consent(http, sim, response_type="token", state="s1")
    assert status == 302 and location.startswith(CALLBACK + "?")
    assert query["error"] == ["unsupported_response_type"] and query["state"] == ["s1"]
    status, _, query = await consent(http, sim, response_type="<omit>")
    assert query["error"] == ["invalid_request"] and "state" not in query
    status, location, query = await consent(http, sim, redirect_uri="http://localhost/cb?a=1")
    assert status == 302 and location.startswith("http://localhost/cb?a=1&code=")
    assert set(query) == {"a", "code", "session_state"}


async def test_registered_redirect_uris_must_match_exactly(http: aiohttp.ClientSession) -> None:
    registered = "https://app.example.com/tiny/callback"
    async with TinySimulator(SimConfig(orders=5, redirect_uris=(registered,))) as sim:
        status, location, query = await consent(http, sim, redirect_uri=registered)
        assert status == 302 and location.startswith(registered + "?code=")
        assert (await exchange(http, sim, query["code"][0], registered))[0] == 200
        for other in (CALLBACK, registered + "/", registered.replace("https", "http")):
            status, page, _ = await consent(http, sim, redirect_uri=other)
            assert status == 400 and "redirect_uri" in page, other


async def test_deny_authorization_redirects_with_access_denied(
    http: aiohttp.ClientSession, sim: TinySimulator
) -> None:
    sim.deny_authorization = True
    status, _, query = await consent(http, sim, state="abc")
    assert status == 302 and query["error"] == ["access_denied"]
    assert query["error_description"] and query["state"] == ["abc"] and "code" not in query
    sim.deny_authorization = False
    assert "code" in (await consent(http, sim))[2]


async def test_code_exchange_failures(http: aiohttp.ClientSession) -> None:
    async with TinySimulator(SimConfig(orders=5, code_ttl_s=0.2)) as sim:
        _, _, query = await consent(http, sim)
        code = query["code"][0]
        status, body = await exchange(http, sim, code, "http://127.0.0.1:8765/other")
        assert (status, body["error_description"]) == (400, "Incorrect redirect_uri")
        status, body = await exchange(http, sim, code)  # spent by the failed attempt
        assert (status, body["error"]) == (400, "invalid_grant")
        status, body = await exchange(http, sim, "made-up")
        assert (status, body["error_description"]) == (400, "Code not valid")
        _, _, query = await consent(http, sim)
        await asyncio.sleep(0.25)
        status, body = await exchange(http, sim, query["code"][0])
        assert (status, body) == (
            400,
            {"error": "invalid_grant", "error_description": "Code is expired"},
        )
        _, _, query = await consent(http, sim)
        form = {
            "grant_type": "authorization_code",
            "client_id": "sim-client",
            "client_secret": "wrong",
            "code": query["code"][0],
            "redirect_uri": CALLBACK,
        }
        async with http.post(sim.token_url, data=form) as resp:
            assert (resp.status, (await resp.json())["error"]) == (401, "invalid_client")
        assert sim.stats.code_exchanges == 0
        assert sim.valid_refresh_token() == "sim-refresh-0"


async def test_the_token_endpoint_reads_only_a_form(
    http: aiohttp.ClientSession, sim: TinySimulator
) -> None:
    # Tiny's endpoint takes application/x-www-form-urlencoded (TINY_API.md); the simulator
    # read a multipart body too, so a client sending one passed here and failed there.
    _, _, query = await consent(http, sim)
    form = {
        "grant_type": "authorization_code",
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "redirect_uri": CALLBACK,
        "code": query["code"][0],
    }
    for body in ({"data": aiohttp.FormData(form, default_to_multipart=True)}, {"json": form}):
        async with http.post(sim.token_url, **body) as resp:
            said = await resp.json()
        assert (resp.status, said["error"]) == (400, "invalid_request"), said
        assert "application/x-www-form-urlencoded" in said["error_description"], said
    assert sim.stats.code_exchanges == 0
    status, tokens = await exchange(http, sim, query["code"][0])  # the code is not spent
    assert status == 200 and sim.valid_refresh_token() == tokens["refresh_token"], tokens


async def test_code_exchange_without_rotation_keeps_older_refresh_tokens(
    http: aiohttp.ClientSession,
) -> None:
    async with TinySimulator(SimConfig(orders=5, rotate_refresh_tokens=False)) as sim:
        _, _, query = await consent(http, sim)
        status, body = await exchange(http, sim, query["code"][0])
        assert status == 200 and sim.valid_refresh_token() == body["refresh_token"]
        assert (await refresh(http, sim, "sim-refresh-0"))[0] == 200
        status, again = await refresh(http, sim, body["refresh_token"])
        assert status == 200 and again["refresh_token"] == body["refresh_token"]


async def test_access_token_lives_exactly_its_ttl(http: aiohttp.ClientSession) -> None:
    status, body = await refresh_once(http, SimConfig(orders=5, access_ttl_s=4.0))
    assert status == 200 and body["expires_in"] == 4 and isinstance(body["expires_in"], int)
    now = [100.0]
    store = TokenStore(SimConfig(access_ttl_s=4.0), clock=lambda: now[0])
    grant = store.grant(
        {
            "grant_type": "refresh_token",
            "client_id": "sim-client",
            "client_secret": "sim-secret",
            "refresh_token": "sim-refresh-0",
        }
    )
    token = grant.body["access_token"]
    now[0] = 103.999
    assert store.check_access(token)
    now[0] = 104.0
    assert not store.check_access(token)
    async with TinySimulator(SimConfig(orders=5, access_ttl_s=0.3)) as sim:
        token_sim = sim.valid_refresh_token()
        assert token_sim is not None
        status, body = await refresh(http, sim, token_sim)
        assert body["expires_in"] == 0.3  # not rounded down to a dead-on-arrival 0
        api = Api(http, sim, body["access_token"])
        assert (await api.get("/ordem-servico"))[0] == 200
        await asyncio.sleep(0.35)
        assert (await api.get("/ordem-servico"))[0] == 401


async def refresh_once(http: aiohttp.ClientSession, config: SimConfig) -> tuple[int, Any]:
    async with TinySimulator(config) as sim:
        return await refresh(http, sim, "sim-refresh-0")


async def test_stale_refresh_uses_count_only_rotated_tokens(
    http: aiohttp.ClientSession, sim: TinySimulator
) -> None:
    status, first = await refresh(http, sim, "sim-refresh-0")
    assert status == 200
    for _ in range(2):  # a second process refreshing with the token already spent
        status, body = await refresh(http, sim, "sim-refresh-0")
        assert (status, body["error"]) == (400, "invalid_grant")
    assert (await refresh(http, sim, "never-issued"))[0] == 400
    sim.revoke_refresh_tokens()
    assert (await refresh(http, sim, first["refresh_token"]))[0] == 400
    assert sim.stats.stale_refresh_uses == 2 and sim.stats.token_refreshes == 1
