"""The circuit breaker alone, on a fake clock: open after N failures, probe, close or reopen."""

from __future__ import annotations

import asyncio

import pytest

from asyncsync import metrics
from asyncsync.client import CircuitBreaker
from asyncsync.errors import TinyOutage


async def test_opens_after_n_failures_in_a_row_and_probes_after_the_cooldown() -> None:
    now = [100.0]
    breaker = CircuitBreaker(3, 10.0, clock=lambda: now[0], account="b1")
    breaker.failure("http_503")
    breaker.failure("timeout")
    breaker.success()  # an answer in between resets the count
    for kind in ("http_503", "http_503", "connection"):
        await breaker.admit()
        breaker.failure(kind)
    assert breaker.state == "open" and "3 failures in a row" in breaker.reason
    assert metrics.value("asyncsync_tiny_circuit_open", {"account": "b1"}) == 1
    # Its moment too: health and status read the sentence back when "another 10 s" is past.
    with pytest.raises(TinyOutage, match=r"this process sends it no request for another 10 s "
                       r"\(until \d\d:\d\d:\d\d UTC\)$"):  # fmt: skip
        await breaker.admit()
    now[0] += 10
    await breaker.admit()  # the probe goes
    waiting = asyncio.create_task(breaker.admit())  # the others wait for its answer
    await asyncio.sleep(0.01)
    assert not waiting.done()
    breaker.failure("http_503")  # the probe failed: open again, the waiter is refused
    with pytest.raises(TinyOutage):
        await waiting
    now[0] += 10
    await breaker.admit()
    follower = asyncio.create_task(breaker.admit())
    await asyncio.sleep(0.01)
    breaker.success()  # Tiny is back: the waiter follows the probe
    await asyncio.wait_for(follower, 1)
    assert breaker.state == "closed" and breaker.opened == 2
    assert metrics.value("asyncsync_tiny_circuit_open", {"account": "b1"}) == 0


async def test_an_answer_that_sends_the_client_to_renew_its_token_is_no_verdict() -> None:
    # A 401 that sends the client to renew its token says nothing of Tiny's health: it
    # neither resets the count (as a success did) nor adds to it, and a probe that got
    # one gives its place to the next request instead of holding the others a cool-down.
    now = [100.0]
    breaker = CircuitBreaker(2, 10.0, clock=lambda: now[0], account="b2")
    breaker.failure("token_endpoint")
    breaker.no_verdict()
    breaker.failure("token_endpoint")
    assert breaker.state == "open" and breaker.reason.startswith("2 failures in a row")
    now[0] += 10
    await breaker.admit()  # the probe goes, and is answered 401
    waiting = asyncio.create_task(breaker.admit())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    breaker.no_verdict()
    await asyncio.wait_for(waiting, 1)  # the next request is the probe now
    assert breaker.state == "half_open"
    breaker.failure("token_endpoint")  # its refresh failed: open again
    assert breaker.state == "open" and breaker.opened == 2


async def test_the_opening_line_says_its_span_before_its_hints(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The line ended "...; check TINY_TOKEN_URL (...), or the account's token_url in the
    accounts table in 16 s; no request for 60 s": the streak's span read as the hint's
    (sweep H)."""
    now = [0.0]
    breaker = CircuitBreaker(2, 60.0, clock=lambda: now[0], account="b3")
    with caplog.at_level("WARNING", logger="asyncsync.client.breaker"):
        breaker.failure("not_json", hint="check TINY_TOKEN_URL")
        now[0] = 16.0
        breaker.failure("not_json", hint="check TINY_TOKEN_URL")
    [line] = [r for r in caplog.records if r.name == "asyncsync.client.breaker"]
    assert line.getMessage() == (
        "Tiny is unavailable: 2 failures in a row in 16 s: 2 × not_json; check TINY_TOKEN_URL; "
        "no request for 60 s"
    )
    assert line.fields["account"] == "b3"  # type: ignore[attr-defined]
