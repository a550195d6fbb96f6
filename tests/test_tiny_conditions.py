"""The Tiny side under real conditions: short-lived tokens, the plan's real quota, outages,
first authorization — each against the simulator and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import socket
import sys
import time

import aiohttp
import orjson
import pytest

from asyncsync import metrics
from asyncsync.clock import utcnow
from asyncsync.errors import ReauthorizationRequired, TinyHTTPError, TinyUnavailable
from asyncsync.jobs.sync import sync_once
from asyncsync.modes.serve import serve_loop
from asyncsync.options import ServeOptions
from asyncsync.readiness import Readiness
from asyncsync.report import Outcome, failed_report
from asyncsync.runtime.fleet import Fleet, open_fleet
from asyncsync.simulator import Quirks, TinySimulator
from asyncsync.status import Situacao
from asyncsync.work.cycle import run_cycle
from asyncsync.work.health import refresh
from asyncsync.work.units import Kind, Unit

from .helpers import common_for, context, cycle, full_sync
from .mirror import diff, mirror


def refresh_bound(duration_s: float, ttl_s: float) -> int:
    """About one refresh per half-lifetime, plus the first grant."""
    return math.ceil(duration_s / (ttl_s / 2)) + 1


@pytest.mark.parametrize("ttl_s", [4.0, 300.0])
async def test_short_tokens_and_demand_above_quota_lose_nothing(
    ttl_s: float, simulator, runtime_for, db
) -> None:
    # 230 requests at 1,200/min take ~12 s: a 4 s token lives three times over while
    # requests queue behind the limiter; a 300 s one (Keycloak's default) never lapses.
    sim = await simulator(orders=220, seed=3, access_ttl_s=ttl_s, rate_limit_per_minute=1200)
    started = time.monotonic()
    async with runtime_for(sim, max_concurrency=8) as rt:
        report = await full_sync(rt)
    duration = time.monotonic() - started
    assert diff(sim.snapshot(), await mirror(db)) == []
    assert report.outcome == "ok" and report.count("import_failures") == 0
    assert sim.stats.rate_limited == 0
    refreshes = sim.stats.token_refreshes
    assert 1 <= refreshes <= refresh_bound(duration, ttl_s), (refreshes, duration)
    if ttl_s == 300:
        assert refreshes == 1  # was one per request when the margin outlived the token
    else:
        assert duration > 2 * ttl_s and refreshes >= 2  # the token really was renewed
    # A token is read when its request leaves the limiter: none is sent already expired.
    assert sim.stats.unauthorized == 0


async def test_a_token_endpoint_slower_than_the_renewal_margin_grants_once_not_per_request(
    simulator, runtime_for, db, caplog
) -> None:
    """Tokens of 4 s from an endpoint that answers in 3 s: the token's expiry was counted
    from the request's sending, its renewal margin (a quarter of its life) from the same,
    so it arrived already due: one grant per API request, the refresh token rotated each
    time, a sync that never ended (sweep F: 34 grants for 33 requests in 120 s)."""
    sim = await simulator(orders=60, seed=2, access_ttl_s=4.0, token_latency_s=3.0)
    with caplog.at_level(logging.INFO, logger="asyncsync.client.tokens"):
        async with runtime_for(sim, max_concurrency=4) as rt:
            report = await asyncio.wait_for(full_sync(rt), 90)
    assert report.outcome == "ok"
    assert diff(sim.snapshot(), await mirror(db)) == []
    api = sim.stats.requests_by_endpoint["list"] + sim.stats.requests_by_endpoint["detail"]
    assert api >= 60 and sim.stats.token_refreshes * 5 <= api, sim.stats.as_dict()
    # What is left of a token on arrival, to the tenth: "valid for 0 s" was said (sweep K).
    granted = [r.getMessage() for r in caplog.records if "access token granted" in r.getMessage()]
    assert granted and all(re.search(r"expires in [01]\.\d s \(at ", m) for m in granted), granted


async def test_the_pace_follows_the_accounts_real_quota(simulator, runtime_for, db) -> None:
    # No --rate-limit: X-RateLimit-Limit (600) sets the pace, not the old default of 120.
    # 200 orders, ~210 requests: ~21 s at 600/min, 105 s at 120/min.
    sim = await simulator(orders=200, seed=5, rate_limit_per_minute=600)
    async with runtime_for(sim) as rt:
        assert rt.common.tiny.rate_limit_per_minute is None
        report = await full_sync(rt)
    assert diff(sim.snapshot(), await mirror(db)) == []
    requests = report.api.total
    achieved = 60 * requests / report.duration_s
    assert requests >= 200 and achieved >= 0.95 * 600, (requests, report.duration_s, achieved)
    # ... and not above it: the pace is the quota, not whatever the API lets through.
    assert 60 * (requests - 1) / report.duration_s <= 600 * 1.05, (requests, report.duration_s)
    assert sim.stats.rate_limited <= max(1, requests // 1000)
    assert report.api.quota_per_minute == 600
    assert metrics.value("asyncsync_tiny_quota_per_minute", {"account": "default"}) == 600


async def test_a_quota_share_leaves_room_for_the_accounts_other_apps(
    simulator, runtime_for, db
) -> None:
    # X-RateLimit-Limit 6,000/min, --quota-share 0.1: this service paces at 600/min (10/s).
    sim = await simulator(orders=2_500, seed=4, rate_limit_per_minute=6000)
    async with runtime_for(sim, quota_share=0.1) as rt:
        started = time.monotonic()
        report = await full_sync(rt, detail_budget=0)
        took = time.monotonic() - started
    assert report.api.quota_per_minute == 600
    listed = {i: {**o, "data_conclusao": None} for i, o in sim.snapshot().items()}
    got = {i: {**o, "data_conclusao": None} for i, o in (await mirror(db)).items()}
    assert diff(listed, got) == []  # what the listings carry (no details were asked)
    requests = report.api.total
    # 25 pages in a tenth of a minute's burst at most, then 10 a second.
    assert requests >= 30 and 60 * (requests - 1) / took <= 600 * 1.05, (requests, took)


async def test_a_quota_the_accounts_other_apps_spend_is_not_asked_for_again(
    simulator, runtime_for, db
) -> None:
    # The account's other apps spend 590 of every 600 (a 2 s window here) as it opens: the
    # service's own count says there is room, X-RateLimit-Remaining says there is not.
    # Trusting the headers, it waits for the reset instead of meeting a 429 each window.
    sim = await simulator(orders=40, seed=3, rate_limit_per_minute=600, rate_window_s=2.0)
    sim.set_other_apps(590)
    async with runtime_for(sim) as rt:
        report = await full_sync(rt)
    assert report.outcome == "ok" and report.count("import_failures") == 0
    assert diff(sim.snapshot(), await mirror(db)) == []
    assert sim.stats.requests_total >= 48 and sim.stats.rate_limited <= 1, sim.stats


async def test_tokens_the_api_drops_early_are_replaced_without_blaming_an_order(
    simulator, runtime_for, db
) -> None:
    # The API stops honouring tokens long before their announced expiry (clock skew, a
    # revocation): every 401 is answered by one refresh and the same request again; no
    # order is held responsible, nothing reaches import_failures.
    sim = await simulator(orders=400, seed=8, latency_s=0.005)
    expirations = 0
    running = True

    async def drop_tokens_now_and_then() -> None:
        nonlocal expirations
        while running:
            await asyncio.sleep(0.4)
            sim.expire_access_tokens()
            expirations += 1

    dropper = asyncio.create_task(drop_tokens_now_and_then())
    try:
        async with runtime_for(sim, max_concurrency=8) as rt:
            report = await full_sync(rt)
    finally:
        running = False
        await dropper
    assert expirations >= 2 and sim.stats.unauthorized > 0, (expirations, sim.stats)
    assert report.outcome == "ok" and report.count("import_failures") == 0
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0
    assert diff(sim.snapshot(), await mirror(db)) == []
    # One refresh per drop at most (single-flight), plus the first grant.
    assert sim.stats.token_refreshes <= expirations + 2, (sim.stats.token_refreshes, expirations)


async def test_a_quota_raised_mid_run_is_followed(simulator, runtime_for) -> None:
    sim = await simulator(orders=30, seed=2, rate_limit_per_minute=120, rate_window_s=1.0)
    async with runtime_for(sim) as rt:
        await rt.client.get_order(next(iter(sim.orders)))
        assert rt.client.api_stats().quota_per_minute == 120
        sim.set_rate_limit(3000)  # the account moved to a bigger plan (from the next window)
        await asyncio.sleep(1.1)
        for order_id in list(sim.orders)[:3]:
            await rt.client.get_order(order_id)
        assert rt.client.api_stats().quota_per_minute == 3000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINY_", "ASYNCSYNC_"))}
    env.pop("DATABASE_URL", None)
    return {**env, **extra}


async def asyncsync(*args: str, env: dict[str, str], stdin: int | None = None):
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncsync", *args, env=env, stdin=stdin,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


def tiny_args(sim: TinySimulator, database_url: str, *, api: bool = True) -> list[str]:
    """The flags reaching ``sim``; without ``api`` (authorize: the token endpoint only,
    which refuses --api-base-url), its token URL alone."""
    return [
        "--database-url", database_url, *(("--api-base-url", sim.base_url) if api else ()),
        "--token-url", sim.token_url, "--log-format", "json",
    ]  # fmt: skip


def app_env(sim: TinySimulator) -> dict[str, str]:
    return cli_env(TINY_CLIENT_ID=sim.config.client_id, TINY_CLIENT_SECRET=sim.config.client_secret)


async def read_url(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, "authorize ended before printing the address"
        if "://" in line and "response_type=code" in line:
            return line.strip()


async def authorize_in_a_browser(sim: TinySimulator, database_url: str) -> str:
    """``asyncsync authorize`` run to its end, a person's browser following the address it
    printed; returns what it printed."""
    proc, status, text = await browse_authorize(sim, database_url, app_env(sim))
    assert status == 200 and "authorized" in text
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def browse_authorize(
    sim: TinySimulator, database_url: str, env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, int, str]:
    """``asyncsync authorize`` started, a person's browser following the address it
    printed: the process, and the status and text of the page the browser ends on."""
    port = free_port()
    proc = await asyncsync(
        "authorize", *tiny_args(sim, database_url, api=False),
        "--redirect-uri", f"http://127.0.0.1:{port}/callback", env=env,
    )  # fmt: skip
    url = await read_url(proc)
    assert url.startswith(sim.auth_url) and "client_id=sim-client" in url
    # The person's browser: Tiny's login, then the redirect to the local callback.
    async with aiohttp.ClientSession() as browser:
        for _ in range(100):  # the callback server may need a moment to listen
            try:
                async with browser.get(url) as page:
                    text = await page.text()
                break
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.05)
    return proc, page.status, text


async def test_the_browser_hears_that_tiny_refused_the_authorization(
    simulator, database_url, db
) -> None:
    # The page said "asyncsync is authorized" before the code was exchanged: with a wrong
    # client secret the terminal said invalid_client, exit 2, and the person at the
    # browser, often not the one at the terminal, closed the tab content (sweep K).
    sim = await simulator(orders=10, seed=4)
    wrong = {**app_env(sim), "TINY_CLIENT_SECRET": "not-the-secret"}
    proc, status, text = await browse_authorize(sim, database_url, wrong)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert status == 502 and "Authorization failed" in text and "is authorized" not in text
    assert "invalid_client" in text, text
    assert proc.returncode == 2 and "invalid_client" in err.decode().splitlines()[-1]
    assert await db.fetchval("SELECT count(*) FROM tiny_tokens") == 0
    assert sim.stats.code_exchanges == 0  # asked once, refused: not asked again


async def test_first_authorization_end_to_end(simulator, database_url, db) -> None:
    sim = await simulator(orders=60, seed=4, rotate_refresh_tokens=True)
    out = await authorize_in_a_browser(sim, database_url)
    assert "next: asyncsync backfill" in out
    stored = await db.fetchval("SELECT refresh_token FROM tiny_tokens")
    assert stored == sim.valid_refresh_token() and sim.stats.code_exchanges == 1
    # No TINY_REFRESH_TOKEN from now on: the stored one is used (and rotated).
    sync = await asyncsync("sync", *tiny_args(sim, database_url), env=app_env(sim))
    out, err = await asyncio.wait_for(sync.communicate(), 60)
    assert sync.returncode == 0, err.decode()
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_once_a_person_authorized_again_nothing_asks_them_to(
    simulator, database_url, db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny refused the account's refresh token and a person ran ``asyncsync authorize``:
    health (exit 1), ``/readyz`` (``authorization``), the gauge behind the critical
    AsyncsyncReauthorizationRequired alert and status went on saying "re-authorization
    required" until the account's next cycle, an interval (15 min) or a backoff later,
    telling the person who had just fixed it to fix it again. Tokens stored after the
    refusal end it at once; and the cycle a worker put back on the queue for an interval
    is due at once."""
    sim = await simulator(orders=30, seed=8)
    options = ServeOptions(interval_s=900, integrity_interval_s=0)
    readiness = Readiness()
    # A worker reads an account it does not hold every 2 minutes: here at each refresh.
    monkeypatch.setattr("asyncsync.runtime.fleet.OTHERS_EVERY_S", 0.0)

    async def cli(*args: str) -> tuple[int | None, str]:
        proc = await asyncsync(*args, "--database-url", database_url, env=cli_env())
        out, _err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode()

    async def said(fleet: Fleet) -> dict[str, object]:
        """What health, status (its JSON and its tables), the gauge and /readyz say."""
        await refresh(fleet, options.interval_s, readiness)  # a worker's gauges, /readyz
        status = orjson.loads((await cli("status", "--json"))[1])
        tables = (await cli("status", "--log-format", "text"))[1]  # not JSON logs' one line
        return {
            "health": await cli("health"),
            "status": status["accounts"][0].get("reauthorization_required"),
            "status tables": "re-authorization required" in tables,
            # The last sync's error, whole (a table cell keeps its first 60 characters).
            "error in tables": [
                " ".join(error.split()) in " ".join(tables.split())
                for error in status["accounts"][0]["last_runs"]["sync"]["errors"]
            ],
            "gauge": metrics.value("asyncsync_reauthorization_required", {"account": "default"}),
            "readiness": readiness.reasons(),
            "cycle": {q["state"] for q in status["queue"] if q["kind"] == Kind.CYCLE.value},
        }

    async with open_fleet(common_for(sim, database_url), options) as fleet:
        async with fleet.lease("default") as leased:
            first = await run_cycle(leased.runtime, options, asyncio.Event(), facts={})
            assert [r.outcome for r in first.reports] == [Outcome.OK, Outcome.OK]
            sim.revoke_refresh_tokens()
            sim.expire_access_tokens()
            await db.execute("UPDATE tiny_tokens SET access_expires_at = now() - interval '1 min'")
            # An interval later: the next cycle syncs (within it, it would only retry).
            await db.execute("DELETE FROM sync_metadata WHERE chave = 'cycle_sync_started'")
            with pytest.raises(ReauthorizationRequired):
                await run_cycle(leased.runtime, options, asyncio.Event(), facts={})
        # As a worker leaves it: the cycle back on the queue for an interval.
        await fleet.database.queue.enqueue([Unit(Kind.CYCLE, "default").item(options.interval_s)])
        refused = await said(fleet)
        await authorize_in_a_browser(sim, database_url)
        authorized = await said(fleet)  # and no cycle since

    problem = "re-authorization required: run `asyncsync authorize`"
    code, line = refused["health"]
    assert code == 1 and line.startswith(f"unhealthy: {problem} (at "), line
    assert refused["gauge"] == 1 and refused["cycle"] == {"deferred"}
    assert refused["error in tables"] == [True], refused
    code, line = authorized["health"]
    assert code == 0 and line.startswith("healthy: last sync "), line  # freshness alone
    assert authorized["gauge"] == 0 and authorized["readiness"] == {}
    assert authorized["cycle"] == {"queued"}  # due now, not an interval later
    assert refused["readiness"] == {"authorization": problem}
    assert refused["status"] is True and refused["status tables"] is True
    assert authorized["status"] is False and authorized["status tables"] is False


async def test_authorization_by_pasting_the_address(simulator, database_url, db) -> None:
    redirect = "https://app.example.com/tiny/callback"  # not on this machine
    sim = await simulator(orders=10, redirect_uris=(redirect,))
    proc = await asyncsync(
        "authorize", *tiny_args(sim, database_url, api=False), "--redirect-uri", redirect,
        env=app_env(sim), stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = await read_url(proc)
    async with aiohttp.ClientSession() as browser, browser.get(url, allow_redirects=False) as r:
        landed = r.headers["Location"]  # where the browser ends: pasted back by the person
    assert landed.startswith(redirect + "?code=")
    # First the address the person opened, not the one the browser ended on: said, not
    # ignored in silence until the timeout; then the right one.
    pasted = f"{url}\n\n{landed}\n".encode()
    _out, err = await asyncio.wait_for(proc.communicate(pasted), 30)
    assert proc.returncode == 0, err.decode()
    assert err.decode().count("that is not the address the browser ended on") == 1, err.decode()
    assert await db.fetchval("SELECT refresh_token FROM tiny_tokens") == sim.valid_refresh_token()


async def test_invalid_grant_has_its_own_exit_code(simulator, database_url, db) -> None:
    sim = await simulator(orders=10)
    token = sim.valid_refresh_token()
    sim.revoke_refresh_tokens()
    for mode in ("sync", "serve"):
        proc = await asyncsync(
            mode, *tiny_args(sim, database_url), env={**app_env(sim), "TINY_REFRESH_TOKEN": token}
        )
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
        text = err.decode()
        assert proc.returncode == 4, text
        assert "invalid_grant" in text and "asyncsync authorize" in text
        assert "Traceback" not in text
    # The runs' rows say the exit code the process returned, not 1 for every failure.
    rows = await db.fetch("SELECT invoked_as, outcome, report FROM sync_runs ORDER BY id")
    assert {(r["invoked_as"], r["outcome"], json.loads(r["report"])["exit_code"])
            for r in rows} == {("sync", "failed", 4), ("serve", "failed", 4)}  # fmt: skip


async def test_an_outage_fails_a_one_shot_run_without_blaming_records(
    simulator, database_url, db
) -> None:
    sim = await simulator(orders=600, seed=6)
    pages = {"n": 0}

    def down_after_a_few_pages(s: TinySimulator, params: dict[str, str]) -> None:
        pages["n"] += 1
        if pages["n"] == 4:
            s.set_outage("503")

    sim.on_list_page = down_after_a_few_pages
    env = {**app_env(sim), "TINY_REFRESH_TOKEN": sim.valid_refresh_token() or ""}
    proc = await asyncsync(
        "sync", *tiny_args(sim, database_url), "--max-retries", "3",
        "--breaker-failures", "4", "--breaker-cooldown", "30", env=env,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode()
    assert proc.returncode == 5, text
    assert "sync failed: Tiny is unavailable" in text and "Traceback" not in text
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0
    # The client stopped asking once the circuit opened: the 4 that opened it and those
    # already in flight (at most 8 at once), not a flood of retries.
    assert sim.stats.outage_answers <= 4 + 8, sim.stats.outage_answers
    lines = [line for line in text.splitlines() if '"level":"warning"' in line]
    assert len(lines) <= 2, lines  # one warning with the counts, not a line per retry


def _listed(orders: dict[int, dict[str, object]]) -> dict[int, dict[str, object]]:
    """What a listing brings of each order (the conclusion time comes with its detail)."""
    return {i: {k: v for k, v in o.items() if k != "data_conclusao"} for i, o in orders.items()}


async def _maintenance_page_once(
    sim: TinySimulator, details: int, lift_after: int | None, page: str = "html"
) -> None:
    """A load balancer in front of Tiny answers its maintenance page (200, text/html; or,
    ``page`` "waf", a firewall its block page, 403 text/html) once ``details`` detail
    requests went out; lifted after ``lift_after`` pages, if given."""
    while sim.stats.requests_by_endpoint["detail"] < details:  # noqa: ASYNC110 (a counter)
        await asyncio.sleep(0.005)
    sim.set_outage(page)
    # Looked at every turn of the event loop the simulator shares: lifted at once.
    while lift_after is not None and sim.stats.outage_answers < lift_after:  # noqa: ASYNC110
        await asyncio.sleep(0)
    if lift_after is not None:
        sim.set_outage(None)


@pytest.mark.parametrize("kind", ["html", "waf"])
async def test_a_maintenance_page_through_the_details_is_an_outage_not_bad_records(
    kind: str, simulator, runtime_for, db
) -> None:
    # A proxy answers its maintenance page with 200 from the details pass on, longer than
    # the retries. Each detail it answered was an import failure (TinyBadPayload: five
    # attempts in ~45 minutes, then manual review, skipped by the backlog until a person
    # ran `failures retry --all`), and the breaker took the 200s for successes: the run
    # ended "ok". ``waf``: a firewall's block page, 403 text/html, is no more Tiny's word
    # on the token or the orders: each detail was an import failure ("HTTP 403"), a
    # token replaced a minute, and the breaker took the 403s for successes.
    sim = await simulator(orders=300, seed=12)
    page = asyncio.create_task(_maintenance_page_once(sim, 5, None, kind))
    try:
        async with runtime_for(sim, max_retries=3, breaker_failures=4,
                               breaker_cooldown_s=30) as rt:  # fmt: skip
            with pytest.raises(TinyUnavailable):
                await asyncio.wait_for(full_sync(rt), 60)
            assert "not_json" in rt.client.breaker.reason, rt.client.breaker.reason
            assert rt.client.breaker.retry_at > 0  # the circuit is open
    finally:
        page.cancel()
    assert sim.outage == kind and sim.stats.outage_answers >= 4
    assert sim.stats.token_refreshes == 1  # the first grant: no token blamed
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0
    assert diff(_listed(sim.snapshot()), _listed(await mirror(db))) == []  # the lists held
    backlog = "SELECT count(*) FROM ordens_servico WHERE detalhe IS NULL"
    assert await db.fetchval(backlog) > 0
    sim.set_outage(None)  # the maintenance is over: the next run fetches the details
    async with runtime_for(sim) as rt:
        s = rt.store
        report = await sync_once(rt.client, s.orders, s.metadata, cycle(), context(rt))
    assert report.outcome == "ok" and report.count("import_failures") == 0
    assert await db.fetchval(backlog) == 0
    assert diff(sim.snapshot(), await mirror(db)) == []


@pytest.mark.parametrize("kind", ["html", "waf"])
async def test_a_maintenance_page_for_a_moment_fails_nothing(
    kind: str, simulator, runtime_for, db
) -> None:
    # The page for a moment mid-details (three answers, a blip the retries ride out):
    # those details were import failures, retried on the failures' schedule from 30 s on.
    # ``waf``: the block page's first 403 replaced the token (rotating the refresh token).
    sim = await simulator(orders=300, seed=13)
    page = asyncio.create_task(_maintenance_page_once(sim, 20, 3, kind))
    try:
        async with runtime_for(sim, max_concurrency=4) as rt:  # 10 failures open the breaker
            report = await asyncio.wait_for(full_sync(rt), 60)
            assert rt.client.breaker.opened == 0
        await asyncio.wait_for(page, 5)
    finally:
        page.cancel()
    assert sim.outage is None and sim.stats.outage_answers >= 3  # the page was met
    assert sim.stats.token_refreshes == 1  # the first grant: a block page replaced it
    assert report.outcome == "ok" and report.count("import_failures") == 0
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_one_address_answering_a_maintenance_page_fails_no_healthy_run(
    simulator, runtime_for, db
) -> None:
    # A page is never one order's: it is asked again like a 5xx and left in the backlog,
    # not an import failure. Its five tries of the pass, alone in a row once the others are
    # through, stay below the breaker's ten: a healthy run is not taken for Tiny down.
    sim = await simulator(orders=100, seed=14)
    paged = sorted(sim.orders)[40]
    sim.fail_detail[paged] = "html"
    async with runtime_for(sim) as rt:
        report = await full_sync(rt)
        assert rt.client.breaker.opened == 0
    assert report.outcome == "ok" and report.count("import_failures") == 0
    assert report.count("details_unavailable") == 1
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0
    detail = "SELECT detalhe IS NOT NULL FROM ordens_servico WHERE id = $1"
    assert await db.fetchval(detail, paged) is False
    sim.fail_detail.clear()
    async with runtime_for(sim) as rt:
        s = rt.store
        await sync_once(rt.client, s.orders, s.metadata, cycle(), context(rt))
    assert await db.fetchval(detail, paged) is True
    assert diff(sim.snapshot(), await mirror(db)) == []


async def test_serve_rides_out_an_outage_and_says_so(
    simulator, runtime_for, db, database_url, caplog
) -> None:
    caplog.set_level(logging.INFO)
    sim = await simulator(orders=300, seed=9)
    stop = asyncio.Event()
    seen: list[list[str]] = []
    health: list[tuple[int, str]] = []
    labels = {"account": "default", "mode": "sync"}
    last_ok: list[float] = []  # the last-success gauge after each cycle
    asked_again: list[float] = []  # when the first request after the outage arrived
    reopens: list[float] = []  # when the breaker said the next attempt may come
    cooldown_s = 3.0  # longer than the health check below, so a cycle started early fails

    async def check_health() -> tuple[int, str]:
        proc = await asyncsync("health", "--database-url", database_url, env=cli_env())
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode().strip()

    def first_request_after(s: TinySimulator, params: dict[str, str]) -> None:
        if not asked_again:
            asked_again.append(time.monotonic())

    async def after_cycle(rt, reports) -> None:
        seen.append([r.outcome.value for r in reports])
        last_ok.append(metrics.value("asyncsync_last_success_timestamp_seconds", labels))
        if len(seen) == 1:  # the next cycle meets an outage half-way through its listing
            moved = sorted(sim.orders)[7]
            sim.set_status(moved, Situacao.APROVADA)
            sim.on_list_page = lambda s, p: s.set_outage("503")
        elif len(seen) == 2:
            reopens.append(rt.client.breaker.retry_at)
            health.append(await check_health())
            sim.on_list_page = first_request_after
            sim.set_outage(None)  # Tiny is back; the next cycle waits out the cool-down
        else:
            health.append(await check_health())
            stop.set()

    tiny = {"max_retries": 2, "breaker_failures": 3, "breaker_cooldown_s": cooldown_s}
    async with runtime_for(sim, **tiny) as rt:
        options = ServeOptions(interval_s=0.05, cycle=cycle(detail_budget=10_000))
        task = asyncio.create_task(serve_loop(rt, options, stop, after_cycle=after_cycle))
        await asyncio.wait_for(task, 60)
    assert seen[0] == ["ok", "ok"] and seen[1] == ["failed"] and seen[2][0] == "ok", seen
    code, line = health[0]
    assert code == 1 and "unhealthy: last cycle failed: Tiny is unavailable" in line, line
    assert health[1][0] == 0, health[1]
    assert last_ok[0] > 0
    assert last_ok[1] == last_ok[0]  # the failed cycle did not advance the last success
    assert last_ok[2] > last_ok[1]  # the recovered one did
    # The next cycle waited for the cool-down instead of knocking on a closed door.
    assert reopens[0] > 0 and asked_again[0] >= reopens[0] - 0.05, (reopens, asked_again)
    assert diff(sim.snapshot(), await mirror(db)) == []  # recovered, exact
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0
    outage_lines = [r for r in caplog.records if "Tiny is unavailable" in r.getMessage()]
    assert 1 <= len(outage_lines) <= 3  # the warning with counts and the failed cycle


async def test_an_idle_service_keeps_its_refresh_token_alive(
    simulator, runtime_for, monkeypatch
) -> None:
    # A refresh token that lapses after 3 s unused (Tiny's lives a day): serve sleeps
    # through a long interval, yet renews it past half its lifetime.
    import asyncsync.work.handlers as handlers

    # The account's keep-alive unit comes back every 0.3 s instead of every 10 minutes.
    monkeypatch.setattr(handlers, "KEEP_ALIVE_EVERY_S", 0.3)
    sim = await simulator(orders=20, seed=1, refresh_ttl_s=3.0)
    stop = asyncio.Event()

    async def after_cycle(rt, reports) -> None:
        asyncio.get_running_loop().call_later(5.0, stop.set)  # idle for 5 s

    async with runtime_for(sim) as rt:
        options = ServeOptions(interval_s=3600, cycle=cycle(detail_budget=10_000))
        await asyncio.wait_for(serve_loop(rt, options, stop, after_cycle=after_cycle), 30)
        age = metrics.value("asyncsync_refresh_token_age_seconds", {"account": "default"})
        assert 0 < age < 3.0
        assert await rt.client.keep_alive() is False  # young enough: nothing to do
    assert sim.stats.token_refreshes >= 3  # the first grant, then one per ~1.5 s idle
    assert sim.stats.stale_refresh_uses == 0
    assert sim.valid_refresh_token() is not None  # it never lapsed


async def test_tokens_the_api_drops_early_answering_403_are_replaced_too(
    simulator, runtime_for, db
) -> None:
    # Tiny documents 401 and 403 and does not say which a dead token gets: a token the
    # API stops honouring early and answers 403 to is refreshed like a 401's, and no
    # order is blamed for it.
    sim = await simulator(
        orders=300, seed=8, latency_s=0.005, quirks=Quirks(refused_token_status=403)
    )
    async with runtime_for(sim, max_concurrency=8) as rt:
        await rt.client.get_order(next(iter(sim.orders)))  # a token is granted and used
        sim.expire_access_tokens()  # ... and dropped long before its announced expiry
        report = await full_sync(rt)
    assert sim.stats.unauthorized > 0
    assert report.outcome == "ok" and report.count("import_failures") == 0, report.outcome
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0
    assert diff(sim.snapshot(), await mirror(db)) == []


@pytest.mark.parametrize(("code", "most"), [("403", 2), ("401", 3)])
async def test_orders_the_api_refuses_cost_no_refresh_each(
    simulator, runtime_for, db, code: str, most: int
) -> None:
    # A 403 can also be the API's word about one order, and Tiny documents that "an
    # individual order can answer 401 while others work". Those orders are import failures
    # with Tiny's answer, and they must not replace the token once each: every refresh
    # rotates the refresh token (and widens the window in which a crash loses it). 30
    # orders answering 401 cost 29 refreshes; a 403 replaces the token once a minute at
    # most, and a 401 first waits for a later request's answer with the same token.
    sim = await simulator(orders=300, seed=9, latency_s=0.002)
    refused = sorted(sim.orders)[::10]
    for order_id in refused:
        sim.fail_detail[order_id] = code
    async with runtime_for(sim, max_concurrency=4) as rt:
        before = sim.stats.token_refreshes
        report = await full_sync(rt)
        refreshes = sim.stats.token_refreshes - before
    assert report.count("import_failures") == len(refused)
    rows = await db.fetch("SELECT id_ordem, erro FROM import_failures ORDER BY id_ordem")
    assert [r["id_ordem"] for r in rows] == refused
    assert all(code in r["erro"] for r in rows), rows[0]["erro"]
    assert refreshes <= most, refreshes  # the first grant, a check or two, not one an order
    expected = {i: o for i, o in sim.snapshot().items() if i not in set(refused)}
    got = await mirror(db)
    assert diff(expected, {i: o for i, o in got.items() if i not in set(refused)}) == []


async def test_retries_of_the_token_endpoint_are_not_logged_one_by_one(
    simulator, database_url
) -> None:
    # Tiny down from the start, its token endpoint too: the refresh is tried three times
    # and gives up (said once, ERROR); its retries were logged one by one at INFO by the
    # backoff library, whose import reset the level logs.configure had set.
    sim = await simulator(orders=50, seed=6)
    sim.set_outage("503")
    env = {**app_env(sim), "TINY_REFRESH_TOKEN": sim.valid_refresh_token() or ""}
    proc = await asyncsync("sync", *tiny_args(sim, database_url), "--log-format", "json",
                           env=env)  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode()
    assert proc.returncode == 5, text
    assert sim.stats.requests_by_endpoint["token"] >= 2  # it was retried
    assert "Backing off" not in text, text


async def test_an_outage_met_at_the_token_endpoint_opens_the_circuit(
    simulator, runtime_for, db
) -> None:
    # Every request needs a fresh 1-s token (one request a second), and Tiny goes down —
    # its token endpoint with it — once details are being fetched. The refreshes failed
    # before any request reached the API, the breaker counted none of them: 270 token
    # requests in 137 s, and the sync ended "ok" with its details left for later.
    sim = await simulator(orders=120, seed=6, access_ttl_s=1.0, rate_limit_per_minute=60)

    async def down_once_details_flow() -> None:
        while sim.stats.requests_by_endpoint["detail"] < 2:  # noqa: ASYNC110 (a counter)
            await asyncio.sleep(0.05)
        sim.set_outage("503")

    watcher = asyncio.create_task(down_once_details_flow())
    try:
        async with runtime_for(sim, max_retries=3, breaker_failures=4,
                               breaker_cooldown_s=30) as rt:  # fmt: skip
            with pytest.raises(TinyUnavailable):
                await asyncio.wait_for(full_sync(rt, detail_budget=20), 60)
            assert rt.client.breaker.retry_at > 0  # the circuit is open
    finally:
        watcher.cancel()
    # The 4 refresh attempts that opened it, three tries each, and those in flight.
    assert sim.stats.outage_answers <= (4 + 8) * 3, sim.stats.as_dict()
    assert await db.fetchval("SELECT count(*) FROM import_failures") == 0


@pytest.mark.parametrize("needs", ["due", "refused"])
async def test_a_token_endpoint_blip_is_tried_again_not_the_end_of_the_run(
    needs: str, simulator, runtime_for, db, caplog: pytest.LogCaptureFixture
) -> None:
    # The token endpoint answers 503 to one refresh's three tries (a Keycloak restart, a
    # proxy's hiccup) while the API is up. The request that needed the token must go
    # again like after any 5xx: it failed at once instead, and the listing with it, so a
    # two-second blip ended a one-shot sync with exit 5, the circuit still closed.
    # ``due``: the token is renewed because it is near its expiry; ``refused``: after a
    # 401 to a token the API dropped early.
    ttl_s = 2.0 if needs == "due" else 14400.0
    sim = await simulator(orders=200, seed=3, access_ttl_s=ttl_s)
    async with runtime_for(sim, max_concurrency=4, max_retries=4) as rt:
        await rt.client.get_order(next(iter(sim.orders)))  # a token is granted and used
        if needs == "due":
            await asyncio.sleep(ttl_s * 0.8)  # past its renewal, still valid
        else:
            sim.expire_access_tokens()
        sim.fail_token_requests = 3  # the next refresh's three tries
        report = await full_sync(rt)
        assert rt.client.breaker.state == "closed"
    assert sim.fail_token_requests == 0  # the blip was met
    assert report.outcome == "ok" and report.count("import_failures") == 0
    # The refresh's own tries given up are no error of a run that went on to succeed
    # (backoff's "Giving up _post(...)" at ERROR paged whoever alerts on error lines).
    gave_up = [r for r in caplog.records if r.name == "backoff" and "Giving up" in r.message]
    assert gave_up and all(r.levelno == logging.WARNING for r in gave_up), gave_up
    assert diff(sim.snapshot(), await mirror(db)) == []
    assert sim.stats.stale_refresh_uses == 0


async def test_a_page_at_the_token_endpoint_is_an_outage_once_it_granted_the_tokens(
    simulator, database_url, db
) -> None:
    # The token host behind a proxy answers its maintenance page (200, text/html) while
    # it is down, the API up. That was "check TINY_TOKEN_URL", exit 2, always, and the
    # units do not restart on 2 (RestartPreventExitStatus=2 4): one maintenance window
    # ended the service for good. Exit 2 stays for an endpoint that never answered in
    # OAuth JSON (a login page pasted for the token URL); once it granted the stored
    # tokens, its page is an outage (exit 5), the sentence still naming TINY_TOKEN_URL.
    sim = await simulator(orders=40, seed=5)
    env = {**app_env(sim), "TINY_REFRESH_TOKEN": sim.valid_refresh_token() or ""}

    async def sync() -> tuple[int | None, str]:
        proc = await asyncsync("sync", *tiny_args(sim, database_url), "--max-retries", "3",
                               "--breaker-failures", "3", env=env)  # fmt: skip
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, err.decode()

    sim.token_page = True
    code, text = await sync()  # never granted anything: the address is wrong
    assert code == 2 and "no OAuth JSON" in text and "check TINY_TOKEN_URL" in text, text
    sim.token_page = False
    code, text = await sync()
    assert code == 0, text  # tokens granted and stored
    sim.expire_access_tokens()  # the next run's first request asks for a new token
    sim.token_page = True
    code, text = await sync()
    assert code == 5, text
    assert "if it persists, check TINY_TOKEN_URL (--token-url), or the account's token_url" in text
    assert "configuration error" not in text and "Traceback" not in text, text
    sim.token_page = False  # the maintenance is over
    code, text = await sync()
    assert code == 0, text
    assert diff(sim.snapshot(), await mirror(db)) == []


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
async def test_authorize_stops_at_once_when_interrupted(sig: str, simulator, database_url, db):
    # A person presses Ctrl-C (or systemd stops the unit) while authorize waits for the
    # browser: nothing is in flight, so it stops at once, exit 130. It ignored the signal
    # and was cut by the drain deadline 25 s later ("still draining ... the next run
    # resumes from what was merged").
    import signal

    sim = await simulator(orders=5)
    proc = await asyncsync(
        "authorize", *tiny_args(sim, database_url, api=False),
        "--redirect-uri", f"http://127.0.0.1:{free_port()}/callback",
        env=app_env(sim), stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await read_url(proc)
    await asyncio.sleep(0.5)  # waiting for the person now
    started = time.monotonic()
    proc.send_signal(getattr(signal, sig))
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    took = time.monotonic() - started
    text = err.decode()
    assert proc.returncode == 130, text
    assert took < 5, (took, text)
    assert "draining" not in text and "Traceback" not in text, text
    assert await db.fetchval("SELECT count(*) FROM tiny_tokens") == 0


@pytest.mark.parametrize("outage", ["503", "html"])
async def test_a_token_dropped_during_an_outage_blip_fails_no_order(
    outage: str, simulator, runtime_for
) -> None:
    # A 401 to a token valid when sent waits for the answers of later requests with the
    # same token: one the API accepted says the 401 is the order's. A 503 of an outage (or
    # a 429, or a proxy's maintenance page) is no acceptance: Tiny answered it before, or
    # without, reading the token.
    # Taken for one, the order of a token Tiny dropped early was an import failure
    # ("401 even with a fresh token") and the token was not renewed.
    sim = await simulator(orders=20, seed=4)
    first, second = sorted(sim.orders)[:2]
    async with runtime_for(sim, max_concurrency=4) as rt:
        await rt.client.get_order(first)  # a token is granted and used
        sim.expire_access_tokens()  # ... and dropped long before its announced expiry
        unauthorized = sim.stats.unauthorized
        refused = asyncio.create_task(rt.client.get_order(first))
        while sim.stats.unauthorized == unauthorized:  # noqa: ASYNC110 (a counter: its 401 came back)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # waiting on the later requests' answers
        sim.set_outage(outage)  # a blip: answered before the token is read
        with pytest.raises(TinyUnavailable):
            await rt.client.get_order(second, retry=False)
        sim.set_outage(None)
        detail = await asyncio.wait_for(refused, 30)
    assert detail.order_id == first


async def test_a_token_dropped_soon_after_an_order_refused_403_is_still_replaced(
    simulator, runtime_for, db
) -> None:
    # Tiny answers 403 to a dead token (its quirk) and to an order this app may not read.
    # An order's 403 makes the next minute's 403s the API's word, so a token dropped in
    # that minute was never replaced: every listing page failed the run with "HTTP 403"
    # (a listing is no order: its 403 can only be the token's).
    sim = await simulator(orders=60, seed=6, quirks=Quirks(refused_token_status=403))
    refused = sorted(sim.orders)[0]
    sim.fail_detail[refused] = "403"
    async with runtime_for(sim) as rt:
        with pytest.raises(TinyHTTPError):
            await rt.client.get_order(refused)  # its 403 is the order's: a failure of its own
        sim.expire_access_tokens()  # ... and, seconds later, the token is dropped early
        report = await full_sync(rt)
    assert report.outcome == "ok", report.outcome
    failed = await db.fetch("SELECT id_ordem FROM import_failures")
    assert [r["id_ordem"] for r in failed] == [refused]  # no other order blamed
    expected = {i: o for i, o in sim.snapshot().items() if i != refused}
    assert diff(expected, {i: o for i, o in (await mirror(db)).items() if i != refused}) == []


def test_a_failed_reports_error_masks_secrets_as_the_cli_sentence_does() -> None:
    """A failed report is printed (--json, JSON logs) and stored as the CLI's sentence is
    printed: a token an answer echoed into the error is masked in it too."""
    echoed = TinyUnavailable('token endpoint said 502: {"refresh_token": "r3fresh-secret"}')
    report = failed_report("sync", "default", utcnow(), echoed)
    assert report.exit_code == 5 and "r3fresh-secret" not in report.errors[0], report.errors
    assert '"refresh_token": "***"' in report.errors[0], report.errors
