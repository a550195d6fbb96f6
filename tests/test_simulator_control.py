"""Driving the simulator over HTTP (``/_sim/control``, ``/_sim/stats``) and from the CLI."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from asyncsync.simulator import Quirks, SimConfig, TinySimulator
from asyncsync.simulator.__main__ import build_parser, config_from_args, parse_quirks

from .test_simulator import Api, access_token, refresh


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post_control(http: aiohttp.ClientSession, origin: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else None
    kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": body}
    async with http.post(f"{origin}/_sim/control", **kwargs) as resp:
        return resp.status, await resp.json()


async def get_stats(http: aiohttp.ClientSession, origin: str) -> dict[str, Any]:
    async with http.get(f"{origin}/_sim/stats") as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


async def test_control_endpoint_applies_and_validates(http: aiohttp.ClientSession) -> None:
    async with TinySimulator(SimConfig(orders=20, seed=9)) as sim:
        status, state = await post_control(http, sim.origin, {"rate_limit": 7})
        assert status == 200 and state["rate_limit"] == 7 and sim.rate_limit == 7
        api = Api(http, sim, await access_token(http, sim))
        assert (await api.get("/ordem-servico"))[2]["X-RateLimit-Limit"] == "7"
        status, state = await post_control(http, sim.origin, {"outage": "503"})
        assert status == 200 and state["outage"] == "503" and sim.outage == "503"
        assert (await api.get("/ordem-servico"))[0] == 503
        order_id = next(iter(sim.orders))
        change = {"outage": None, "detail_error_rate": 1, "pad_list_bytes": 5000}
        status, state = await post_control(http, sim.origin, change)
        assert status == 200 and sim.outage is None and sim.detail_error_rate == 1.0
        assert (await api.get(f"/ordem-servico/{order_id}"))[0] == 500
        status, body, _ = await api.get("/ordem-servico", limit=1)
        assert status == 200 and len(body["_padding"]) > 4000
        before = sim.control_state()
        for bad in (
            {"outage": "404"},
            {"nope": 1},
            {"detail_error_rate": 2},
            {"rate_limit": -1},
            {"rate_limit": True},
            {"deny_authorization": "yes"},
            {"list_error_rate": 0.5, "outage": "sometimes"},  # nothing applied, not half
            [1, 2],
            b"{not json",
        ):
            status, answer = await post_control(http, sim.origin, bad)
            assert status == 400 and answer["error"], bad
        assert sim.control_state() == before
        status, _ = await post_control(http, sim.origin, {"expire_access_tokens": True})
        assert status == 200 and (await api.get("/ordem-servico"))[0] == 401
        stats = await get_stats(http, sim.origin)
        assert stats["outage_answers"] == 1 and stats["injected_errors"] == 1
        assert stats["control"] == sim.control_state() and stats["windows"] == 1
        for key in ("code_exchanges", "stale_refresh_uses", "window_peak", "token_refreshes"):
            assert key in stats


def test_cli_flags_env_twins_and_unstable_quirk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINY_SIM_ACCESS_TTL_S", "4")
    monkeypatch.setenv("TINY_SIM_QUIRKS", "unstable,zero-dates")
    monkeypatch.setenv("TINY_SIM_REDIRECT_URIS", "https://a.example/cb, http://127.0.0.1:9/cb")
    args = build_parser().parse_args(["--refresh-ttl-s", "30", "--detail-error-rate", "0.25"])
    config = config_from_args(args)
    assert (config.access_ttl_s, config.refresh_ttl_s) == (4.0, 30.0)
    assert config.detail_error_rate == 0.25 and config.list_error_rate == 0.0
    assert config.quirks == Quirks("unstable", zero_dates=True)
    assert config.redirect_uris == ("https://a.example/cb", "http://127.0.0.1:9/cb")
    assert parse_quirks("unstable").situacao_style == "unstable"
    with pytest.raises(argparse.ArgumentTypeError):
        parse_quirks("unstable,label")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--detail-error-rate", "1.5"])
    monkeypatch.setenv("TINY_SIM_LIST_ERROR_RATE", "-0.1")
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


async def test_out_of_process_simulator_is_driven_over_http(http: aiohttp.ClientSession) -> None:
    env = {**os.environ, "TINY_SIM_PORT": "0", "TINY_SIM_QUIRKS": "unstable"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncsync.simulator",
        "--orders",
        "30",
        "--access-ttl-s",
        "4",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        said = dict(word.split("=", 1) for word in line.split() if "=" in word)
        assert said["auth_url"].endswith("/realms/tiny/protocol/openid-connect/auth")
        origin = said["base_url"].rsplit("/public-api/", 1)[0]
        form = {
            "grant_type": "refresh_token",
            "client_id": said["client_id"],
            "client_secret": said["client_secret"],
            "refresh_token": said["refresh_token"],
        }
        async with http.post(said["token_url"], data=form) as resp:
            token = await resp.json()
        assert token["expires_in"] == 4
        status, _ = await post_control(http, origin, {"outage": "500"})
        assert status == 200
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        async with http.get(said["base_url"] + "/ordem-servico", headers=headers) as resp:
            assert resp.status == 500
        await post_control(http, origin, {"outage": None})
        async with http.get(said["base_url"] + "/ordem-servico", headers=headers) as resp:
            assert resp.status == 200 and (await resp.json())["itens"]
        stats = await get_stats(http, origin)
        assert stats["outage_answers"] == 1 and stats["orders"] == 30
        assert stats["requests_total"] == 2 and stats["token_refreshes"] == 1
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_stats_report_a_code_exchange_and_a_stale_refresh(
    http: aiohttp.ClientSession,
) -> None:
    async with TinySimulator(SimConfig(orders=5)) as sim:
        params = {
            "client_id": "sim-client",
            "response_type": "code",
            "redirect_uri": "http://localhost:1/cb",
            "scope": "openid",
        }
        async with http.get(sim.auth_url, params=params, allow_redirects=False) as resp:
            code = resp.headers["Location"].split("code=")[1].split("&")[0]
        form = {
            "grant_type": "authorization_code",
            "client_id": "sim-client",
            "client_secret": "sim-secret",
            "code": code,
            "redirect_uri": "http://localhost:1/cb",
        }
        async with http.post(sim.token_url, data=form) as resp:
            assert resp.status == 200
        assert (await refresh(http, sim, "sim-refresh-0"))[0] == 400  # rotated away
        stats = await get_stats(http, sim.origin)
        assert (stats["code_exchanges"], stats["stale_refresh_uses"]) == (1, 1)
        assert stats["requests_by_endpoint"] == {"auth": 1, "token": 2}
