"""OAuth access tokens that refresh themselves: proactive, single-flight, shared.

* An access token is renewed before it expires by a margin that fits its lifetime: a
  quarter of it, at most five minutes (Tiny documents four hours, Keycloak's default is
  five minutes, a realm can set anything): refreshes stay near one per lifetime. Its
  expiry is counted from the request's sending, the margin from the answer's arrival: a
  token endpoint slower than the margin does not make every request ask for another.
* However many requests need a token at once, one refresh runs (an asyncio lock, and
  the token is checked again once the lock is held).
* The refresh itself runs under the :class:`~asyncsync.seams.TokenStore`'s exclusive
  lock, re-reading the stored tokens first: another process may already have rotated
  the refresh token, and spending the old one would revoke the account's session. The
  new tokens are stored before anything else happens, so a crash can lose them only
  between Tiny's answer and that write.
* When that write fails (the database went away between the grant and the write), the
  new tokens are not lost: the process goes on with them, writes them to a rescue file
  (``rescue_dir``, mode 0600) and stores them as soon as the database answers. A later
  process on the host finds the rescue file and spends its refresh token before the
  stored one (which is then the spent one: presented again, it may revoke the session).
* :meth:`TokenManager.keep_alive` renews a refresh token past half its lifetime, so an
  idle service does not let it lapse (about a day at Tiny).
* A refresh token the token endpoint refused (``invalid_grant``) is not presented again
  for :data:`REFUSED_FOR`, nor is an access token sent after the refresh its 401 led to
  was refused: an account that waits for a person to authorize again costs Tiny no
  request per unit (a backfill of 150 months spent a token request and a 401 on each,
  every interval). A new refresh token in the store (``authorize``) is used at once.
* Tokens are never logged; :class:`~asyncsync.seams.TokenSet` hides them from repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import backoff
import orjson

from .. import metrics
from ..clock import Clock, utcnow
from ..errors import (
    DatabaseError,
    ReauthorizationRequired,
    TinyAuthError,
    TinyAuthMisconfigured,
    TinyUnavailable,
    authorize_command,
)
from ..options import Credentials
from ..seams import TokenSet, TokenStore
from ..tasks import outlast_cancellation
from . import answers

log = logging.getLogger(__name__)

MAX_MARGIN = dt.timedelta(minutes=5)
#: Part of an access token's lifetime left when it is renewed.
MARGIN_SHARE = 0.25
#: A refresh token's lifetime when Tiny does not announce it.
REFRESH_LIFETIME = dt.timedelta(days=1)
#: Part of a refresh token's lifetime after which keep_alive renews it.
KEEP_ALIVE_SHARE = 0.5
#: A token this close to its expiry when sent may die on the way: its 401 is no proof.
IN_FLIGHT_SKEW = dt.timedelta(seconds=1)
#: How often tokens the store could not take are offered to it again, seconds.
UNSAVED_RETRY_S = 5.0
#: Where a wrong token URL comes from: the flag or environment, or the accounts table.
TOKEN_URL_HINT = (
    "check TINY_TOKEN_URL (--token-url), or the account's token_url in the accounts table"
)
#: What a page at a token endpoint known to work (an outage) says to check if it persists.
PAGE_HINT = f"if it persists, {TOKEN_URL_HINT}"
#: A token lifetime longer than this (ten years) is no lifetime a realm sets: unsaid.
LONGEST_LIFETIME_S = 10 * 365 * 86400.0
#: How long a refresh token Tiny refused (invalid_grant) is not presented again.
REFUSED_FOR = dt.timedelta(hours=1)
#: The reasons of asyncsync_token_refresh_failures_total.
REFRESH_FAILURE_REASONS = ("invalid_grant", "no_token", "refused", "unavailable")


def renew_at(tokens: TokenSet) -> dt.datetime | None:
    """When the access token should be replaced (None: there is none to use)."""
    expires = tokens.access_expires_at
    if tokens.access_token is None or expires is None:
        return None
    issued = tokens.access_issued_at
    if issued is None:
        return expires - MAX_MARGIN
    # A token that arrived dead (issued after its expiry) is due at once, not after it.
    return expires - min(MAX_MARGIN, max(expires - issued, dt.timedelta(0)) * MARGIN_SHARE)


class Refusals:
    """What an account's token endpoint refused: the refresh tokens it answered
    ``invalid_grant`` (when, and what that said), and the access token whose 401 led to
    such a refusal. A worker keeps one per account across its units, each of which has a
    TokenManager of its own."""

    def __init__(self) -> None:
        self.refresh: dict[str, tuple[dt.datetime, str]] = {}
        self.dead_access: str | None = None

    def said(self, refresh_token: str, now: dt.datetime) -> str:
        """What Tiny said when it refused ``refresh_token`` less than REFUSED_FOR ago
        (empty: it did not, or longer ago)."""
        refused = self.refresh.get(refresh_token)
        if refused is None:
            return ""
        if now - refused[0] >= REFUSED_FOR:
            del self.refresh[refresh_token]
            return ""
        return refused[1]


class TokenManager:
    """Hands out a valid access token; refreshes it when due or after a 401."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        token_url: str,
        credentials: Credentials,
        store: TokenStore,
        *,
        timeout_s: float = 30.0,
        clock: Clock = utcnow,
        account: str = "default",
        rescue_dir: Path | None = None,
        refusals: Refusals | None = None,
    ) -> None:
        self._session = session
        self._token_url = token_url
        self._credentials = credentials
        self._store = store
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._account = account
        self._lock = asyncio.Lock()
        self._tokens: TokenSet | None = None
        # Granted tokens the store could not take yet, and when they were last offered.
        self._unsaved: TokenSet | None = None
        self._unsaved_tried = 0.0
        self._unsaved_over: str | None = None  # the stored refresh token they replaced
        self._saving: asyncio.Task[None] | None = None
        self._rescue = (
            None
            if rescue_dir is None
            else rescue_dir / _rescue_name(account, credentials.client_id)
        )
        # Expiry of the last few access tokens handed out, to judge their 401s.
        self._expiry: OrderedDict[str, dt.datetime] = OrderedDict()
        # Whether the token endpoint is known to work: it answered this manager in OAuth
        # JSON, or granted the stored tokens (see _post).
        self._endpoint_works = False
        self._refusals = refusals or Refusals()
        if credentials.access_token and credentials.refresh_token:
            self._adopt(
                TokenSet(
                    refresh_token=credentials.refresh_token,
                    access_token=credentials.access_token,
                    access_expires_at=credentials.access_expires_at,
                )
            )
        self.refreshes = 0
        metrics.REFRESH_TOKEN_AGE.labels(account).set_function(self._refresh_age_or_zero)
        for reason in REFRESH_FAILURE_REASONS:  # at 0: increase() misses a series born at 1
            metrics.TOKEN_REFRESH_FAILURES.labels(account, reason)

    def _adopt(self, tokens: TokenSet) -> TokenSet:
        self._tokens = tokens
        if tokens.access_token and tokens.access_expires_at:
            self._expiry[tokens.access_token] = tokens.access_expires_at
            while len(self._expiry) > 8:
                self._expiry.popitem(last=False)
        return tokens

    def _usable(self, tokens: TokenSet | None) -> bool:
        due = None if tokens is None else renew_at(tokens)
        if due is None or tokens is None or tokens.access_token == self._refusals.dead_access:
            return False
        return due > self._clock()

    async def access_token(self) -> str:
        """A token that will not need renewing for a while."""
        if self._unsaved is not None:
            self._offer_unsaved()
        tokens = self._tokens
        if self._usable(tokens):
            assert tokens is not None and tokens.access_token is not None
            return tokens.access_token
        return await self._refresh(stale=tokens.access_token if tokens else None)

    def valid_at(self, token: str, moment: dt.datetime) -> bool:
        """Whether ``token`` had time to live when a request carrying it was sent at
        ``moment``: a 401 to such a token is the API's word, not an expiry on the way."""
        expires = self._expiry.get(token)
        return expires is not None and expires - IN_FLIGHT_SKEW > moment

    def current(self) -> str | None:
        """The access token requests are sent with now (None: none yet)."""
        return self._tokens.access_token if self._tokens else None

    async def rejected(self, token: str) -> None:
        """The API answered 401 to ``token``: replace it, unless that already happened."""
        await self._refresh(stale=token)

    def refresh_token_age_s(self) -> float | None:
        """Seconds since the refresh token in use was granted (None: unknown)."""
        tokens = self._tokens
        if tokens is None or tokens.access_issued_at is None:
            return None
        return (self._clock() - tokens.access_issued_at).total_seconds()

    def _refresh_age_or_zero(self) -> float:
        return self.refresh_token_age_s() or 0.0

    async def keep_alive(self) -> bool:
        """Renew the tokens when the refresh token is past half its lifetime (or its age is
        unknown); returns whether a grant was made."""
        tokens = self._tokens or await self._store.load()
        if tokens is not None and tokens.access_issued_at is not None:
            lapses = tokens.refresh_expires_at or tokens.access_issued_at + REFRESH_LIFETIME
            halfway = (
                tokens.access_issued_at + (lapses - tokens.access_issued_at) * KEEP_ALIVE_SHARE
            )
            if self._clock() < halfway:
                self._tokens = self._tokens or tokens
                return False
        before = self.refreshes
        await self._refresh(stale=tokens.access_token if tokens else None, force=True)
        return self.refreshes > before

    async def _refresh(self, stale: str | None, *, force: bool = False) -> str:
        async with self._lock:
            current = self._tokens
            if not force and current and current.access_token != stale and self._usable(current):
                return current.access_token  # type: ignore[return-value]
            async with self._store.exclusive():
                stored = await self._store.load()
                fresh = stored and stored.access_token != stale and self._usable(stored)
                if fresh and not (force and stored == current):
                    assert stored is not None and stored.access_token is not None
                    self._adopt(stored)
                    return stored.access_token
                self._drop_superseded(stored)
                # Tiny invalidates the spent refresh token at once: once the request is
                # sent, the new one must be stored and adopted, both locks still held,
                # even if this task is being cancelled (the cancellation follows).
                try:
                    granted = await outlast_cancellation(self._grant_and_save(stored))
                except ReauthorizationRequired:
                    if stale is not None and not force:  # a forced renewal's may still work
                        self._refusals.dead_access = stale
                    raise
            assert granted.access_token is not None
            return granted.access_token

    async def _grant_and_save(self, stored: TokenSet | None) -> TokenSet:
        tokens = await self._grant(stored)
        try:
            await self._store.save(tokens)  # first: the spent refresh token is worthless now
        except Exception as exc:  # whatever went wrong, the rotated token must not be lost
            self._keep_unsaved(tokens, exc, stored)
        else:
            self._unsaved = None  # older than these, and spent
            self._forget_rescue()
        self._adopt(tokens)
        metrics.TOKEN_REFRESHES.labels(self._account).inc()
        # What is left of it on arrival, to the tenth (a 4-s token that took 3.5 s to come
        # said "valid for 0 s"), and when it ends.
        expires = tokens.access_expires_at
        assert expires is not None and tokens.access_issued_at is not None
        left = (expires - tokens.access_issued_at).total_seconds()
        log.info(
            "access token granted for account %s; it expires in %.1f s (at %s UTC)",
            self._account, left, expires.astimezone(dt.UTC).strftime("%H:%M:%S"),
            extra={"fields": {"account": self._account, "event": "token_granted"}},
        )  # fmt: skip
        return tokens

    def _keep_unsaved(self, tokens: TokenSet, exc: Exception, stored: TokenSet | None) -> None:
        """The refresh token Tiny just rotated could not be stored: keep it in this process
        and in the rescue file, and offer it to the store again later (unless the store
        moves past ``stored`` meanwhile: see :meth:`_drop_superseded`)."""
        self._unsaved, self._unsaved_tried = tokens, time.monotonic()
        self._unsaved_over = None if stored is None else stored.refresh_token
        kept = "in this process"
        if self._rescue is not None:
            try:
                self._rescue.parent.mkdir(parents=True, exist_ok=True)
                part = self._rescue.with_suffix(".part")
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(orjson.dumps({"refresh_token": tokens.refresh_token}))
                part.replace(self._rescue)
                kept += f" and in {self._rescue}"
            except OSError as error:
                log.error("could not write the token rescue file %s: %s", self._rescue, error)
        log.error(
            "account %s: Tiny rotated the refresh token and the database could not store "
            "the new one (%s); it is kept %s, and stored as soon as the database answers",
            self._account, exc, kept,
            extra={"fields": {"account": self._account, "event": "token_unsaved"}},
        )  # fmt: skip

    def _offer_unsaved(self) -> None:
        """Offer the unsaved tokens to the store again, in the background (a database
        still away must not hold up requests that have a token), every few seconds."""
        if self._saving is None and time.monotonic() - self._unsaved_tried > UNSAVED_RETRY_S:
            self._unsaved_tried = time.monotonic()
            self._saving = asyncio.get_running_loop().create_task(
                self._save_unsaved(), name=f"tokens-{self._account}-unsaved"
            )

    async def _save_unsaved(self) -> None:
        try:
            await self._save_unsaved_locked()
        finally:
            self._saving = None

    async def _save_unsaved_locked(self) -> None:
        async with self._lock:  # a refresh meanwhile would make these the older tokens
            if self._unsaved is None:
                return
            try:
                async with self._store.exclusive():
                    stored = await self._store.load()
                    if self._drop_superseded(stored):
                        return
                    await self._store.save(self._unsaved)
            except DatabaseError:
                return  # still away: next time
            self._unsaved = None
            self._forget_rescue()
        log.info("account %s: the new refresh token is stored at last", self._account)

    def _drop_superseded(self, stored: TokenSet | None) -> bool:
        """Whether the store moved on from the tokens the unsaved ones replaced: another
        process refreshed since (with the rescue file's token, or this one's spent one
        refused): the unsaved tokens are older than the stored ones, or spent, and are
        dropped for them. Call under the store's exclusive lock."""
        if self._unsaved is None:
            return False
        if (None if stored is None else stored.refresh_token) == self._unsaved_over:
            return False
        log.info(
            "account %s: another process stored newer tokens; the unsaved ones are dropped",
            self._account,
        )
        if self._rescued() == self._unsaved.refresh_token:
            with contextlib.suppress(FileNotFoundError):
                self._rescue.unlink()  # type: ignore[union-attr]
        self._unsaved = None
        if stored is not None and self._usable(stored):
            self._adopt(stored)
        return True

    def _rescued(self) -> str | None:
        """The refresh token a process could not store, from the rescue file."""
        if self._rescue is None:
            return None
        try:
            token = orjson.loads(self._rescue.read_bytes()).get("refresh_token")
        except (OSError, ValueError, AttributeError):
            return None
        return token if isinstance(token, str) else None

    def _forget_rescue(self) -> None:
        if self._rescue is not None and self._unsaved is None:
            with contextlib.suppress(FileNotFoundError):
                self._rescue.unlink()

    async def exchange_code(self, code: str, redirect_uri: str) -> TokenSet:
        """First authorization: trade an authorization code for tokens and store them."""
        form = {
            "grant_type": "authorization_code",
            "client_id": self._credentials.client_id,
            "client_secret": self._credentials.client_secret,
            "redirect_uri": redirect_uri,
            "code": code,
        }
        sent_at = self._clock()
        try:
            async with self._session.post(self._token_url, data=form, timeout=self._timeout) as r:
                body, status = await self._read(r), r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(exc) from exc
        data = _json_object(body)
        self._note_oauth(data)
        if status == 400 and data.get("error") == "invalid_grant":
            raise TinyAuthError(
                "Tiny refused the authorization code (invalid_grant): it is used, expired "
                "(codes live about a minute) or the redirect URI differs; authorize again"
            )
        async with self._store.exclusive():
            try:
                tokens = self._granted(status, body, data, sent_at, None)
            except TinyUnavailable:
                metrics.TOKEN_REFRESH_FAILURES.labels(self._account, "unavailable").inc()
                raise
            await outlast_cancellation(self._store.save(tokens))
        metrics.TOKEN_REFRESHES.labels(self._account).inc()
        return self._adopt(tokens)

    async def _grant(self, stored: TokenSet | None) -> TokenSet:
        """Spend the newest refresh token we know; fall back to the bootstrap one."""
        # Tokens the store could not take come first: the stored one is then spent, and
        # presenting a spent refresh token again may revoke the whole session.
        unsaved = None if self._unsaved is None else self._unsaved.refresh_token
        stored_token = None if stored is None else stored.refresh_token
        candidates: list[str] = []
        for token in (unsaved, self._rescued(), stored_token, self._credentials.refresh_token):
            if token and token not in candidates:
                candidates.append(token)
        if not candidates:
            metrics.TOKEN_REFRESH_FAILURES.labels(self._account, "no_token").inc()
            # An account of the table reads its bootstrap token as its row says, never
            # TINY_REFRESH_TOKEN (a worker's run of it said to set that, and `authorize`
            # without its --account).
            bootstrap = (
                "set TINY_REFRESH_TOKEN"
                if self._account == "default"
                else "name one in its row: `asyncsync accounts add ... --refresh-token-env VAR`"
            )
            raise ReauthorizationRequired(
                f"no refresh token is stored for account {self._account!r}: run "
                f"`{authorize_command(self._account)}` once (or {bootstrap})"
            )
        # A page at an endpoint known to work is an outage (see _post). The stored set is
        # evidence when a token endpoint granted it: only a grant records access_issued_at
        # (tokens from the environment or tiny_token.json, never granted here, do not).
        if stored is not None and stored.access_issued_at is not None:
            self._endpoint_works = True
        now = self._clock()
        said = [self._refusals.said(t, now) for t in candidates]
        if all(said):  # each refused within REFUSED_FOR: what Tiny said, without asking
            raise ReauthorizationRequired(said[0])
        last: ReauthorizationRequired | None = None
        for refresh_token, refused in zip(candidates, said, strict=True):
            if refused:
                continue
            try:
                return await self._post(refresh_token)
            except TinyUnavailable:
                # Once, as its tries gave up: a try that the next one made good is no
                # failed refresh (AsyncsyncTokenRefreshFailing paged for an hour on one).
                metrics.TOKEN_REFRESH_FAILURES.labels(self._account, "unavailable").inc()
                raise
            except ReauthorizationRequired as exc:
                self._refusals.refresh[refresh_token] = (now, str(exc))
                last = exc
        assert last is not None
        raise last

    @backoff.on_exception(
        backoff.expo, TinyUnavailable, max_tries=3, max_value=10, jitter=backoff.full_jitter,
        giveup=lambda exc: isinstance(exc, _NoAnswer),
        giveup_log_level=logging.WARNING,  # the caller's retries and breaker judge the outage
    )  # fmt: skip
    async def _post(self, refresh_token: str) -> TokenSet:
        """One grant; a 5xx, a 429 or an unreachable endpoint is tried three times in all,
        and so is a page (no OAuth JSON, whatever its status but 404 and 405) once the
        endpoint is known to work (it answered this manager in OAuth JSON, or granted the
        stored tokens). An endpoint that does not answer within the timeout is tried once:
        the request that needed the token goes again after its backoff, and the breaker
        counts each (three tries a failure held a one-shot run 16 minutes on a hung token
        endpoint, three times the API's own hang: sweep K)."""
        form = {
            "grant_type": "refresh_token",
            "client_id": self._credentials.client_id,
            "client_secret": self._credentials.client_secret,
            "refresh_token": refresh_token,
        }
        sent_at = self._clock()
        try:
            async with self._session.post(
                self._token_url, data=form, timeout=self._timeout
            ) as resp:
                body = await self._read(resp)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(exc) from exc
        data = _json_object(body)
        self._note_oauth(data)
        return self._granted(status, body, data, sent_at, refresh_token)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The token endpoint's answer, refused past :data:`TOKEN_ANSWER_MAX` bytes unread:
        read whole, a gzip answer of 2 MB inflated to 2 GB and the OOM killer ended the
        run (sweep L). An outage answer like a page: the endpoint is not speaking OAuth."""
        body = await answers.read_capped(resp, TOKEN_ANSWER_MAX)
        if body is None:
            raise TinyUnavailable(
                f"the token endpoint {self._token_url} answered {resp.status} with more "
                f"than {TOKEN_ANSWER_MAX:,} bytes, no OAuth answer; the rest was not read",
                status=resp.status, body="",
            )  # fmt: skip
        return body

    def _note_oauth(self, data: dict[str, Any]) -> None:
        """Remember that the token endpoint speaks OAuth (a token, or an OAuth error)."""
        if _oauth(data):
            self._endpoint_works = True

    def _page(self, status: int, body: bytes) -> NoReturn:
        """An answer with no OAuth JSON in it (a page, or nothing), whatever its status
        (a 404 or 405 aside: the address's): never Tiny's word on the app or its tokens
        (RFC 6749 section 5.2: OAuth errors are JSON). From an endpoint known to work, an
        outage; from one that never answered in OAuth JSON, not an OAuth endpoint."""
        preview = body[:120].decode("utf-8", errors="replace").strip() or "an empty body"
        if self._endpoint_works:
            # A proxy's maintenance page while the token host is down, its firewall's 403
            # block page: an outage like its 5xx (exit 2, which the units do not restart
            # on, ended serve for good; a 401 or 403 blamed TINY_CLIENT_ID). The one
            # TinyUnavailable of the token endpoint that carries a status.
            raise TinyUnavailable(
                f"the token endpoint {self._token_url} answered {status} with a page, "
                f"not OAuth JSON ({preview!r}), though it has answered in OAuth JSON "
                f"before: taken for an outage; {PAGE_HINT}",
                status=status, body=preview,
            )  # fmt: skip
        # Never known to work: a web page (a login form pasted for the token URL) or
        # nothing at all: not an OAuth endpoint.
        metrics.TOKEN_REFRESH_FAILURES.labels(self._account, "refused").inc()
        raise TinyAuthMisconfigured(
            f"the token endpoint {self._token_url} answered {status} with no OAuth JSON "
            f"({preview!r}): {TOKEN_URL_HINT}"
        )

    def _granted(
        self,
        status: int,
        body: bytes,
        data: dict[str, Any],
        sent_at: dt.datetime,
        spent: str | None,
    ) -> TokenSet:
        """The tokens of a token-endpoint answer, or the error it means."""
        if status == 400 and data.get("error") == "invalid_grant":
            metrics.TOKEN_REFRESH_FAILURES.labels(self._account, "invalid_grant").inc()
            raise ReauthorizationRequired(
                f"Tiny refused the grant for account {self._account!r} (invalid_grant): the "
                f"refresh token expired or was revoked. Run `{authorize_command(self._account)}` "
                "to let a person authorize the app again."
            )
        if status >= 500 or status == 429:  # a 429 says nothing of the app either
            raise TinyUnavailable(f"token endpoint answered {status}")
        if not _oauth(data) and status not in (404, 405):
            self._page(status, body)
        error = data.get("error")
        if status in (400, 401) and error in ("invalid_client", "unauthorized_client"):
            metrics.TOKEN_REFRESH_FAILURES.labels(self._account, "refused").inc()
            raise TinyAuthMisconfigured(
                f"Tiny's token endpoint refused the app's credentials ({error}) for account "
                f"{self._account!r}: check TINY_CLIENT_ID and TINY_CLIENT_SECRET (or the "
                "account's client secret in the accounts table)"
            )
        if status in (404, 405):
            metrics.TOKEN_REFRESH_FAILURES.labels(self._account, "refused").inc()
            raise TinyAuthMisconfigured(
                f"the token endpoint {self._token_url} answered {status}: {TOKEN_URL_HINT}"
            )
        if status != 200 or not isinstance(data.get("access_token"), str):
            metrics.TOKEN_REFRESH_FAILURES.labels(self._account, "refused").inc()
            raise TinyAuthError(
                f"token endpoint answered {status} ({data.get('error', 'no error code')}): "
                "check TINY_CLIENT_ID and TINY_CLIENT_SECRET"
            )
        self.refreshes += 1
        expires_in = _seconds(data.get("expires_in"), 14400.0)
        refresh_in = _seconds(data.get("refresh_expires_in"), 0.0)
        refresh = data.get("refresh_token") or spent
        if not isinstance(refresh, str):
            raise TinyAuthError("token endpoint answered no refresh_token")
        # Its life is counted from the sending (it may have begun then), its renewal
        # margin from its arrival: counted from the sending too, a token from an endpoint
        # slower than a quarter of its life arrived already due, and every request asked
        # for another (4-s tokens answered in 3.5 s: 34 grants for 33 requests).
        received_at = self._clock()
        took = (received_at - sent_at).total_seconds()
        if took > expires_in * MARGIN_SHARE:
            log.warning(
                "account %s: the token endpoint took %.1f s to grant a token valid for %.0f s",
                self._account, took, expires_in,
            )  # fmt: skip
        return TokenSet(
            refresh_token=refresh,
            access_token=data["access_token"],
            access_expires_at=sent_at + dt.timedelta(seconds=expires_in),
            access_issued_at=max(received_at, sent_at),
            refresh_expires_at=sent_at + dt.timedelta(seconds=refresh_in) if refresh_in else None,
        )


#: The most a token endpoint's answer may be: an OAuth answer is a few kB.
TOKEN_ANSWER_MAX = 1 << 20


def _unreachable(exc: Exception) -> TinyUnavailable:
    """The token endpoint did not answer: one sentence (the error's repr said
    ``ClientConnectorError(ConnectionKey(host=..., is_ssl=False, ssl=True, proxy=None...``)."""
    said = str(exc) or "no answer in time"
    kind = _NoAnswer if isinstance(exc, TimeoutError) else TinyUnavailable
    return kind(f"token endpoint unreachable: {type(exc).__name__}: {said}")


class _NoAnswer(TinyUnavailable):
    """The token endpoint did not answer in time (not tried again at once)."""


def _rescue_name(account: str, client_id: str) -> str:
    """The rescue file of an account's app (two mirrors on one host may share an account
    name, not an app and its account)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{account}.{client_id}") + ".json"


def _seconds(value: object, default: float) -> float:
    """A lifetime Tiny announced, or ``default`` when it announced none: not a number,
    not positive, or past :data:`LONGEST_LIFETIME_S` (which, added to the grant's time,
    would have raised OverflowError with the rotated refresh token not yet stored)."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return seconds if 0 < seconds <= LONGEST_LIFETIME_S else default


def _oauth(data: dict[str, Any]) -> bool:
    """Whether a token endpoint's JSON is OAuth's: a token, or an OAuth error."""
    return isinstance(data.get("access_token"), str) or isinstance(data.get("error"), str)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


class MemoryTokenStore:
    """A :class:`TokenStore` that lives in one process (tests, the simulator demo)."""

    def __init__(self, tokens: TokenSet | None = None) -> None:
        self.tokens = tokens
        self._lock = asyncio.Lock()

    async def load(self) -> TokenSet | None:
        return self.tokens

    async def save(self, tokens: TokenSet) -> None:
        self.tokens = tokens

    def exclusive(self) -> asyncio.Lock:
        return self._lock
