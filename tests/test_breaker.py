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
    with pytest.raises(TinyOutage, match="no request goes to it for another 10 s"):
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
