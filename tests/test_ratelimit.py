"""The account limiter alone, on a fake clock: headers tighten it, 429s pause everyone."""

from __future__ import annotations

import asyncio
import time

from asyncsync.client import AccountLimiter


async def test_a_spent_window_budget_pauses_until_the_reset() -> None:
    limiter = AccountLimiter(6000, 4)
    async with limiter.slot():
        limiter.observe({"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "1"})
    async with limiter.slot():  # spends the last request of the window
        pass
    started = time.monotonic()
    async with limiter.slot():  # nothing left: waits for the reset
        pass
    assert time.monotonic() - started >= 0.9
    assert limiter.stats.pauses == 1


async def test_a_late_answer_to_an_older_request_does_not_raise_the_budget() -> None:
    limiter = AccountLimiter(6000, 4)
    async with limiter.slot() as older:
        pass  # its answer is slow to come
    async with limiter.slot() as newer:
        limiter.observe({"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "1"}, newer)
        limiter.observe({"X-RateLimit-Remaining": "50", "X-RateLimit-Reset": "1"}, older)
    async with limiter.slot():  # the last one of the window
        pass
    started = time.monotonic()
    async with limiter.slot():
        pass
    assert time.monotonic() - started >= 0.9  # the stale "50" was ignored


async def test_the_limit_header_lowers_the_configured_rate() -> None:
    limiter = AccountLimiter(600, 4)
    limiter.observe({"X-RateLimit-Limit": "120"})
    assert limiter.rate_per_minute == 120
    limiter.observe({"X-RateLimit-Limit": "900"})  # the configured quota stays the ceiling
    assert limiter.rate_per_minute == 120


async def test_a_429_holds_back_requests_that_were_waiting() -> None:
    limiter = AccountLimiter(6000, 8)
    assert limiter.throttled({"X-RateLimit-Reset": "1"}) == 1
    stamps: list[float] = []

    async def request() -> None:
        async with limiter.slot():
            stamps.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(request() for _ in range(5)))
    assert min(stamps) - started >= 0.9  # nobody went before the window reset
    assert limiter.stats.throttled == 1
