"""The Tiny API v3 client for service orders: one aiohttp session, paced and retried.

Every request goes through the account's :class:`~asyncsync.ratelimit.AccountLimiter`,
carries a token from the :class:`~asyncsync.tokens.TokenManager`, is retried with
jittered exponential backoff on 5xx, timeouts, connection errors and 429 (after the
account-wide pause), and is mapped to the :mod:`asyncsync.errors` tree at this boundary.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import backoff
import orjson

from . import metrics
from .errors import (
    TinyAuthError,
    TinyBadPayload,
    TinyHTTPError,
    TinyNotFound,
    TinyOrderForbidden,
    TinyRateLimited,
    TinyUnavailable,
)
from .ratelimit import AccountLimiter
from .seams import Detail, ListQuery, Page
from .tokens import TokenManager, utcnow

log = logging.getLogger(__name__)


class _Retry(Exception):
    """Internal: this attempt failed in a way worth another try."""

    def __init__(self, final: Exception) -> None:
        super().__init__(str(final))
        self.final = final


@dataclass
class ClientStats:
    """Request counters and latencies for reports (Prometheus has the same, globally)."""

    requests: dict[str, int] = field(default_factory=dict)  # by endpoint
    retries: int = 0
    latencies_s: list[float] = field(default_factory=list)

    def record(self, endpoint: str, seconds: float) -> None:
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
        if len(self.latencies_s) < 200_000:
            self.latencies_s.append(seconds)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def latency_summary(self) -> tuple[float, float]:
        """(mean, p95) latency in milliseconds; zeros when nothing was sent."""
        if not self.latencies_s:
            return 0.0, 0.0
        ordered = sorted(self.latencies_s)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        return 1000 * sum(ordered) / len(ordered), 1000 * p95


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
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._tokens = tokens
        self.limiter = limiter
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self.stats = ClientStats()
        self._get = backoff.on_exception(
            backoff.expo,
            _Retry,
            max_tries=max_retries,
            max_value=max_backoff_s,
            jitter=backoff.full_jitter,
            on_backoff=self._count_retry,
            raise_on_giveup=True,
        )(self._get_once)

    def _count_retry(self, details: Any) -> None:
        self.stats.retries += 1

    async def list_orders(self, query: ListQuery) -> Page:
        """One page of ``GET /ordem-servico`` filtered by status (and emission window)."""
        params: dict[str, str] = {
            "situacao": str(query.situacao),
            "limit": str(query.limit),
            "offset": str(query.offset),
        }
        if query.date_from:
            params["dataInicialEmissao"] = query.date_from.isoformat()
        if query.date_to:
            params["dataFinalEmissao"] = query.date_to.isoformat()
        body, observed_at = await self._request("list", "/ordem-servico", params)
        if not isinstance(body, dict) or not isinstance(body.get("itens"), list):
            raise TinyBadPayload("list answer has no 'itens' array", body=_preview(body))
        paging = body.get("paginacao")
        total = paging.get("total") if isinstance(paging, dict) else None
        return Page(
            query=query,
            items=tuple(body["itens"]),
            total=total if isinstance(total, int) else None,
            observed_at=observed_at,
        )

    async def get_order(self, order_id: int) -> Detail:
        """``GET /ordem-servico/{id}``; raises TinyNotFound for a missing order."""
        body, observed_at = await self._request("detail", f"/ordem-servico/{order_id}", {})
        return Detail(order_id=order_id, body=body, observed_at=observed_at)

    async def _request(
        self, endpoint: str, path: str, params: dict[str, str]
    ) -> tuple[Any, dt.datetime]:
        try:
            result: tuple[Any, dt.datetime] = await self._get(endpoint, path, params)
            return result
        except _Retry as exc:
            raise exc.final from exc.final.__cause__

    async def _get_once(
        self, endpoint: str, path: str, params: dict[str, str]
    ) -> tuple[Any, dt.datetime]:
        token = await self._tokens.access_token()
        status, headers, body, observed_at = await self._send(endpoint, path, params, token)
        if status == 401:
            # One retry after a refresh; a second 401 on a fresh token is about this order.
            token = await self._tokens.invalidate(token)
            status, headers, body, observed_at = await self._send(endpoint, path, params, token)
            if status == 401:
                message = f"{path}: 401 even with a fresh token"
                if endpoint == "detail":
                    raise TinyOrderForbidden(message, status=401, body=body[:2000])
                raise TinyAuthError(message)
        if status == 429:
            pause = self.limiter.throttled(headers)
            log.warning("429 from Tiny: pausing every request of the account for %.0f s", pause)
            raise _Retry(TinyRateLimited(f"{path}: still rate limited after retries"))
        if status >= 500:
            message = f"{path}: HTTP {status} after retries: {_preview(body)}"
            raise _Retry(TinyUnavailable(message, status=status, body=body[:10000]))
        if status == 404:
            raise TinyNotFound(f"{path}: not found", status=404, body=body[:2000])
        if status != 200:
            raise TinyHTTPError(
                f"{path}: HTTP {status}: {_preview(body)}", status=status, body=body
            )
        try:
            return orjson.loads(body), observed_at
        except orjson.JSONDecodeError as exc:
            raise TinyBadPayload(f"{path}: answer is not JSON", body=body[:10000]) from exc

    async def _send(
        self, endpoint: str, path: str, params: dict[str, str], token: str
    ) -> tuple[int, dict[str, str], str, dt.datetime]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        async with self.limiter.slot() as seq:
            observed_at = self._clock()
            started = time.perf_counter()
            try:
                async with self._session.get(
                    self._base + path, params=params, headers=headers, timeout=self._timeout
                ) as resp:
                    text = await resp.text(errors="replace")
                    status, resp_headers = resp.status, dict(resp.headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                metrics.REQUESTS.labels(endpoint, "error").inc()
                error = TinyUnavailable(f"{path}: {type(exc).__name__} after retries: {exc}")
                error.__cause__ = exc
                raise _Retry(error) from exc
            finally:
                elapsed = time.perf_counter() - started
                self.stats.record(endpoint, elapsed)
                metrics.REQUEST_SECONDS.labels(endpoint).observe(elapsed)
            metrics.REQUESTS.labels(endpoint, str(status)).inc()
            self.limiter.observe(resp_headers, seq)
        return status, resp_headers, text, observed_at


def _preview(body: object) -> str:
    text = body if isinstance(body, str) else repr(body)
    return text[:200]
