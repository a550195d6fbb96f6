"""OAuth access tokens that refresh themselves: proactive, single-flight, shared.

* An access token is renewed :data:`REFRESH_MARGIN` before it expires.
* However many requests need a token at once, one refresh runs (an asyncio lock, and
  the token is checked again once the lock is held).
* The refresh itself runs under the :class:`~asyncsync.seams.TokenStore`'s exclusive
  lock, re-reading the stored tokens first: another process may already have rotated
  the refresh token, and spending the old one would revoke the account's session.
* Tokens are never logged; :class:`~asyncsync.seams.TokenSet` hides them from repr.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import aiohttp
import backoff
import orjson

from .. import metrics
from ..clock import Clock, utcnow
from ..errors import ReauthorizationRequired, TinyAuthError, TinyUnavailable
from ..options import Credentials
from ..seams import TokenSet, TokenStore

log = logging.getLogger(__name__)

REFRESH_MARGIN = dt.timedelta(minutes=5)


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
        if credentials.access_token and credentials.refresh_token:
            self._tokens = TokenSet(
                refresh_token=credentials.refresh_token,
                access_token=credentials.access_token,
                access_expires_at=credentials.access_expires_at,
            )
        self.refreshes = 0

    def _usable(self, tokens: TokenSet | None) -> bool:
        return (
            tokens is not None
            and tokens.access_token is not None
            and tokens.access_expires_at is not None
            and tokens.access_expires_at - REFRESH_MARGIN > self._clock()
        )

    async def access_token(self) -> str:
        """A token valid for at least five more minutes."""
        tokens = self._tokens
        if self._usable(tokens):
            assert tokens is not None and tokens.access_token is not None
            return tokens.access_token
        return await self._refresh(stale=tokens.access_token if tokens else None)

    async def invalidate(self, rejected: str) -> str:
        """The API answered 401 to ``rejected``: get a different token (refreshing once)."""
        return await self._refresh(stale=rejected)

    async def _refresh(self, stale: str | None) -> str:
        async with self._lock:
            current = self._tokens
            if current and current.access_token != stale and self._usable(current):
                return current.access_token  # type: ignore[return-value]
            async with self._store.exclusive():
                stored = await self._store.load()
                if stored and stored.access_token != stale and self._usable(stored):
                    self._tokens = stored
                    return stored.access_token  # type: ignore[return-value]
                # Tiny invalidates the spent refresh token at once: once the request is
                # sent, the new one must be stored even if this task is being cancelled.
                self._tokens = await asyncio.shield(self._grant_and_save(stored))
            assert self._tokens.access_token is not None
            return self._tokens.access_token

    async def _grant_and_save(self, stored: TokenSet | None) -> TokenSet:
        tokens = await self._grant(stored)
        await self._store.save(tokens)
        return tokens

    async def _grant(self, stored: TokenSet | None) -> TokenSet:
        """Spend the newest refresh token we know; fall back to the bootstrap one."""
        candidates: list[str] = []
        if stored is not None:
            candidates.append(stored.refresh_token)
        boot = self._credentials.refresh_token
        if boot and boot not in candidates:
            candidates.append(boot)
        if not candidates:
            raise ReauthorizationRequired(
                "no refresh token is stored or configured: authorize the app in Tiny and "
                "set TINY_REFRESH_TOKEN"
            )
        last: ReauthorizationRequired | None = None
        for refresh_token in candidates:
            try:
                return await self._post(refresh_token)
            except ReauthorizationRequired as exc:
                last = exc
        assert last is not None
        raise last

    @backoff.on_exception(
        backoff.expo, TinyUnavailable, max_tries=3, max_value=10, jitter=backoff.full_jitter
    )
    async def _post(self, refresh_token: str) -> TokenSet:
        """One grant; a 5xx or an unreachable endpoint is tried three times in all."""
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
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TinyUnavailable(f"token endpoint unreachable: {exc!r}") from exc
        data = _json_object(body)
        if status == 400 and data.get("error") == "invalid_grant":
            raise ReauthorizationRequired(
                "Tiny refused the refresh token (invalid_grant): it expired or was revoked. "
                "Authorize the app again in Tiny and set a new TINY_REFRESH_TOKEN."
            )
        if status >= 500:
            raise TinyUnavailable(f"token endpoint answered {status}")
        if status != 200 or not isinstance(data.get("access_token"), str):
            raise TinyAuthError(
                f"token endpoint answered {status} ({data.get('error', 'no error code')}): "
                "check TINY_CLIENT_ID and TINY_CLIENT_SECRET"
            )
        self.refreshes += 1
        metrics.TOKEN_REFRESHES.labels(self._account).inc()
        expires_in = float(data.get("expires_in") or 14400)
        log.info("access token refreshed; valid for %.0f s", expires_in)
        return TokenSet(
            refresh_token=str(data.get("refresh_token") or refresh_token),
            access_token=data["access_token"],
            access_expires_at=sent_at + dt.timedelta(seconds=expires_in),
        )


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
