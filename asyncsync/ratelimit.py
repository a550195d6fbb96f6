"""Account-wide request pacing: a token bucket, a concurrency cap and a shared pause.

Tiny's quota is per account and per minute, shared by every app of the account, so:

* the configured rate is a ceiling, paced by an aiolimiter bucket with a small burst;
* ``X-RateLimit-Limit`` below that ceiling lowers it; ``X-RateLimit-Remaining`` that
  would be used up by the requests already in flight pauses everyone until
  ``X-RateLimit-Reset``;
* a 429 pauses **every** request of the account until the reset, not only the one that
  got it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from . import metrics

#: Pause after a 429 that carries no usable reset header.
DEFAULT_PAUSE_S = 10.0


@dataclass
class LimiterStats:
    """Counters a report can show."""

    acquired: int = 0
    throttled: int = 0  # 429s seen
    pauses: int = 0
    paused_s: float = 0.0


class AccountLimiter:
    """Paces the requests of one Tiny account. Use ``async with limiter.slot(): ...``."""

    def __init__(
        self,
        rate_per_minute: int,
        max_concurrency: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._inflight = 0
        self._resume_at = 0.0
        self.stats = LimiterStats()
        self.rate_per_minute = rate_per_minute
        self._bucket = self._make_bucket(rate_per_minute)

    @staticmethod
    def _make_bucket(rate_per_minute: int) -> AsyncLimiter:
        # A burst of about one second of quota: enough to keep the pipes busy, small
        # enough that a fixed one-minute window on the server is never overrun by it.
        burst = max(1, rate_per_minute // 60)
        return AsyncLimiter(burst, burst * 60.0 / rate_per_minute)

    @property
    def paused_for_s(self) -> float:
        """Seconds left of the current account-wide pause (0 when not paused)."""
        return max(0.0, self._resume_at - self._clock())

    async def _wait_resume(self) -> None:
        # The deadline can move while we sleep (a later 429 extends it), so re-read it.
        while (delay := self._resume_at - self._clock()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for the pause, a concurrency slot and a bucket token, in that order."""
        await self._wait_resume()
        async with self._semaphore:
            await self._bucket.acquire()
            # A pause may have started while we waited for the bucket.
            await self._wait_resume()
            self._inflight += 1
            self.stats.acquired += 1
            try:
                yield
            finally:
                self._inflight -= 1

    def pause(self, seconds: float) -> None:
        """Hold back every request of the account for ``seconds`` (extends, never shortens)."""
        resume_at = self._clock() + seconds
        if resume_at > self._resume_at:
            added = resume_at - max(self._resume_at, self._clock())
            self._resume_at = resume_at
            self.stats.pauses += 1
            self.stats.paused_s += added
            metrics.RATE_PAUSE_SECONDS.inc(added)

    def throttled(self, headers: Mapping[str, str]) -> float:
        """Record a 429 and pause the account until the window resets; returns the pause."""
        self.stats.throttled += 1
        metrics.RATE_LIMITED.inc()
        reset = _number(headers.get("X-RateLimit-Reset")) or _number(headers.get("Retry-After"))
        seconds = reset if reset and reset > 0 else DEFAULT_PAUSE_S
        self.pause(seconds)
        return seconds

    def observe(self, headers: Mapping[str, str]) -> None:
        """Let an answer's ``X-RateLimit-*`` headers tighten the pace."""
        limit = _number(headers.get("X-RateLimit-Limit"))
        if limit and 0 < limit < self.rate_per_minute:
            self.rate_per_minute = int(limit)
            self._bucket = self._make_bucket(self.rate_per_minute)
        remaining = _number(headers.get("X-RateLimit-Remaining"))
        reset = _number(headers.get("X-RateLimit-Reset"))
        # Requests already sent may not be counted yet: keep them out of what is left.
        if remaining is not None and reset and remaining <= self._inflight - 1:
            self.pause(reset)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
