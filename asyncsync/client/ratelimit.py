"""Account-wide request pacing: a token bucket, a concurrency cap and a shared pause.

Tiny's quota is per account and per minute, differs per plan, and is shared by every app
of the account, so:

* the pace follows the account's real quota, ``X-RateLimit-Limit`` (up and down), times
  ``share`` (room left for the account's other apps), capped by an optional ceiling
  (``--rate-limit``); until the first answer says what the quota is, requests go one at
  a time; an API that sends no limit header is paced at the ceiling, or at
  :data:`ASSUMED_PER_MINUTE` without one;
* ``X-RateLimit-Remaining`` (less the requests still in flight) is a budget counted down
  as requests leave, and when it is spent everyone waits for ``X-RateLimit-Reset``;
* a 429 pauses **every** request of the account until the reset, not only the one that
  got it;
* a request whose run is told to stop while it waits here is not sent at all
  (:mod:`.withhold`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from .. import metrics
from .withhold import waiting, withhold

log = logging.getLogger(__name__)

#: Pause after a 429 that carries no usable reset header.
DEFAULT_PAUSE_S = 10.0
#: The longest a reset header may hold the account back: a per-minute quota resets within
#: a minute, a daily one may take hours; a value past this (a misread epoch, a bug) does not
#: stop the account for days, it only costs one 429 every so often.
MAX_RESET_S = 900.0
#: Pause after a 429 whose reset header says 0: the window resets within the second (the
#: header counts whole seconds).
RESET_NOW_S = 1.0
#: A reset this large is a point in time (epoch seconds), not a delay.
_EPOCH_SECONDS = 1e9
#: The pace when Tiny sends no X-RateLimit-Limit and no ceiling is configured.
ASSUMED_PER_MINUTE = 120


@dataclass
class LimiterStats:
    """Counters a report can show."""

    acquired: int = 0
    throttled: int = 0  # 429s seen
    pauses: int = 0
    paused_s: float = 0.0


class AccountLimiter:
    """Paces the requests of one Tiny account. Use ``async with limiter.slot(stop): ...``."""

    def __init__(
        self,
        ceiling_per_minute: int | None,
        max_concurrency: int,
        *,
        share: float = 1.0,
        period_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        account: str = "default",
    ) -> None:
        """Requests per quota period (``period_s``: Tiny's is a minute; tests against a
        simulator with a shorter window pass that window). ``ceiling_per_minute`` caps the
        pace (None: the quota Tiny announces is the only limit); ``share`` is the part of
        the announced quota this client may use."""
        self._clock = clock
        self._account = account
        self._ceiling = ceiling_per_minute
        self._share = share
        self._learned = False  # an answer has told us the pace
        self._probe = asyncio.Lock()  # one request at a time until then
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._inflight = 0
        self._resume_at = 0.0
        self._budget: int | None = None  # requests left in the server's current window
        self._budget_until = 0.0
        self._newest_seen = 0  # sequence number of the newest request whose answer counted
        self.stats = LimiterStats()
        self._period_s = period_s
        self.rate_per_minute = self._unannounced()
        self._bucket = self._make_bucket(self.rate_per_minute)
        metrics.QUOTA.labels(account).set(self.rate_per_minute)
        metrics.RATE_LIMITED.labels(account)  # at 0: increase() misses a series born at 1

    def _unannounced(self) -> int:
        """The pace while Tiny has not announced the quota: the configured rate, if any."""
        return self._ceiling or ASSUMED_PER_MINUTE

    def _capped(self, rate: float) -> int:
        return max(1, int(min(rate, self._ceiling) if self._ceiling else rate))

    def _set_rate(self, rate: int, why: str) -> None:
        if rate != self.rate_per_minute or not self._learned:
            log.info(
                "Tiny quota for account %s: pacing at %d requests/minute (%s)",
                self._account, rate, why,
                extra={"fields": {"account": self._account, "quota_per_minute": rate}},
            )  # fmt: skip
        if rate != self.rate_per_minute:
            self.rate_per_minute = rate
            self._bucket = self._make_bucket(rate)
            metrics.QUOTA.labels(self._account).set(rate)

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
    async def slot(self, stop: asyncio.Event | None = None) -> AsyncIterator[int]:
        """Wait for the pause, a concurrency slot, a bucket token and the window's budget.

        Yields the request's sequence number, to hand back to :meth:`observe`. ``stop`` set
        before the request leaves (while it waits, or as its turn comes): no slot, and
        :class:`~asyncsync.errors.RequestWithheld` instead."""
        probe = await waiting(self._turn(), stop)
        try:
            withhold(stop)  # set as the turn came: it still goes nowhere
            self._inflight += 1
            self.stats.acquired += 1
            try:
                yield self.stats.acquired
            finally:
                self._inflight -= 1
        finally:
            self._semaphore.release()
            if probe:
                self._probe.release()

    async def _turn(self) -> bool:
        """Wait for this request's turn, holding a concurrency slot (and, until an answer
        has told the pace, the probe lock: one request at a time); returns whether it holds
        the probe lock. Cancelled on the way, it holds nothing."""
        probe = False
        if not self._learned:
            await self._probe.acquire()
            probe = not self._learned
            if not probe:
                self._probe.release()
        try:
            await self._wait_resume()
            await self._semaphore.acquire()
            try:
                await self._bucket.acquire()
                # A pause may have started while we waited for the bucket.
                await self._wait_resume()
                self._spend_budget()
                await self._wait_resume()
            except BaseException:
                self._semaphore.release()
                raise
        except BaseException:
            if probe:
                self._probe.release()
            raise
        return probe

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
        header = headers.get("X-RateLimit-Reset")
        reset = _reset_s(header) or _reset_s(headers.get("Retry-After"))
        if reset is None and _number(header) == 0:
            reset = RESET_NOW_S
        if reset is None and self._budget_until > self._clock():
            # A bare 429: the window the last answer announced resets then, not a flat
            # 10 s later (each bare 429 of a 150-order sync cost 10 s: 211 s in all).
            reset = self._budget_until - self._clock()
        seconds = reset or DEFAULT_PAUSE_S
        self.pause(seconds)
        return seconds

    def observe(self, headers: Mapping[str, str], seq: int | None = None) -> None:
        """Let an answer's ``X-RateLimit-*`` headers set the pace and the window's budget.
        ``seq`` (from :meth:`slot`) lets an answer to an older request arrive late without
        undoing what a newer answer said."""
        if seq is not None:
            if seq < self._newest_seen:
                return
            self._newest_seen = seq
        limit = _number(headers.get("X-RateLimit-Limit"))
        if limit and limit > 0:
            why = f"X-RateLimit-Limit {limit:g}" + (
                f" × share {self._share:g}" if self._share < 1 else ""
            )
            if self._ceiling and self._ceiling < limit * self._share:
                why += f", ceiling {self._ceiling}"
            self._set_rate(self._capped(limit * self._share), why)
            self._learned = True
        elif not self._learned:
            why = f"ceiling {self._ceiling}" if self._ceiling else "no X-RateLimit-Limit: assumed"
            self._set_rate(self._unannounced(), why)
            self._learned = True
        remaining = _number(headers.get("X-RateLimit-Remaining"))
        reset = _reset_s(headers.get("X-RateLimit-Reset"))
        if remaining is not None and reset:
            # Requests still in flight may not be counted yet: keep them out of what is left.
            self._budget = int(remaining) - (self._inflight - 1)
            self._budget_until = self._clock() + reset


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _reset_s(value: str | None) -> float | None:
    """Seconds until a reset header's moment, within (0, MAX_RESET_S]; None if unusable.
    Tiny sends seconds; epoch seconds are read as the moment they name."""
    seconds = _number(value)
    if seconds is not None and seconds >= _EPOCH_SECONDS:
        seconds -= time.time()
    if seconds is None or seconds <= 0:
        return None
    if seconds > MAX_RESET_S:
        log.warning(
            "a rate-limit reset %s s away is past %.0f s: waiting that long", value, MAX_RESET_S
        )
    return min(seconds, MAX_RESET_S)
