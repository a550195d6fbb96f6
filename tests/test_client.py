"""The Tiny client against the simulator: tokens, 401s, 429s, retries and errors."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import pytest
from aioresponses import aioresponses
from yarl import URL

from asyncsync import metrics
from asyncsync.client import AccountLimiter, MemoryTokenStore, TinyClient, TokenManager, answers
from asyncsync.client import tokens as token_module
from asyncsync.client.breaker import CircuitBreaker
from asyncsync.clock import utcnow
from asyncsync.errors import (
    DatabaseUnavailable,
    ReauthorizationRequired,
    RequestWithheld,
    TinyAuthError,
    TinyAuthMisconfigured,
    TinyBadPayload,
    TinyNotFound,
    TinyOrderForbidden,
    TinyOutage,
    TinyRateLimited,
    TinyUnavailable,
)
from asyncsync.options import Credentials, load_bootstrap_tokens
from asyncsync.runtime import open_runtime
from asyncsync.seams import ListQuery, TokenSet
from asyncsync.simulator import TinySimulator
from asyncsync.store import Database
from asyncsync.tasks import outlast_cancellation

from .helpers import common_for


@asynccontextmanager
async def client_for(
    sim: TinySimulator,
    *,
    store: Any = None,
    rate: int = 60_000,
    concurrency: int = 64,
    clock: Callable[[], dt.datetime] = utcnow,
    refresh_token: str | None = None,
    max_retries: int = 3,
    period_s: float = 60.0,
) -> AsyncIterator[TinyClient]:
    creds = Credentials(
        sim.config.client_id, sim.config.client_secret, refresh_token or sim.valid_refresh_token()
    )
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(
            session, sim.token_url, creds, store or MemoryTokenStore(), clock=clock
        )
        yield TinyClient(
            session,
            sim.base_url,
            tokens,
            AccountLimiter(rate, concurrency, period_s=period_s),
            max_retries=max_retries,
            max_backoff_s=0.2,
        )


async def test_fifty_concurrent_requests_cause_one_refresh(simulator) -> None:
    sim = await simulator(orders=100)
    ids = list(sim.orders)[:50]
    async with client_for(sim) as client:
        await asyncio.gather(*(client.get_order(i) for i in ids))
        assert sim.stats.requests_by_endpoint["token"] == 1
        # Tokens revoked server-side: fifty 401s, still one refresh, every request retried once.
        sim.expire_access_tokens()
        details = await asyncio.gather(*(client.get_order(i) for i in ids))
        assert sim.stats.requests_by_endpoint["token"] == 2
        assert [d.order_id for d in details] == ids


async def test_token_is_refreshed_five_minutes_before_expiry(simulator) -> None:
    sim = await simulator(orders=10)
    now = [utcnow()]
    async with client_for(sim, clock=lambda: now[0]) as client:
        await client.get_order(next(iter(sim.orders)))
        now[0] += dt.timedelta(hours=4) - dt.timedelta(minutes=4)  # inside the 5-minute margin
        await client.get_order(next(iter(sim.orders)))
    assert sim.stats.requests_by_endpoint["token"] == 2
    assert sim.stats.unauthorized == 0  # proactive: no request was sent with a dying token


async def test_newest_refresh_token_lives_in_postgres(simulator, database_url, db) -> None:
    sim = await simulator(orders=10)
    first = sim.valid_refresh_token()
    async with open_runtime(common_for(sim, database_url)) as rt:
        await rt.client.get_order(next(iter(sim.orders)))
    stored = await db.fetchrow("SELECT refresh_token, access_token FROM tiny_tokens")
    assert stored["refresh_token"] == sim.valid_refresh_token() != first  # rotated and kept
    # A later process started with the stale bootstrap token still works: the store wins.
    sim.expire_access_tokens()
    async with client_for(
        sim, store=Database(db).account("default").tokens, refresh_token=first
    ) as client:
        await client.get_order(next(iter(sim.orders)))
    assert sim.stats.token_refreshes == 2


class FlakyStore(MemoryTokenStore):
    """A token store whose database is away for its next ``away`` saves."""

    def __init__(self, tokens: TokenSet | None = None, *, away: int) -> None:
        super().__init__(tokens)
        self.away = away

    async def save(self, tokens: TokenSet) -> None:
        if self.away > 0:
            self.away -= 1
            raise DatabaseUnavailable("saving tokens: the database is unreachable")
        await super().save(tokens)


async def test_a_rotated_refresh_token_the_database_could_not_take_is_kept(
    simulator, tmp_path, monkeypatch
) -> None:
    # The database went away between Tiny's grant and its write: the spent refresh token
    # is worthless, the new one exists only in this process. It is not lost.
    sim = await simulator(orders=10)
    store = FlakyStore(away=1)
    creds = Credentials(sim.config.client_id, sim.config.client_secret, sim.valid_refresh_token())
    async with aiohttp.ClientSession() as session:
        manager = TokenManager(session, sim.token_url, creds, store, rescue_dir=tmp_path)
        assert await manager.access_token()  # the process goes on with the new tokens
        assert store.tokens is None
        (rescue,) = tmp_path.iterdir()
        assert orjson.loads(rescue.read_bytes()) == {"refresh_token": sim.valid_refresh_token()}
        assert rescue.stat().st_mode & 0o777 == 0o600
        monkeypatch.setattr(token_module, "UNSAVED_RETRY_S", 0.0)
        await manager.access_token()  # the database answers again: stored, rescue gone
        for _ in range(100):  # in the background: requests with a token never wait for it
            if store.tokens is not None:
                break
            await asyncio.sleep(0.01)
    assert store.tokens is not None and store.tokens.refresh_token == sim.valid_refresh_token()
    assert list(tmp_path.iterdir()) == []
    assert sim.stats.token_refreshes == 1


async def test_a_later_process_spends_the_rescued_refresh_token_first(simulator, tmp_path) -> None:
    # The process that could not store the new refresh token ended before the database
    # came back: the next one finds the rescue file, and never presents the spent token
    # the database still holds (that may revoke the whole session).
    sim = await simulator(orders=10)
    store = FlakyStore(TokenSet(sim.valid_refresh_token() or ""), away=1)
    creds = Credentials(sim.config.client_id, sim.config.client_secret)
    async with aiohttp.ClientSession() as session:
        first = TokenManager(session, sim.token_url, creds, store, rescue_dir=tmp_path)
        await first.access_token()
        later = TokenManager(session, sim.token_url, creds, store, rescue_dir=tmp_path)
        assert await later.access_token()
    assert sim.stats.token_refreshes == 2 and sim.stats.stale_refresh_uses == 0
    assert store.tokens is not None and store.tokens.refresh_token == sim.valid_refresh_token()
    assert list(tmp_path.iterdir()) == []


async def test_a_refresh_cancelled_midway_still_stores_and_adopts_the_rotated_token(
    simulator, database_url, db, monkeypatch
) -> None:
    # A request refreshing the token is cancelled (a sibling failed in its task group, a
    # second Ctrl-C) after Tiny rotated the refresh token, before its answer arrived. The
    # new token must still be stored, under the locks, before anyone reads the store.
    sim = await simulator(orders=10)
    oid = next(iter(sim.orders))
    post = TokenManager._post

    async def slow_post(self: TokenManager, refresh_token: str) -> TokenSet:
        granted = await post(self, refresh_token)  # Tiny has rotated the refresh token
        await asyncio.sleep(0.3)  # and its answer is still on the way
        return granted

    async with open_runtime(common_for(sim, database_url)) as rt:
        await rt.client.get_order(oid)  # the first grant, stored
        monkeypatch.setattr(TokenManager, "_post", slow_post)
        sim.expire_access_tokens()
        cancelled = asyncio.create_task(rt.client.get_order(oid))
        await asyncio.sleep(0.1)  # inside the grant, holding the locks
        waiting = asyncio.create_task(rt.client.get_order(oid))  # waits for the token
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert (await waiting).order_id == oid  # on the new token: the old one is spent
        stored = await db.fetchval("SELECT refresh_token FROM tiny_tokens")
        assert stored == sim.valid_refresh_token()
        monkeypatch.setattr(TokenManager, "_post", post)
        sim.expire_access_tokens()
        assert (await rt.client.get_order(oid)).order_id == oid
    assert sim.stats.stale_refresh_uses == 0 and sim.stats.token_refreshes == 3


async def test_a_cancellation_that_lands_as_the_work_ends_is_not_lost() -> None:
    # The token save's reply and a sibling's failure arrive in the same step: the caller
    # must still stop, not go on as if never cancelled.
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    saved = []

    async def work() -> str:
        saved.append(await answer)
        return saved[-1]

    caller = asyncio.create_task(outlast_cancellation(work()))
    await asyncio.sleep(0.01)
    answer.set_result("saved")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert saved == ["saved"]  # and the work itself was not cut


async def test_unsaved_tokens_never_overwrite_a_newer_grant(
    simulator, tmp_path, monkeypatch
) -> None:
    # Process A could not store its rotated token R1 (the database was away): R1 is in A
    # and in the rescue file. Process B on the same host spends R1 from the rescue file
    # and stores R2. A must then drop R1 (spent), not write it over R2.
    sim = await simulator(orders=10)
    store = FlakyStore(TokenSet(sim.valid_refresh_token() or ""), away=1)
    creds = Credentials(sim.config.client_id, sim.config.client_secret)
    monkeypatch.setattr(token_module, "UNSAVED_RETRY_S", 0.0)
    async with aiohttp.ClientSession() as session:
        a = TokenManager(session, sim.token_url, creds, store, rescue_dir=tmp_path)
        await a.access_token()  # R1, not stored
        b = TokenManager(session, sim.token_url, creds, store, rescue_dir=tmp_path)
        await b.access_token()  # R1 from the rescue file, R2 stored
        await a.access_token()  # A offers R1 to the store again, in the background
        for _ in range(100):
            if a._saving is None:
                break
            await asyncio.sleep(0.01)
        assert store.tokens is not None
        assert store.tokens.refresh_token == sim.valid_refresh_token()
        sim.expire_access_tokens()
        await a.rejected(await a.access_token())  # A's next refresh starts from R2
    assert store.tokens.refresh_token == sim.valid_refresh_token()
    assert sim.stats.stale_refresh_uses == 0 and sim.stats.token_refreshes == 3
    assert list(tmp_path.iterdir()) == []


async def test_revoked_refresh_token_says_a_person_must_authorize(simulator) -> None:
    sim = await simulator(orders=10)
    token = sim.valid_refresh_token()
    sim.revoke_refresh_tokens()
    async with client_for(sim, refresh_token=token) as client:
        with pytest.raises(ReauthorizationRequired, match="Run `asyncsync authorize`"):
            await client.get_order(next(iter(sim.orders)))


async def test_tokens_never_reach_the_logs(simulator, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    sim = await simulator(orders=10)
    async with client_for(sim) as client:
        await client.get_order(next(iter(sim.orders)))
        access = await client._tokens.access_token()
    text = caplog.text
    assert "access token granted" in text and access not in text
    assert (sim.valid_refresh_token() or "") not in text
    assert "refresh_token=" not in repr(TokenSet(refresh_token="secret-x"))


async def test_a_429_pauses_every_worker_until_the_reset(simulator) -> None:
    sim = await simulator(orders=200, rate_limit_per_minute=10, rate_window_s=2.0)
    ids = list(sim.orders)[:30]
    async with client_for(sim, concurrency=8, max_retries=10, period_s=2.0) as client:
        token = await client._tokens.access_token()
        # Another app of the same account spends the whole window's quota.
        async with aiohttp.ClientSession() as other:
            while True:
                async with other.get(
                    f"{sim.base_url}/ordem-servico/{ids[0]}",
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp:
                    if resp.status == 429:
                        break
        throttled_before = sim.stats.rate_limited
        started = time.monotonic()
        details = await asyncio.gather(*(client.get_order(i) for i in ids))
        elapsed = time.monotonic() - started
    assert [d.order_id for d in details] == ids
    ours = sim.stats.rate_limited - throttled_before
    # 30 requests at 10 per 2 s window need three windows; only requests already in flight
    # when the first 429 came back may see one: everyone else waited for the reset.
    assert 1 <= ours <= 8, ours
    assert client.limiter.stats.pauses >= 1 and elapsed >= 2.0


class _SentStream:
    output_size = 0


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 predates aiohttp 3.14's required ``stream_writer`` argument."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _SentStream())
        super().__init__(*args, **kwargs)


async def test_a_listing_page_of_itens_null_is_empty_when_its_total_says_so(monkeypatch) -> None:
    # An API written in PHP says an empty array as null: with a total of 0 that is an
    # empty page, not "no 'itens' array" failing the run for good (sweep L). With a total
    # that promises orders it is still a broken page, which names its status and offset.
    import re

    monkeypatch.setattr("aioresponses.core.ClientResponse", _CompatResponse)
    store = MemoryTokenStore(TokenSet("r", "tok", utcnow() + dt.timedelta(hours=1)))
    base = "http://tiny.test/api"
    listing = re.compile(re.escape(base) + r"/ordem-servico\?.*")
    with aioresponses() as mocked:
        mocked.get(listing, payload={"itens": None, "paginacao": {"total": 0}})
        mocked.get(listing, payload={"itens": None, "paginacao": {"total": 7}})
        async with aiohttp.ClientSession() as session:
            tokens = TokenManager(session, "http://tiny.test/token", Credentials("c", "s", "r"),
                                  store)  # fmt: skip
            client = TinyClient(session, base, tokens, AccountLimiter(6000, 4))
            empty = await client.list_orders(ListQuery(situacao=7, offset=100))
            assert empty.items == () and empty.total == 0
            with pytest.raises(TinyBadPayload, match=r"situacao 7, offset 100\): the list "
                               r"answer has no 'itens' array \(total 7\)"):  # fmt: skip
                await client.list_orders(ListQuery(situacao=7, offset=100))


async def test_server_errors_are_retried_then_typed(monkeypatch) -> None:
    monkeypatch.setattr("aioresponses.core.ClientResponse", _CompatResponse)
    store = MemoryTokenStore(TokenSet("r", "tok", utcnow() + dt.timedelta(hours=1)))
    base = "http://tiny.test/api"
    with aioresponses() as mocked:
        mocked.get(f"{base}/ordem-servico/1", status=503, repeat=2)
        mocked.get(f"{base}/ordem-servico/1", status=200, payload={"id": 1})
        mocked.get(f"{base}/ordem-servico/2", status=500, repeat=True)
        mocked.get(f"{base}/ordem-servico/3", status=404, payload={"mensagem": "x"})
        mocked.get(f"{base}/ordem-servico/4", status=200, body="{not json")
        mocked.get(f"{base}/ordem-servico/5", status=401, repeat=True)
        mocked.post("http://tiny.test/token", payload={"access_token": "t2", "expires_in": 3600})
        async with aiohttp.ClientSession() as session:
            tokens = TokenManager(
                session, "http://tiny.test/token", Credentials("c", "s", "r"), store
            )
            client = TinyClient(
                session, base, tokens, AccountLimiter(6000, 4), max_retries=3, max_backoff_s=0.05
            )
            assert (await client.get_order(1)).body == {"id": 1}
            assert client.api_stats().retries == 2
            with pytest.raises(TinyUnavailable, match="HTTP 500 after retries"):
                await client.get_order(2)
            with pytest.raises(TinyNotFound):
                await client.get_order(3)
            with pytest.raises(TinyBadPayload):
                await client.get_order(4)
            with pytest.raises(TinyOrderForbidden):  # 401 again after a fresh token
                await client.get_order(5)
            with pytest.raises(TinyBadPayload, match="itens"):
                mocked.get(f"{base}/ordem-servico?limit=100&offset=0&situacao=3", payload={})
                await client.list_orders(ListQuery(3))


async def test_a_retry_is_not_sent_once_the_run_is_told_to_stop(monkeypatch) -> None:
    # A 503, then the backoff before the retry: the run's stop comes meanwhile. The retry
    # waited out its backoff and went (the drain waited up to 30 s for it); now the wait
    # ends at once and nothing more is sent: RequestWithheld, not an outage or a failure.
    monkeypatch.setattr("aioresponses.core.ClientResponse", _CompatResponse)
    monkeypatch.setattr("backoff.full_jitter", lambda value: value)
    store = MemoryTokenStore(TokenSet("r", "tok", utcnow() + dt.timedelta(hours=1)))
    base = "http://tiny.test/api"
    with aioresponses() as mocked:
        mocked.get(f"{base}/ordem-servico/1", status=503, repeat=True)
        async with aiohttp.ClientSession() as session:
            tokens = TokenManager(
                session, "http://tiny.test/token", Credentials("c", "s", "r"), store
            )
            client = TinyClient(session, base, tokens, AccountLimiter(6000, 4), max_retries=5)
            stop = asyncio.Event()
            asked = asyncio.create_task(client.get_order(1, stop=stop))
            await asyncio.sleep(0.3)  # answered 503; the retry waits its second of backoff
            sent = sum(len(calls) for calls in mocked.requests.values())
            assert sent == 1
            stop.set()
            with pytest.raises(RequestWithheld):
                await asyncio.wait_for(asked, 0.2)
            with pytest.raises(RequestWithheld):  # nor does a new one go
                await client.get_order(1, stop=stop)
    assert sum(len(calls) for calls in mocked.requests.values()) == 1


def _mocked_client(session: aiohttp.ClientSession, store: MemoryTokenStore) -> TinyClient:
    """A client of ``http://tiny.test``, with quick retries and a breaker that opens only
    when a test lowers its threshold."""
    tokens = TokenManager(session, "http://tiny.test/token", Credentials("c", "s", "r"), store)
    return TinyClient(
        session, "http://tiny.test/api", tokens, AccountLimiter(6000, 4), max_retries=3,
        max_backoff_s=0.01, breaker=CircuitBreaker(threshold=100, account="default"),
    )  # fmt: skip


async def test_a_proxys_page_answered_200_is_an_outage_not_a_bad_payload(monkeypatch) -> None:
    # A load balancer's maintenance page (200, text/html, text/plain or no Content-Type)
    # is no order's answer: asked again like a 5xx and counted by the breaker, for a
    # detail as for a page (it was a TinyBadPayload of the order, an import failure, and
    # a success to the breaker). A body announced as JSON and cut short stays the order's;
    # JSON not announced as such is read.
    monkeypatch.setattr("aioresponses.core.ClientResponse", _CompatResponse)
    store = MemoryTokenStore(TokenSet("r", "tok", utcnow() + dt.timedelta(hours=1)))
    base = "http://tiny.test/api"
    page = "<html><body>Em manutenção</body></html>"
    with aioresponses() as mocked:
        for order_id, kind in ((1, "text/html"), (2, "text/plain; charset=utf-8"), (3, "")):
            mocked.get(f"{base}/ordem-servico/{order_id}", body=page, content_type=kind,
                       repeat=True)  # fmt: skip
        mocked.get(f"{base}/ordem-servico/4", body="<html>", content_type="text/html")
        mocked.get(f"{base}/ordem-servico/4", payload={"id": 4})
        mocked.get(f"{base}/ordem-servico/5", body='{"id": 5, "da', repeat=True)
        mocked.get(f"{base}/ordem-servico/6", body='{"id": 6}', content_type="text/plain")
        async with aiohttp.ClientSession() as session:
            client = _mocked_client(session, store)
            breaker = client.breaker

            def counted(status: str) -> float:
                labels = {"account": "default", "endpoint": "detail", "status": status}
                return metrics.value("asyncsync_tiny_requests_total", labels)

            pages, oks = counted("page"), counted("200")
            for order_id in (1, 2, 3):
                with pytest.raises(TinyUnavailable, match="HTTP 200 with a page that is not JSON"):
                    await client.get_order(order_id)
            assert client.api_stats().retries == 3 * 2
            # Counted as pages, not as 200s: a maintenance page is no success on the panel.
            assert (counted("page") - pages, counted("200") - oks) == (9, 0)
            assert (await client.get_order(4)).body == {"id": 4}  # a page once, then Tiny
            with pytest.raises(TinyBadPayload, match="not JSON"):
                await client.get_order(5)  # the order's, at once
            assert (await client.get_order(6)).body == {"id": 6}
            breaker.threshold = 2  # Tiny's answers reset the ten pages' count: two open it
            for _ in range(2):
                with pytest.raises(TinyUnavailable) as caught:
                    await client.get_order(1, retry=False)
                assert not isinstance(caught.value, TinyOutage)
            with pytest.raises(TinyOutage):
                await client.get_order(1, retry=False)
            assert breaker.opened == 1 and breaker.reason == "2 failures in a row: 2 × not_json"


async def test_a_block_page_answered_401_or_403_is_an_outage_not_a_refusal(monkeypatch) -> None:
    # A firewall or proxy answering every request 403 (or 401) with an HTML page for a
    # while is not Tiny refusing the token or the order (Tiny's errors are JSON): asked
    # again like a 5xx, counted by the breaker (not_json), no token replaced. Before, a
    # listing spent four refreshes and failed the run with TinyAuthError, and each detail
    # was an import failure (403: "HTTP 403"; 401: TinyOrderForbidden, a refresh each).
    # A 401 with nothing in it, or with a Bearer challenge, is still the token's.
    monkeypatch.setattr("aioresponses.core.ClientResponse", _CompatResponse)
    store = MemoryTokenStore(TokenSet("r", "tok", utcnow() + dt.timedelta(hours=1)))
    base = "http://tiny.test/api"
    page = "<html><body><h1>403 Forbidden</h1>Request blocked.</body></html>"
    bearer = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    listing = f"{base}/ordem-servico?limit=100&offset=0&situacao=3"
    with aioresponses() as mocked:
        for order_id, status in ((1, 403), (2, 401)):
            mocked.get(f"{base}/ordem-servico/{order_id}", status=status, body=page,
                       content_type="text/html", repeat=True)  # fmt: skip
        mocked.get(listing, status=403, body=page, content_type="text/plain", repeat=True)
        mocked.get(f"{base}/ordem-servico/3", status=403, body=page, content_type="text/html")
        mocked.get(f"{base}/ordem-servico/3", payload={"id": 3})  # the block lifted
        mocked.get(f"{base}/ordem-servico/4", status=401, body="", content_type="", repeat=True)
        mocked.get(f"{base}/ordem-servico/5", status=401, body=page, content_type="text/html",
                   headers=bearer, repeat=True)  # fmt: skip
        mocked.post("http://tiny.test/token", payload={"access_token": "t2", "expires_in": 3600},
                    repeat=True)  # fmt: skip
        async with aiohttp.ClientSession() as session:
            client = _mocked_client(session, store)
            breaker = client.breaker
            for order_id, status in ((1, 403), (2, 401)):
                with pytest.raises(TinyUnavailable, match=f"HTTP {status} with a page that is "
                                   r"not JSON \(text/html\)"):  # fmt: skip
                    await client.get_order(order_id)
            with pytest.raises(TinyUnavailable, match="HTTP 403 with a page"):
                await client.list_orders(ListQuery(3))
            assert client.api_stats().token_refreshes == 0  # no token replaced
            assert client.api_stats().retries == 3 * 2
            assert (await client.get_order(3)).body == {"id": 3}
            breaker.threshold = 2  # Tiny's answer reset the count: two pages open it
            for _ in range(2):
                with pytest.raises(TinyUnavailable):
                    await client.get_order(1, retry=False)
            assert breaker.reason == "2 failures in a row: 2 × not_json"
            breaker.success()
            for order_id in (4, 5):  # the token's: replaced, then the order's
                with pytest.raises(TinyOrderForbidden):
                    await client.get_order(order_id)
            assert client.api_stats().token_refreshes == 2  # one each: the API's word on a token


async def test_a_404_page_is_an_outage_not_an_order_deleted(monkeypatch) -> None:
    # A web server's or proxy's own "404: Not Found" (text/plain, text/html: a wrong base
    # URL, a route lost during a deploy) is not Tiny's word that the order is gone (Tiny's
    # 404 is JSON): asked again like a 5xx, counted by the breaker (not_json) with what to
    # check. Before: TinyNotFound, and a retry resolved the failure as deleted in Tiny. A
    # 404 with nothing in it, or JSON under another type, is still the order gone.
    monkeypatch.setattr("aioresponses.core.ClientResponse", _CompatResponse)
    store = MemoryTokenStore(TokenSet("r", "tok", utcnow() + dt.timedelta(hours=1)))
    base = "http://tiny.test/api"
    with aioresponses() as mocked:
        mocked.get(f"{base}/ordem-servico/1", status=404, body="404: Not Found",
                   content_type="text/plain", repeat=True)  # fmt: skip
        mocked.get(f"{base}/ordem-servico/2", status=404, body="<h1>Not Found</h1>",
                   content_type="text/html", repeat=True)  # fmt: skip
        mocked.get(f"{base}/ordem-servico/3", status=404, body="", content_type="")
        mocked.get(f"{base}/ordem-servico/4", status=404, body='{"mensagem": "x"}',
                   content_type="text/plain")  # fmt: skip
        async with aiohttp.ClientSession() as session:
            client = _mocked_client(session, store)
            for order_id, kind in ((1, "text/plain"), (2, "text/html")):
                with pytest.raises(TinyUnavailable, match=f"HTTP 404 with a page that is not "
                                   rf"JSON \({kind}.*check TINY_API_BASE_URL"):  # fmt: skip
                    await client.get_order(order_id)
            assert client.api_stats().retries == 2 * 2  # three tries each
            client.breaker.threshold = 2
            with pytest.raises(TinyUnavailable):
                await client.get_order(1, retry=False)
            assert client.breaker.reason == (
                "7 failures in a row: 7 × not_json; if it persists, check TINY_API_BASE_URL "
                "(--api-base-url), or the account's api_base_url in the accounts table"
            )
            client.breaker.success()
            for order_id in (3, 4):
                with pytest.raises(TinyNotFound):
                    await client.get_order(order_id)


async def test_rate_headers_are_read_whatever_the_case_of_their_names(monkeypatch) -> None:
    # Header names are case-insensitive (RFC 9110): a gateway sending them in lower case
    # (as HTTP/2 and many proxies do) says the same. Read from a plain dict, they were
    # unseen: the pace stayed at the assumed 120/min and a 429 waited 10 s, not its reset.
    monkeypatch.setattr("aioresponses.core.ClientResponse", _CompatResponse)
    store = MemoryTokenStore(TokenSet("r", "tok", utcnow() + dt.timedelta(hours=1)))
    base = "http://tiny.test/api"
    rate = {"x-ratelimit-limit": "600", "x-ratelimit-remaining": "599", "x-ratelimit-reset": "7"}
    spent = {**rate, "x-ratelimit-remaining": "0"}
    with aioresponses() as mocked:
        mocked.get(f"{base}/ordem-servico/1", status=200, payload={"id": 1}, headers=rate)
        mocked.get(f"{base}/ordem-servico/2", status=429, body="Too Many Requests", headers=spent)
        async with aiohttp.ClientSession() as session:
            tokens = TokenManager(
                session, "http://tiny.test/token", Credentials("c", "s", "r"), store
            )
            limiter = AccountLimiter(None, 4)
            client = TinyClient(session, base, tokens, limiter, max_retries=1)
            await client.get_order(1)
            assert limiter.rate_per_minute == 600
            with pytest.raises(TinyRateLimited):
                await client.get_order(2)
    assert 6 <= limiter.stats.paused_s <= 7.5, limiter.stats.paused_s  # the reset, not 10 s


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'{"nome": "Jo\xe3o \x93ok\x94"}', {"nome": "João “ok”"}),  # Windows-1252 bytes
        (b'{"\\udc00k": "\\ud83c\\udf89 \\ud83c"}', {"\ufffdk": "🎉 \ufffd"}),  # a pair kept
        (b'\xef\xbb\xbf{"id": 1}', {"id": 1}),  # a byte-order mark
        (b'{"obs": "a\tb\nc"}', {"obs": "a\tb\nc"}),  # control characters left unescaped
        (b'\xef\xbb\xbf{"n": 1%s}' % (b"0" * 25), {"n": 1e25}),  # as orjson reads it
    ],
)
def test_an_answer_not_in_utf8_is_read_mended(body: bytes, value: object) -> None:
    assert answers.loads(body) == (value, True)
    assert answers.loads(b'{"nome": "Jo\xc3\xa3o"}') == ({"nome": "João"}, False)


@pytest.mark.parametrize("body", [b'{"valor": NaN}', b'{"id": 1', b"<html>", b"\xff"])
def test_what_is_not_json_even_mended_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        answers.loads(body)


def test_a_number_past_a_doubles_range_is_kept_as_its_text() -> None:
    # Read as infinity, 1e400 was stored as null: in a failure's raw answer, in a detail.
    assert answers.loads(b'{"valor": 1e400, "n": -1E+999, "ok": 1.5}') == (
        {"valor": "1e400", "n": "-1E+999", "ok": 1.5},
        True,
    )


def test_an_answer_nested_past_what_readers_read_is_read_cut() -> None:
    value, mended = answers.loads(b"[" * 5000 + b"]" * 5000)
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
    assert mended and depth == answers.CUT_DEPTH and value == "(cut: nested too deeply)"


async def test_bootstrap_from_the_users_tiny_token_json(simulator, tmp_path) -> None:
    sim = await simulator(orders=5)
    path = tmp_path / "tiny_token.json"
    path.write_text(
        '{"client_id": "sim-client", "client_secret": "sim-secret", '
        f'"refresh_token": "{sim.valid_refresh_token()}", "access_token": "stale", '
        '"expires_at": 1700000000}'
    )
    creds = load_bootstrap_tokens(path, None, None)
    assert creds.client_id == "sim-client" and "sim-secret" not in repr(creds)
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(session, sim.token_url, creds, MemoryTokenStore())
        client = TinyClient(session, sim.base_url, tokens, AccountLimiter(6000, 4))
        detail = await client.get_order(next(iter(sim.orders)))
    assert detail.order_id in sim.orders
    assert sim.stats.unauthorized == 0  # the expired access token was refreshed, not sent


async def test_timeouts_and_refused_connections_are_retried_then_typed(simulator) -> None:
    sim = await simulator(orders=5, latency_s=0.5)
    order_id = next(iter(sim.orders))
    creds = Credentials(sim.config.client_id, sim.config.client_secret, sim.valid_refresh_token())
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(session, sim.token_url, creds, MemoryTokenStore())
        slow = TinyClient(session, sim.base_url, tokens, AccountLimiter(6000, 4),
                          timeout_s=0.1, max_retries=3, max_backoff_s=0.05)  # fmt: skip
        with pytest.raises(TinyUnavailable, match="TimeoutError after retries"):
            await slow.get_order(order_id)
        assert slow.api_stats().retries == 2 and sim.stats.requests_by_endpoint["detail"] == 3
        # The sentence ended in nothing (a timeout's text is empty); a listing's names its
        # page (sweep L).
        listing = TinyClient(session, sim.base_url, tokens, AccountLimiter(6000, 4),
                             timeout_s=0.1, max_retries=2, max_backoff_s=0.05)  # fmt: skip
        with pytest.raises(TinyUnavailable) as cut:
            await listing.list_orders(ListQuery(situacao=3, offset=40, limit=20))
        assert str(cut.value) == (
            "/ordem-servico (situacao 3, offset 40): TimeoutError after retries: no whole "
            "answer within 0.1 s (--timeout, TINY_REQUEST_TIMEOUT_S)"
        )
        dead = TinyClient(session, "http://127.0.0.1:1/api", tokens, AccountLimiter(6000, 4),
                          max_retries=2, max_backoff_s=0.05)  # fmt: skip
        with pytest.raises(TinyUnavailable, match="ClientConnectorError after retries"):
            await dead.get_order(order_id)
        assert dead.api_stats().retries == 1


async def test_a_token_endpoint_that_does_not_answer_counts_as_a_failed_refresh(
    simulator,
) -> None:
    # Refused connections and timeouts failed the refresh as a 503 does, but only the 503
    # was counted: AsyncsyncTokenRefreshFailing never fired for an unreachable endpoint.
    sim = await simulator(orders=5)
    creds = Credentials(sim.config.client_id, sim.config.client_secret, sim.valid_refresh_token())
    labels = {"account": "token-unreachable", "reason": "unavailable"}
    before = metrics.value("asyncsync_token_refresh_failures_total", labels)
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(session, "http://127.0.0.1:1/token", creds, MemoryTokenStore(),
                              account="token-unreachable")  # fmt: skip
        with pytest.raises(TinyUnavailable, match="token endpoint unreachable") as caught:
            await tokens.access_token()
    assert metrics.value("asyncsync_token_refresh_failures_total", labels) > before
    # One sentence for health and status, not the error's repr (ConnectionKey(host=...)).
    said = str(caught.value)
    assert said.startswith("token endpoint unreachable: ClientConnectorError: Cannot connect")
    assert "ConnectionKey" not in said, said


async def test_a_token_endpoint_that_answers_too_late_is_asked_once_per_refresh(
    simulator,
) -> None:
    # Each refresh tried a hung endpoint three times, each to the timeout, and the breaker
    # counted one failure for the three: a one-shot run took 16 minutes to exit 5, three
    # times the API's own hang (sweep K). One try per refresh: the request that needed the
    # token goes again after its backoff, and the breaker counts every try.
    sim = await simulator(orders=5, token_latency_s=2.0)
    creds = Credentials(sim.config.client_id, sim.config.client_secret, sim.valid_refresh_token())
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(session, sim.token_url, creds, MemoryTokenStore(),
                              account="token-hung", timeout_s=0.3)  # fmt: skip
        started = time.monotonic()
        with pytest.raises(TinyUnavailable, match="token endpoint unreachable"):
            await tokens.access_token()
        took = time.monotonic() - started
    assert sim.stats.requests_by_endpoint["token"] == 1 and took < 1.5, took
    # One that answers 503 at once is still tried three times: a blip, not a hang.
    other = await simulator(orders=5)
    other.fail_token_requests = 2
    creds = dataclasses.replace(creds, refresh_token=other.valid_refresh_token())
    async with aiohttp.ClientSession() as session:
        blip = TokenManager(session, other.token_url, creds, MemoryTokenStore(),
                            account="token-blip", timeout_s=0.3)  # fmt: skip
        assert await blip.access_token()
    assert other.stats.requests_by_endpoint["token"] == 3


async def test_a_token_endpoint_answer_past_a_megabyte_is_refused_unread() -> None:
    # Read whole, a gzip answer of 2 MB that inflates to 2 GB took the run to 21.8 GB and
    # the OOM killer (sweep L); an OAuth answer is a few kB.
    import gzip

    from aiohttp import web

    inflated = 64 << 20
    bomb = gzip.compress(b" " * inflated, compresslevel=9)
    asked: list[int] = []

    async def token(request: web.Request) -> web.Response:
        asked.append(1)
        return web.Response(status=503, body=bomb, headers={"Content-Encoding": "gzip"},
                            content_type="application/json")  # fmt: skip

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        creds = Credentials("id", "secret", "refresh")
        async with aiohttp.ClientSession() as session:
            tokens = TokenManager(session, f"http://127.0.0.1:{port}/token", creds,
                                  MemoryTokenStore(), account="token-bomb")  # fmt: skip
            with pytest.raises(TinyUnavailable, match="more than 1,048,576 bytes") as caught:
                await tokens.access_token()
    finally:
        await runner.cleanup()
    assert len(bomb) < inflated // 100 and asked  # a small answer on the wire
    assert caught.value.status == 503  # counted as a page: the endpoint speaks no OAuth


async def test_a_page_at_a_token_endpoint_known_to_work_is_an_outage(simulator) -> None:
    # The token host behind a proxy answers its maintenance page (200, text/html) while
    # down. Before, any such answer was TinyAuthMisconfigured ("check TINY_TOKEN_URL",
    # exit 2, which the service units do not restart on). It still is while the endpoint
    # never answered in OAuth JSON (a login page pasted for the token URL); once it has
    # (to this manager, or the stored tokens were granted by it), it is an outage: tried
    # three times, counted by the breaker as its own kind, naming TINY_TOKEN_URL.
    sim = await simulator(orders=5)
    creds = Credentials(sim.config.client_id, sim.config.client_secret, sim.valid_refresh_token())
    labels = {"account": "token-page", "reason": "unavailable"}
    before = metrics.value("asyncsync_token_refresh_failures_total", labels)
    async with aiohttp.ClientSession() as session:

        def manager(store: MemoryTokenStore) -> TokenManager:
            return TokenManager(session, sim.token_url, creds, store, account="token-page")

        sim.token_page = True
        with pytest.raises(TinyAuthMisconfigured, match=r"no OAuth JSON .*check TINY_TOKEN_URL"):
            await manager(MemoryTokenStore()).access_token()  # never worked: the address's
        # The environment's access token is no grant of this endpoint: no evidence either.
        given = TokenSet(creds.refresh_token or "", "env-token", utcnow() + dt.timedelta(hours=1))
        with pytest.raises(TinyAuthMisconfigured):
            await manager(MemoryTokenStore(given)).rejected("env-token")
        sim.token_page = False
        store = MemoryTokenStore()
        tokens = manager(store)
        token = await tokens.access_token()  # granted: this endpoint works
        sim.token_page = True
        asked = sim.stats.requests_by_endpoint["token"]
        page = r"answered 200 with a page, not OAuth JSON .*if it persists, check TINY_TOKEN_URL"
        with pytest.raises(TinyUnavailable, match=page) as caught:
            await tokens.rejected(token)
        assert caught.value.status == 200 and "<html>" in caught.value.body
        assert sim.stats.requests_by_endpoint["token"] == asked + 3  # tried like a 5xx
        # A later process: the stored tokens were granted by the endpoint.
        with pytest.raises(TinyUnavailable, match=page):
            await manager(store).rejected(token)
        # Through the client: the breaker counts it, and its reason says what to check.
        assert store.tokens is not None
        store.tokens = dataclasses.replace(store.tokens, access_expires_at=utcnow())  # due
        breaker = CircuitBreaker(threshold=2, account="token-page")
        client = TinyClient(session, sim.base_url, manager(store), AccountLimiter(6000, 4),
                            max_retries=1, breaker=breaker)  # fmt: skip
        for _ in range(2):
            with pytest.raises(TinyUnavailable, match="check TINY_TOKEN_URL"):
                await client.list_orders(ListQuery(3))
        assert breaker.reason == (
            "2 failures in a row: 2 × token_endpoint_not_json; if it persists, check "
            "TINY_TOKEN_URL (--token-url), or the account's token_url in the accounts table"
        )
        with pytest.raises(TinyOutage, match="check TINY_TOKEN_URL"):
            await client.list_orders(ListQuery(3))
        sim.token_page = False  # the maintenance is over
        assert await tokens.rejected(token) is None and tokens.current() != token
    assert metrics.value("asyncsync_token_refresh_failures_total", labels) >= before + 2


async def test_a_page_at_the_token_endpoint_is_no_word_on_the_apps_credentials(
    monkeypatch,
) -> None:
    # A 401 or 403 page at the token endpoint (a firewall's block page, a proxy's login)
    # said "token endpoint answered 403 (no error code): check TINY_CLIENT_ID and
    # TINY_CLIENT_SECRET", exit 1, even from an endpoint that granted the stored tokens
    # (the page answered 200 was already an outage there), and so did the authorization
    # code's exchange; a 429 there blamed the credentials too. Tiny's OAuth errors are
    # JSON: a page follows the 200 page's rule, whatever its status; JSON is read as ever.
    monkeypatch.setattr("aioresponses.core.ClientResponse", _CompatResponse)
    url = "http://tiny.test/token"
    page = "<html><body><h1>403 Forbidden</h1>Request blocked.</body></html>"
    issued = utcnow() - dt.timedelta(hours=4)  # granted by this endpoint: it works
    granted = TokenSet("r", "tok", utcnow(), access_issued_at=issued)
    with aioresponses() as mocked:
        async with aiohttp.ClientSession() as session:

            def manager(store: MemoryTokenStore) -> TokenManager:
                return TokenManager(session, url, Credentials("c", "s", "r"), store)

            for status in (401, 403, 400):  # never known to work: the address's
                mocked.post(url, status=status, body=page, content_type="text/html")
                said = rf"answered {status} with no OAuth JSON \('<html>.*check TINY_TOKEN_URL"
                with pytest.raises(TinyAuthMisconfigured, match=said) as caught:
                    await manager(MemoryTokenStore()).access_token()
                assert "TINY_CLIENT_ID" not in str(caught.value)
            for status in (200, 403):  # `authorize`'s exchange of the code
                mocked.post(url, status=status, body=page, content_type="text/html")
                with pytest.raises(TinyAuthMisconfigured, match=f"answered {status} with no OAuth"):
                    await manager(MemoryTokenStore()).exchange_code(
                        "code", "http://127.0.0.1:8765/callback"
                    )
            for status, kind in ((403, "text/html"), (401, "text/plain"), (429, "text/html")):
                mocked.post(url, status=status, body=page, content_type=kind, repeat=3)
                with pytest.raises(TinyUnavailable, match=f"answered {status}") as caught:
                    await manager(MemoryTokenStore(granted)).access_token()  # known to work
                assert "TINY_CLIENT_ID" not in str(caught.value)
                assert (status == 429) is (token_module.PAGE_HINT not in str(caught.value))
            assert len(mocked.requests[("POST", URL(url))]) == 5 + 3 * 3
            # Through the client: the breaker's kind, with what to check.
            mocked.post(url, status=403, body=page, content_type="text/html", repeat=3)
            client = _mocked_client(session, MemoryTokenStore(granted))
            client.breaker.threshold = 1
            with pytest.raises(TinyUnavailable, match="check TINY_TOKEN_URL"):
                await client.get_order(1, retry=False)
            assert client.breaker.reason == (
                "1 failures in a row: 1 × token_endpoint_not_json; if it persists, check "
                "TINY_TOKEN_URL (--token-url), or the account's token_url in the accounts table"
            )
            # Tiny's OAuth errors, JSON, are its word as before, known endpoint or not.
            for status, error, raised, said in (
                (401, "invalid_client", TinyAuthMisconfigured, "check TINY_CLIENT_ID"),
                (400, "invalid_grant", ReauthorizationRequired, "authorize"),
                (400, "unsupported_grant_type", TinyAuthError, "check TINY_CLIENT_ID"),
            ):
                for store in (MemoryTokenStore(), MemoryTokenStore(granted)):
                    mocked.post(url, status=status, payload={"error": error})
                    with pytest.raises(raised, match=said):
                        await manager(store).access_token()


@pytest.mark.parametrize("lifetime", [1e12, "1e12", "inf", -5, "0"])
async def test_an_odd_expires_in_never_loses_the_rotated_refresh_token(
    monkeypatch, lifetime: object
) -> None:
    # An expires_in past the calendar (a number or a string) raised OverflowError after
    # Tiny had rotated the refresh token: the new one was never stored, the spent one
    # kept. One that is no lifetime (past ten years, not positive) is taken as unsaid.
    monkeypatch.setattr("aioresponses.core.ClientResponse", _CompatResponse)
    url = "http://tiny.test/token"
    answer = {"access_token": "t2", "refresh_token": "r2", "expires_in": lifetime,
              "refresh_expires_in": lifetime}  # fmt: skip
    with aioresponses() as mocked:
        mocked.post(url, payload=answer)
        async with aiohttp.ClientSession() as session:
            store = MemoryTokenStore()
            tokens = TokenManager(session, url, Credentials("c", "s", "r"), store)
            assert await tokens.access_token() == "t2"
    assert store.tokens is not None and store.tokens.refresh_token == "r2"
    # Issued at the answer's arrival, expiring 4 h after the request's sending.
    granted = store.tokens.access_expires_at - store.tokens.access_issued_at  # type: ignore[operator]
    assert dt.timedelta(hours=4, seconds=-1) < granted <= dt.timedelta(hours=4)
    assert store.tokens.refresh_expires_at is None


async def test_a_401_that_sends_the_client_to_renew_its_token_is_no_sign_tiny_is_up(
    simulator,
) -> None:
    # Tokens the API drops early while the token endpoint answers its proxy's page: every
    # try met a 401, then a refresh that failed. The 401 counted as a success of Tiny's
    # and reset the count the failed refresh had raised: the circuit never opened, and
    # each request went on asking. Now such a 401 leaves the count as it is; a 401 that
    # is an order's (a fresh token refused too) still counts as Tiny's answer.
    sim = await simulator(orders=5)
    order_id, refused = sorted(sim.orders)[:2]
    creds = Credentials(sim.config.client_id, sim.config.client_secret, sim.valid_refresh_token())
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(session, sim.token_url, creds, MemoryTokenStore())
        breaker = CircuitBreaker(threshold=2, account="dropped-401")
        client = TinyClient(session, sim.base_url, tokens, AccountLimiter(6000, 4),
                            max_retries=4, max_backoff_s=0.05, breaker=breaker)  # fmt: skip
        await client.get_order(order_id)  # a token is granted and used
        sim.expire_access_tokens()  # ... and dropped long before its announced expiry
        sim.token_page = True
        with pytest.raises(TinyOutage, match="2 × token_endpoint_not_json"):
            await client.get_order(order_id)
        assert sim.stats.unauthorized == 2 and breaker.opened == 1
        sim.token_page = False
        breaker.success()  # the cool-down over, the probe answered
        sim.fail_detail[refused] = "401"
        breaker.failure("http_503")
        with pytest.raises(TinyOrderForbidden):  # the order's 401: Tiny served it
            await client.get_order(refused)
        breaker.failure("http_503")
        assert breaker.state == "closed"  # the count started again at the order's 401


async def test_a_revoked_token_of_an_account_of_the_table_names_the_account_to_authorize(
    simulator,
) -> None:
    """`asyncsync authorize` alone authorizes the default account: an account of the table
    needs `--account KEY` (health and the error said the bare command)."""
    sim = await simulator(orders=10)
    token = sim.valid_refresh_token()
    sim.revoke_refresh_tokens()
    creds = Credentials(sim.config.client_id, sim.config.client_secret, token)
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(session, sim.token_url, creds, MemoryTokenStore(), account="acme")
        with pytest.raises(ReauthorizationRequired, match="`asyncsync authorize --account acme`"):
            await tokens.access_token()
        # Never authorized at all: the same command, not TINY_REFRESH_TOKEN (which an
        # account of the table does not read: its row names its bootstrap token).
        none = Credentials(sim.config.client_id, sim.config.client_secret, None)
        tokens = TokenManager(session, sim.token_url, none, MemoryTokenStore(), account="acme")
        with pytest.raises(ReauthorizationRequired) as refused:
            await tokens.access_token()
        said = str(refused.value)
        assert "`asyncsync authorize --account acme` once" in said, said
        assert "TINY_REFRESH_TOKEN" not in said and "--refresh-token-env" in said, said
    bare = Credentials(sim.config.client_id, sim.config.client_secret, None)
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(session, sim.token_url, bare, MemoryTokenStore())
        with pytest.raises(
            ReauthorizationRequired,
            match=r"`asyncsync authorize` once \(or set TINY_REFRESH_TOKEN\)",
        ):
            await tokens.access_token()


async def test_a_refused_refresh_token_is_not_presented_again_until_a_person_authorizes(
    simulator,
) -> None:
    # Every unit of an account whose refresh token Tiny had refused sent the order request
    # with its dead access token (a 401) and the refused refresh token again (invalid_grant):
    # a backfill of 156 months spent ~470 requests each interval, waiting for a person.
    sim = await simulator(orders=10)
    order_id = next(iter(sim.orders))
    store = MemoryTokenStore()
    async with client_for(sim, store=store) as client:
        await client.get_order(order_id)
        sim.revoke_refresh_tokens()
        sim.expire_access_tokens()
        before = dict(sim.stats.requests_by_endpoint)
        with pytest.raises(ReauthorizationRequired, match="invalid_grant") as first:
            await client.get_order(order_id)
        sent = sum(sim.stats.requests_by_endpoint.values()) - sum(before.values())
        assert sent == 3  # the order's 401, then each refresh token it knows refused
        for _ in range(5):  # each unit after it: Tiny's word again, without asking Tiny
            with pytest.raises(ReauthorizationRequired) as again:
                await client.get_order(order_id)
            assert str(again.value) == str(first.value)
        assert sum(sim.stats.requests_by_endpoint.values()) - sum(before.values()) == 3
        # A person authorizes again (`asyncsync authorize` stores the new tokens): the next
        # request uses them at once.
        callback = "http://127.0.0.1:8765/callback"
        query = {"client_id": sim.config.client_id, "redirect_uri": callback, "scope": "openid",
                 "response_type": "code"}  # fmt: skip
        async with aiohttp.ClientSession() as http:
            async with http.get(sim.auth_url, params=query, allow_redirects=False) as resp:
                code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
            creds = Credentials(sim.config.client_id, sim.config.client_secret, None)
            await TokenManager(http, sim.token_url, creds, store).exchange_code(code, callback)
        detail = await client.get_order(order_id)
        assert detail.order_id == order_id


@pytest.mark.parametrize("failed_tries", [2, 3])
async def test_a_refresh_counts_as_failed_once_when_its_tries_give_up(
    simulator, failed_tries: int
) -> None:
    """``asyncsync_token_refresh_failures_total{reason="unavailable"}`` counted every try:
    a refresh whose third try worked left 2 behind, and AsyncsyncTokenRefreshFailing
    (any increase in an hour) paged for a run that ended ok, nothing in its log (sweep H).
    A refresh counts once, when its three tries gave up."""
    sim = await simulator(orders=5)
    account = f"blip-{failed_tries}"
    labels = {"account": account, "reason": "unavailable"}
    before = metrics.value("asyncsync_token_refresh_failures_total", labels)
    creds = Credentials(sim.config.client_id, sim.config.client_secret, sim.valid_refresh_token())
    sim.fail_token_requests = failed_tries
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(session, sim.token_url, creds, MemoryTokenStore(), account=account)
        if failed_tries == 3:
            with pytest.raises(TinyUnavailable):
                await tokens.access_token()
        else:
            assert await tokens.access_token()
    counted = metrics.value("asyncsync_token_refresh_failures_total", labels) - before
    assert counted == (1 if failed_tries == 3 else 0)
