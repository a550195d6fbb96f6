"""The Tiny API v3 client for service orders: one aiohttp session, paced and retried.

Every request goes through the account's :class:`~.ratelimit.AccountLimiter`, carries a
token from the :class:`~.tokens.TokenManager`, is retried with jittered exponential
backoff on 5xx, timeouts, connection errors, 429 (after the account-wide pause) and a
page neither announced as JSON nor JSON answered 200, 401, 403 or 404 (a proxy's
maintenance page, a firewall's block page, a web server's ``404: Not Found`` at a wrong
base URL: something in front of Tiny answered, not Tiny about the record or the token),
and is mapped to the :mod:`asyncsync.errors` tree at this boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import backoff

from .. import metrics
from ..clock import Clock, utcnow
from ..errors import (
    TinyAnswerTooLarge,
    TinyAuthError,
    TinyBadPayload,
    TinyHTTPError,
    TinyNotFound,
    TinyOrderForbidden,
    TinyRateLimited,
    TinyUnavailable,
)
from ..seams import LATENCY_EDGES_MS, ApiStats, Detail, ListQuery, Page, latency_bucket
from ..status import Situacao
from . import answers, window
from .breaker import CircuitBreaker
from .ratelimit import AccountLimiter
from .tokens import PAGE_HINT, TokenManager
from .window import WindowEnds
from .withhold import waiting

log = logging.getLogger(__name__)

#: Tokens a request may go through before a run of 401s is an authentication failure.
_AUTH_ROUNDS = 4
#: Tiny documents 401 and 403 without saying which a token it dropped early gets. A 403
#: to a detail replaces the token in use at most once in this many seconds; meanwhile a
#: detail's 403 to a token no 403 replaced is the API's word (an order this app may not
#: read). A listing's 403 always replaces the token: a listing is no one order's.
FORBIDDEN_RECHECK_S = 60.0
#: How long a 401 to a token valid when sent waits for the answers of requests sent after
#: it with the same token, before the token is renewed to find out (see _order_refused).
ORDER_401_WAIT_S = 2.0
#: What a 404 page (not Tiny's JSON 404) says to check, with the breaker's reason: a
#: wrong base URL answers every request so; a proxy misrouting during a deploy, a while.
BASE_URL_HINT = (
    "if it persists, check TINY_API_BASE_URL (--api-base-url), or the account's api_base_url "
    "in the accounts table"
)


class _Retry(Exception):
    """Internal: this attempt failed in a way worth another try."""

    def __init__(self, final: Exception) -> None:
        super().__init__(str(final))
        self.final = final


@dataclass
class _Counters:
    """The client's running totals; :meth:`TinyClient.api_stats` snapshots them."""

    requests: dict[str, int] = field(default_factory=dict)  # by endpoint
    retries: int = 0
    mended: int = 0  # answers whose text was not UTF-8 (see answers.py)
    latency_sum_s: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_EDGES_MS))

    def record(self, endpoint: str, seconds: float) -> None:
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
        self.latency_sum_s += seconds
        self.latency_buckets[latency_bucket(seconds)] += 1


class TinyClient:
    """Service-order endpoints of one Tiny account. Implements ``OrderSource``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        tokens: TokenManager,
        limiter: AccountLimiter,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        max_backoff_s: float = 30.0,
        clock: Clock = utcnow,
        account: str = "default",
        breaker: CircuitBreaker | None = None,
        max_answer_bytes: int = 50 * 1024 * 1024,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._tokens = tokens
        self.limiter = limiter
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self.account = account
        self._counters = _Counters()
        self._max_answer_bytes = max_answer_bytes
        self.breaker = breaker or CircuitBreaker(account=account)
        self._window: WindowEnds | None = None
        self._window_until = 0.0
        self._window_lock = asyncio.Lock()
        # The token a 403 last replaced, and when (see _maybe_dead).
        self._forbidden_replaced: str | None = None
        self._forbidden_at = float("-inf")
        # What the API last said of the token in use: the latest send time of a request it
        # accepted and of one it refused (see _order_refused), and a wake-up per answer.
        self._verdicts: dict[str, list[dt.datetime | None]] = {}
        self._answered = asyncio.Event()
        self._max_retries = max_retries
        self._max_backoff_s = max_backoff_s

    async def keep_alive(self) -> bool:
        """Renew the tokens if the refresh token is past half its life (see TokenManager)."""
        return await self._tokens.keep_alive()

    def api_stats(self) -> ApiStats:
        """Cumulative figures of this client (a run reports ``after.since(before)``)."""
        c, limiter = self._counters, self.limiter.stats
        return ApiStats(
            requests=dict(c.requests),
            retries=c.retries,
            rate_limited=limiter.throttled,
            paused_s=limiter.paused_s,
            token_refreshes=self._tokens.refreshes,
            latency_sum_s=c.latency_sum_s,
            latency_buckets=tuple(c.latency_buckets),
            quota_per_minute=self.limiter.rate_per_minute,
            mended=c.mended,
        )

    async def list_orders(self, query: ListQuery, *, stop: asyncio.Event | None = None) -> Page:
        """One page of ``GET /ordem-servico`` filtered by status (and emission window:
        ``date_from``..``date_to``, both days included, whatever the API's own ends).
        ``stop`` set before it is sent: RequestWithheld (see :mod:`.withhold`)."""
        first, last = query.date_from, query.date_to
        if first or last:
            first, last = (await self._window_ends(stop)).params(first, last)
        items, total, observed_at = await self._list(
            query.situacao, query.limit, query.offset, first, last, stop
        )
        return Page(query=query, items=items, total=total, observed_at=observed_at)

    async def _list(
        self,
        situacao: int,
        limit: int,
        offset: int,
        first: dt.date | None,
        last: dt.date | None,
        stop: asyncio.Event | None = None,
    ) -> tuple[tuple[Any, ...], int | None, dt.datetime]:
        params: dict[str, str] = {
            "situacao": str(situacao),
            "limit": str(limit),
            "offset": str(offset),
        }
        if first:
            params["dataInicialEmissao"] = first.isoformat()
        if last:
            params["dataFinalEmissao"] = last.isoformat()
        body, observed_at = await self._request("list", "/ordem-servico", params, stop=stop)
        if not isinstance(body, dict):
            raise TinyBadPayload(f"{_where('/ordem-servico', params)}: the list answer is "
                                 "not an object", body=_preview(body))  # fmt: skip
        paging = body.get("paginacao")
        total = paging.get("total") if isinstance(paging, dict) else None
        found = body.get("itens")
        if found is None and total == 0 and type(total) is int:
            found = []  # null for none, as an API written in PHP says an empty array
        if not isinstance(found, list):
            raise TinyBadPayload(
                f"{_where('/ordem-servico', params)}: the list answer has no 'itens' array "
                f"(total {total})", body=_preview(body),
            )  # fmt: skip
        items = tuple(found)
        # A total its own page contradicts (fewer orders than it holds, or a boolean) is
        # none: taken as said, the first page of every status would have been its last.
        if type(total) is not int or (items and total < offset + len(items)):
            total = None
        return items, total, observed_at

    async def _window_ends(self, stop: asyncio.Event | None) -> WindowEnds:
        """The API's emission-window ends, learned once per API and process (see
        :mod:`.window`); while no order tells, both ends are taken as included, and asked
        again an hour later."""
        known = window.LEARNED.get(self._base)
        if known is not None:
            return known
        async with self._window_lock:
            if self._window is None or time.monotonic() >= self._window_until:
                probe = functools.partial(self._probe_window, stop=stop)
                learned = await window.learn(probe, (int(s) for s in Situacao))
                self._window = learned or WindowEnds()
                self._window_until = time.monotonic() + 3600.0
                if learned is not None:
                    window.LEARNED[self._base] = learned
                log.info(
                    "account %s: Tiny's emission-date window: %s%s", self.account,
                    self._window, "" if learned else " (assumed: no order told)",
                )  # fmt: skip
            return self._window

    async def _probe_window(
        self,
        situacao: int,
        first: dt.date | None,
        last: dt.date | None,
        *,
        stop: asyncio.Event | None,
    ) -> tuple[int, dt.date | None]:
        items, total, _ = await self._list(situacao, 1, 0, first, last, stop)
        day = window.emission_day(items[0]) if items else None
        return (total if total is not None else len(items)), day

    async def get_order(
        self,
        order_id: int,
        *,
        retry: bool = True,
        repeat: bool = False,
        stop: asyncio.Event | None = None,
    ) -> Detail:
        """``GET /ordem-servico/{id}``; raises TinyNotFound for a missing order. Without
        ``retry`` a 5xx, 429 or timeout is raised at once (the caller retries later, and
        says so with ``repeat``: the report's retries count the caller's as well).
        ``stop`` set before it is sent: RequestWithheld (see :mod:`.withhold`)."""
        if repeat:
            self._counters.retries += 1
        path = f"/ordem-servico/{order_id}"
        body, observed_at = await self._request("detail", path, {}, retry=retry, stop=stop)
        return Detail(order_id=order_id, body=body, observed_at=observed_at)

    async def _request(
        self,
        endpoint: str,
        path: str,
        params: dict[str, str],
        *,
        retry: bool = True,
        stop: asyncio.Event | None = None,
    ) -> tuple[Any, dt.datetime]:
        """The answer, tried up to ``max_retries`` times (once without ``retry``) with full
        jitter over a doubling backoff (1 s, 2 s, 4 s… up to ``max_backoff_s``). ``stop``
        set during a backoff ends it: the retry is withheld, not sent."""
        # backoff's own schedule, awaited here: its decorator's sleep cannot be ended.
        waits = backoff.expo(max_value=self._max_backoff_s)
        next(waits)  # its generators are primed by a first send, as its decorator does
        tries = 1
        while True:
            try:
                return await self._get_once(endpoint, path, params, stop)
            except _Retry as exc:
                if not retry or tries >= self._max_retries:
                    raise exc.final from exc.final.__cause__
            await waiting(asyncio.sleep(backoff.full_jitter(next(waits))), stop)
            # No line per retry: the breaker says when Tiny is down.
            self._counters.retries += 1
            tries += 1

    async def _get_once(
        self, endpoint: str, path: str, params: dict[str, str], stop: asyncio.Event | None
    ) -> tuple[Any, dt.datetime]:
        genuine = 0  # 401s to a token that was valid when sent
        for _ in range(_AUTH_ROUNDS):
            sent = await self._send(endpoint, path, params, stop)
            self._judged(sent)
            if sent.page:
                break  # no verdict on the token nor the order: an outage, below
            if sent.status == 403:
                # A listing is about no one order: its 403 can only be the token's.
                if endpoint == "detail" and not self._maybe_dead(sent.token):
                    self.breaker.success()  # Tiny served it
                    break  # the API's word: an error of its own below
                self.breaker.no_verdict()  # the token's: Tiny did not serve it
                await self._renew(sent.token)  # nothing if it was replaced already
                continue
            if sent.status != 401:
                break
            self.breaker.no_verdict()  # unless it is the order's (a success, below)
            if self._tokens.valid_at(sent.token, sent.observed_at):
                genuine += 1
                if endpoint == "detail" and genuine == 1 and await self._order_refused(sent):
                    genuine = 2  # the token worked for a later request: about this order
                if genuine == 2:  # a fresh token was refused too: it is about this order
                    self.breaker.success()
                    message = f"{path}: 401 even with a fresh token"
                    if endpoint == "detail":
                        raise TinyOrderForbidden(message, status=401, body=sent.text(2000))
                    raise TinyAuthError(message)
            # Refused, or expired on the way: a new token, and the request goes again.
            await self._renew(sent.token)
        else:
            raise TinyAuthError(f"{path}: refused (401/403) for {_AUTH_ROUNDS} tokens in a row")
        status = sent.status
        if sent.page:
            kind = sent.headers.get("Content-Type") or "no Content-Type"
            message = f"{path}: HTTP {status} with a page that is not JSON ({kind}) after retries"
            hint = f"; {BASE_URL_HINT}" if status == 404 else ""
            raise _Retry(TinyUnavailable(
                f"{message}: {_preview(sent.text(200))}{hint}", status=status,
                body=sent.text(10000),
            ))  # fmt: skip
        if status == 429:
            pause = self.limiter.throttled(sent.headers)
            log.info("429 from Tiny: every request of the account waits %.0f s", pause)
            raise _Retry(TinyRateLimited(f"{path}: still rate limited after retries"))
        if status >= 500:
            message = f"{path}: HTTP {status} after retries: {_preview(sent.text(200))}"
            raise _Retry(TinyUnavailable(message, status=status, body=sent.text(10000)))
        if status == 404:
            raise TinyNotFound(f"{path}: not found", status=404, body=sent.text(2000))
        if status != 200:
            body = sent.text(10000)
            raise TinyHTTPError(
                f"{path}: HTTP {status}: {_preview(body)}", status=status, body=body
            )
        try:
            value, mended = sent.parsed or answers.loads(sent.body)
        except ValueError as exc:
            error = TinyBadPayload(f"{_where(path, params)}: answer is not JSON ({exc})",
                                   body=sent.text(10000))  # fmt: skip
            if endpoint == "list":
                # A page cut short: asked again like a 5xx (a detail's is an import
                # failure, retried on its schedule; a page's stopped the whole run).
                raise _Retry(error) from exc
            raise error from exc
        if mended:
            self._counters.mended += 1
            metrics.ANSWERS_MENDED.labels(self.account, endpoint).inc()
            log.warning(
                "%s: the answer carried text that is not UTF-8; read with its stray bytes as "
                "Windows-1252 and half surrogate pairs as U+FFFD", path,
            )  # fmt: skip
        return value, sent.observed_at

    def _judged(self, sent: _Sent) -> None:
        """Note what the API said of ``sent.token`` (accepted, or refused) and when. A 5xx
        or a 429 says nothing of it: an outage or the rate gate may answer before the
        token is read (taken for an acceptance, a token dropped early during a blip made
        its 401s import failures of orders that were fine). Nor does a proxy's page."""
        if sent.status < 500 and sent.status != 429 and not sent.page:
            verdict = self._verdicts.get(sent.token)
            if verdict is None:
                self._verdicts = {sent.token: [None, None], **{
                    t: v for t, v in list(self._verdicts.items())[-3:]}}  # fmt: skip
                verdict = self._verdicts[sent.token]
            slot = 1 if sent.status in (401, 403) else 0
            if verdict[slot] is None or verdict[slot] < sent.observed_at:  # type: ignore[operator]
                verdict[slot] = sent.observed_at
        self._answered.set()
        self._answered = asyncio.Event()

    async def _order_refused(self, sent: _Sent) -> bool:
        """Whether a 401 to a token valid when sent is about the order, not the token: a
        request sent later with the same token was accepted (a token does not come back to
        life). Waits a little for the answers of requests already on their way; a later
        request refused too, the token replaced meanwhile, or no answer: the token is
        renewed and the request goes again, as before (Tiny documents per-order 401s:
        each one replaced the token, and rotated the refresh token, once per order)."""
        deadline = time.monotonic() + ORDER_401_WAIT_S
        while True:
            accepted, refused = self._verdicts.get(sent.token, [None, None])
            if accepted is not None and accepted >= sent.observed_at:
                return True
            if refused is not None and refused > sent.observed_at:
                return False  # refused to a later request too: the token died
            if sent.token != self._tokens.current():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), left)

    async def _renew(self, token: str) -> None:
        """Replace ``token``, refused by the API (nothing if that happened already)."""
        try:
            await self._tokens.rejected(token)
        except TinyUnavailable as exc:
            raise self._token_endpoint_down(exc) from exc

    def _token_endpoint_down(self, exc: TinyUnavailable) -> _Retry:
        """Tiny's token endpoint failed (its own three tries spent): a failure of Tiny like
        a 5xx of the API. The breaker counts it (uncounted, a short-lived token kept every
        request asking the endpoint and none reaching the API, so the circuit never opened
        and a run whose every request failed ended "ok"), and the request goes again after
        its backoff like after any 5xx (raised as it was, a blip of two seconds at the
        token endpoint failed the listing that needed the token, and the whole run). A page
        there instead of OAuth JSON (whatever its status: a 200 maintenance page, a 403
        block page; the one such failure raised with its status) counts as its own kind,
        with what to check should it persist."""
        if exc.status is not None:
            self.breaker.failure("token_endpoint_not_json", hint=PAGE_HINT)
        else:
            self.breaker.failure("token_endpoint")
        return _Retry(exc)

    def _maybe_dead(self, token: str) -> bool:
        """Whether a 403 to ``token`` may be a token the API dropped early (ask again with a
        new one) rather than the API's word (see :data:`FORBIDDEN_RECHECK_S`)."""
        if token == self._forbidden_replaced or token != self._tokens.current():
            return True  # already replaced (or being replaced): ask with the new one
        now = time.monotonic()
        if now - self._forbidden_at < FORBIDDEN_RECHECK_S:
            return False
        self._forbidden_replaced, self._forbidden_at = token, now
        return True

    async def _send(
        self, endpoint: str, path: str, params: dict[str, str], stop: asyncio.Event | None
    ) -> _Sent:
        """One attempt. The token is read once the limiter lets the request go, so a
        short-lived token never expires while the request waits for its turn. ``stop`` set
        before it leaves: RequestWithheld."""
        self.breaker.refuse_if_open()
        async with self.limiter.slot(stop) as seq:
            await self.breaker.admit(stop)  # it may have opened while this request waited
            try:
                token = await self._tokens.access_token()
            except TinyUnavailable as exc:
                raise self._token_endpoint_down(exc) from exc
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            observed_at = self._clock()
            started = time.perf_counter()
            try:
                async with self._session.get(
                    self._base + path, params=params, headers=headers, timeout=self._timeout
                ) as resp:
                    body = await self._read(resp, path)
                    # A copy that keeps the names case-insensitive (RFC 9110): a gateway
                    # may send x-ratelimit-limit, and a dict would not find it.
                    status, resp_headers = resp.status, resp.headers.copy()
            except (aiohttp.ClientError, TimeoutError) as exc:
                metrics.REQUESTS.labels(self.account, endpoint, "error").inc()
                self.breaker.failure("timeout" if isinstance(exc, TimeoutError) else "connection")
                said = str(exc) or (  # a timeout says nothing: "TimeoutError after retries: "
                    f"no whole answer within {self._timeout.total:g} s (--timeout, "
                    "TINY_REQUEST_TIMEOUT_S)"
                    if isinstance(exc, TimeoutError)
                    else "no answer"
                )
                where = _where(path, params)
                error = TinyUnavailable(f"{where}: {type(exc).__name__} after retries: {said}")
                error.__cause__ = exc
                raise _Retry(error) from exc
            finally:
                elapsed = time.perf_counter() - started
                self._counters.record(endpoint, elapsed)
                metrics.REQUEST_SECONDS.labels(self.account, endpoint).observe(elapsed)
            page, parsed = False, None
            if _maybe_page(status, resp_headers, body):
                try:
                    parsed = answers.loads(body)  # JSON even so: read once, here
                except ValueError:
                    page = True
            # A page is counted as one, not under its status: a maintenance page's 200
            # was Tiny's success on the requests panel, and diluted the 429s' share.
            metrics.REQUESTS.labels(self.account, endpoint, "page" if page else str(status)).inc()
            if status >= 500:
                self.breaker.failure(f"http_{status}")
            elif page:
                # A load balancer's or proxy's page (its maintenance page answered 200, a
                # firewall's block page answered 403, a web server's 404 where no API
                # is): not Tiny's answer (Tiny's, errors too, are JSON) and never one
                # order's, so Tiny is down, as on a 5xx. A 404 page never said an order
                # was deleted: a wrong base URL had a retry resolve every failure so.
                self.breaker.failure("not_json", hint=BASE_URL_HINT if status == 404 else "")
            elif status not in (401, 403):  # those _get_once judges: the token's or not
                self.breaker.success()
            self.limiter.observe(resp_headers, seq)
        return _Sent(status, resp_headers, body, observed_at, token, page, parsed)

    async def _read(self, resp: aiohttp.ClientResponse, path: str) -> bytes:
        """The body, refused past ``max_answer_bytes`` without ever holding more."""
        cap = self._max_answer_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise TinyAnswerTooLarge(
                f"{path}: the answer is {resp.content_length:,} bytes, over the "
                f"{cap:,}-byte cap (--max-answer-mb)"
            )
        body = await answers.read_capped(resp, cap)
        if body is None:
            raise TinyAnswerTooLarge(
                f"{path}: the answer passed the {cap:,}-byte cap (--max-answer-mb); "
                "the rest was not read"
            )
        return body


def _where(path: str, params: Mapping[str, str]) -> str:
    """What was asked, as a message names it: a listing's page by status and offset."""
    if "situacao" not in params:
        return path
    return f"{path} (situacao {params['situacao']}, offset {params.get('offset', 0)})"


@dataclass(frozen=True, slots=True)
class _Sent:
    """One attempt's answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    observed_at: dt.datetime
    token: str
    #: A 200, 401, 403 or 404 neither announced as JSON nor JSON (see _maybe_page): something
    #: in front of Tiny answered.
    page: bool = False
    #: The JSON of such an answer not announced as JSON, read to tell it from a page.
    parsed: tuple[Any, bool] | None = None

    def text(self, limit: int) -> str:
        return self.body[:limit].decode("utf-8", errors="replace")


#: Statuses a page from in front of Tiny comes with: a maintenance page answered 200, a
#: firewall's or proxy's block page answered 403 (or 401) to every request for a while,
#: a web server's or proxy's ``404: Not Found`` for a path it has no API at (a wrong base
#: URL, a route lost during a deploy).
_PAGE_STATUSES = frozenset({200, 401, 403, 404})


def _maybe_page(status: int, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether an answer of ``status`` may be a page from in front of Tiny (it is one if
    its body is not JSON either). Never one announced as JSON. A 401, 403 or 404 with
    nothing in it is the API's word, taken as it always was (a 404: the order is gone);
    so is a 401 or 403 with a Bearer challenge (RFC 6750 section 3: how an OAuth resource
    server refuses a token): a token the API dropped is renewed, not waited out."""
    if status not in _PAGE_STATUSES or _announced_json(headers):
        return False
    if status == 200:
        return True
    if not body.strip():
        return False
    challenge = headers.get("WWW-Authenticate", "").lstrip().lower()
    return status == 404 or not challenge.startswith("bearer")


def _announced_json(headers: Mapping[str, str]) -> bool:
    """Whether the answer says it is JSON (``application/json``, ``text/json``, any
    ``+json``). What Tiny sends is not documented (the simulator: ``application/json``), so
    a JSON body under another type is read all the same; a load balancer's or proxy's
    maintenance page comes as ``text/html``, ``text/plain`` or with no Content-Type."""
    media = headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return media.endswith(("/json", "+json"))


def _preview(body: object) -> str:
    text = body if isinstance(body, str) else repr(body)
    return text[:200]
