"""Account-wide request pacing: a token bucket, a concurrency cap and a shared pause.

Tiny's quota is per account and per minute, shared by every app of the account, so:

* the configured rate is a ceiling, paced by an aiolimiter bucket with a small burst;
* ``X-RateLimit-Limit`` below that ceiling lowers it; ``X-RateLimit-Remaining`` (less
  the requests still in flight) is a budget counted down as requests leave, and when it
  is spent everyone waits for ``X-RateLimit-Reset``;
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

from .. import metrics

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
        period_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        account: str = "default",
    ) -> None:
        """``rate_per_minute`` requests per quota period (``period_s``: Tiny's is a minute;
        tests against a simulator with a shorter window pass that window)."""
        self._clock = clock
        self._account = account
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._inflight = 0
        self._resume_at = 0.0
        self._budget: int | None = None  # requests left in the server's current window
        self._budget_until = 0.0
        self._newest_seen = 0  # sequence number of the newest request whose answer counted
        self.stats = LimiterStats()
        self.rate_per_minute = rate_per_minute
        self._period_s = period_s
        self._bucket = self._make_bucket(rate_per_minute)

    def _make_bucket(self, rate: int) -> AsyncLimiter:
        # A burst of a tenth of a second of quota: enough to keep the pipes busy, small
        # enough that a run's achieved rate stays at the quota (aiolimiter starts full).
        burst = max(1, int(rate / self._period_s / 10))
        return AsyncLimiter(burst, burst * self._period_s / rate)

    async def _wait_resume(self) -> None:
        # The deadline can move while we sleep (a later 429 extends it), so re-read it.
        while (delay := self._resume_at - self._clock()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        """Wait for the pause, a concurrency slot, a bucket token and the window's budget.

        Yields the request's sequence number, to hand back to :meth:`observe`."""
        await self._wait_resume()
        async with self._semaphore:
            await self._bucket.acquire()
            # A pause may have started while we waited for the bucket.
            await self._wait_resume()
            self._spend_budget()
            await self._wait_resume()
            self._inflight += 1
            self.stats.acquired += 1
            try:
                yield self.stats.acquired
            finally:
                self._inflight -= 1

    def _spend_budget(self) -> None:
        """Count this request against what the last headers said is left in the window;
        when nothing is left, pause everyone until the window resets."""
        if self._budget is None:
            return
        left_s = self._budget_until - self._clock()
        if left_s <= 0:
            self._budget = None  # a new window: unknown until the next answer
        elif self._budget <= 0:
            self.pause(left_s)
            self._budget = None
        else:
            self._budget -= 1

    def pause(self, seconds: float) -> None:
        """Hold back every request of the account for ``seconds`` (extends, never shortens)."""
        resume_at = self._clock() + seconds
        if resume_at > self._resume_at:
            added = resume_at - max(self._resume_at, self._clock())
            self._resume_at = resume_at
            self.stats.pauses += 1
            self.stats.paused_s += added
            metrics.RATE_PAUSE_SECONDS.labels(self._account).inc(added)

    def throttled(self, headers: Mapping[str, str]) -> float:
        """Record a 429 and pause the account until the window resets; returns the pause."""
        self.stats.throttled += 1
        metrics.RATE_LIMITED.labels(self._account).inc()
        reset = _number(headers.get("X-RateLimit-Reset")) or _number(headers.get("Retry-After"))
        seconds = reset if reset and reset > 0 else DEFAULT_PAUSE_S
        self.pause(seconds)
        return seconds

    def observe(self, headers: Mapping[str, str], seq: int | None = None) -> None:
        """Let an answer's ``X-RateLimit-*`` headers tighten the pace. ``seq`` (from
        :meth:`slot`) lets an answer to an older request arrive late without raising the
        budget a newer answer already lowered."""
        limit = _number(headers.get("X-RateLimit-Limit"))
        if limit and 0 < limit < self.rate_per_minute:
            self.rate_per_minute = int(limit)
            self._bucket = self._make_bucket(self.rate_per_minute)
        remaining = _number(headers.get("X-RateLimit-Remaining"))
        reset = _number(headers.get("X-RateLimit-Reset"))
        if seq is not None:
            if seq < self._newest_seen:
                return
            self._newest_seen = seq
        if remaining is not None and reset:
            # Requests still in flight may not be counted yet: keep them out of what is left.
            self._budget = int(remaining) - (self._inflight - 1)
            self._budget_until = self._clock() + reset


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
