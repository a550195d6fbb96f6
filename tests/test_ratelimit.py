"""The account limiter alone, on a fake clock: headers tighten it, 429s pause everyone."""

from __future__ import annotations

import asyncio
import time

from asyncsync import metrics
from asyncsync.client import AccountLimiter
from asyncsync.client.ratelimit import DEFAULT_PAUSE_S, MAX_RESET_S, RESET_NOW_S
from asyncsync.errors import RequestWithheld


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


async def test_the_pace_follows_the_limit_header_up_and_down_within_the_ceiling() -> None:
    capped = AccountLimiter(600, 4)
    capped.observe({"X-RateLimit-Limit": "120"})
    assert capped.rate_per_minute == 120
    capped.observe({"X-RateLimit-Limit": "900"})  # the configured rate is a ceiling
    assert capped.rate_per_minute == 600
    free = AccountLimiter(None, 4)
    assert free.rate_per_minute == 120  # assumed until Tiny says
    free.observe({"X-RateLimit-Limit": "900"})
    assert free.rate_per_minute == 900
    free.observe({"X-RateLimit-Limit": "60"})
    assert free.rate_per_minute == 60
    shared = AccountLimiter(None, 4, share=0.5)
    shared.observe({"X-RateLimit-Limit": "600"})
    assert shared.rate_per_minute == 300  # the rest is left to the account's other apps
    quota = {"account": "default"}
    assert metrics.value("asyncsync_tiny_quota_per_minute", quota) == 300


async def test_requests_go_one_at_a_time_until_the_quota_is_known() -> None:
    limiter = AccountLimiter(None, 8)
    inside: list[int] = []
    before: list[int] = []  # how many were inside, each time one entered before the answer
    after: list[int] = []
    known = False

    async def request(i: int) -> None:
        nonlocal known
        async with limiter.slot() as seq:
            inside.append(i)
            (after if known else before).append(len(inside))
            await asyncio.sleep(0.01)
            if not known:  # the first answer tells the quota
                limiter.observe({"X-RateLimit-Limit": "60000"}, seq)
                known = True
            inside.remove(i)

    await asyncio.gather(*(request(i) for i in range(9)))
    assert before == [1]  # nobody went beside the request that would learn the quota
    assert max(after) > 1  # once it was known, they went together
    assert limiter.rate_per_minute == 60000


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


async def test_a_stop_withholds_the_requests_waiting_for_their_turn_not_the_one_sent() -> None:
    # The run's stop: a request already let through finishes; those waiting (for the
    # first answer, for a slot, for the pace of a minute's quota) are not sent, at once,
    # and leave nothing held behind them.
    limiter = AccountLimiter(60, 2)  # a request a second, once the first answer came
    stop, answer = asyncio.Event(), asyncio.Event()
    sent: list[str] = []

    async def request(name: str) -> None:
        async with limiter.slot(stop) as seq:
            sent.append(name)
            if name == "probe":
                await answer.wait()
                limiter.observe({"X-RateLimit-Limit": "60"}, seq)

    async def outcome(name: str) -> str:
        try:
            await request(name)
        except RequestWithheld:
            return "withheld"
        return "sent"

    probe = asyncio.create_task(outcome("probe"))
    waiting = [asyncio.create_task(outcome(f"w{i}")) for i in range(4)]
    await asyncio.sleep(0.05)
    assert sent == ["probe"]  # the others wait for its answer
    stop.set()
    started = time.monotonic()
    assert await asyncio.wait_for(asyncio.gather(*waiting), 1) == ["withheld"] * 4
    assert time.monotonic() - started < 0.5
    answer.set()
    assert await probe == "sent"
    # Paced now: a second on, one request goes, the next would wait a second more.
    stop = asyncio.Event()
    await asyncio.sleep(1.05)
    paced = [asyncio.create_task(outcome(f"p{i}")) for i in range(3)]
    await asyncio.sleep(0.05)
    stop.set()
    started = time.monotonic()
    assert sorted(await asyncio.wait_for(asyncio.gather(*paced), 1)) == [
        "sent",
        "withheld",
        "withheld",
    ]
    assert time.monotonic() - started < 0.5
    assert sent == ["probe", "p0"]
    # Nothing was left held: two requests go side by side again.
    inside = 0

    async def alongside() -> int:
        nonlocal inside
        async with limiter.slot():
            inside += 1
            await asyncio.sleep(1.2)
            return inside

    assert max(await asyncio.wait_for(asyncio.gather(alongside(), alongside()), 5)) == 2


def test_a_reset_header_never_holds_the_account_back_for_days() -> None:
    limiter = AccountLimiter(6000, 4)
    assert limiter.throttled({"X-RateLimit-Reset": "5"}) == 5
    in_ten_s = str(time.time() + 10)  # a moment in epoch seconds, not a delay
    assert 9 <= limiter.throttled({"X-RateLimit-Reset": in_ten_s}) <= 10
    assert limiter.throttled({"X-RateLimit-Reset": "86400000"}) == MAX_RESET_S
    assert limiter.throttled({"X-RateLimit-Reset": "inf"}) == DEFAULT_PAUSE_S
    assert limiter.throttled({"X-RateLimit-Reset": "nan", "Retry-After": "3"}) == 3
    # "0": the window resets within the second (the header counts whole seconds). It was
    # unusable, and a 429 held the account back 10 s.
    assert limiter.throttled({"X-RateLimit-Reset": "0"}) == RESET_NOW_S


def test_a_bare_429_waits_for_the_window_the_last_answer_announced() -> None:
    """A 429 with no headers at all (TINY_API.md: "possibly with no body in that shape")
    paused the account a flat 10 s each time, though the answer before it had said the
    window resets in 3 s: 150 orders took 211 s (sweep F). Only with no window known: 10 s."""
    now = [100.0]
    limiter = AccountLimiter(6000, 4, clock=lambda: now[0])
    assert limiter.throttled({}) == DEFAULT_PAUSE_S  # nothing known yet
    limiter.observe({"X-RateLimit-Limit": "120", "X-RateLimit-Remaining": "4",
                     "X-RateLimit-Reset": "3"})  # fmt: skip
    now[0] += 1.0
    assert limiter.throttled({}) == 2.0
    now[0] += 5.0  # that window is over: what the next one holds is unknown
    assert limiter.throttled({}) == DEFAULT_PAUSE_S
