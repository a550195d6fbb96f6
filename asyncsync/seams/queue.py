"""The work queue as the work layer sees it: what a unit looks like on the queue, what a
worker is handed when it picks one, and the :class:`WorkQueue` Protocol.

The store implements it on a PostgreSQL job queue library (``store/queue.py``); nothing
else knows which library that is. A handler that cannot run its unit now raises
:class:`~asyncsync.errors.Requeue`: the same unit comes back after the delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A unit of work as the queue carries it."""

    kind: str  # which handler runs it (the queue's entrypoint)
    payload: bytes  # the unit itself, as JSON
    priority: int = 0  # higher runs first
    delay_s: float = 0.0  # not before this many seconds from now
    #: While a unit with this key is queued or running, another one is not added.
    dedupe_key: str | None = None


@dataclass(frozen=True, slots=True)
class PickedWork:
    """A unit a worker picked."""

    id: int  # the queue's id: the same across re-queues and takeovers
    kind: str
    payload: bytes
    attempts: int  # times it went back to the queue before (re-armed, re-queued)


@dataclass(frozen=True, slots=True)
class QueueCount:
    """How many units of one kind are in one state."""

    kind: str
    state: str  # queued (due now), deferred (due later), running, failed
    units: int
    oldest_s: float | None  # queued/deferred: since created; running: since picked

    def as_dict(self) -> dict[str, object]:
        oldest = None if self.oldest_s is None else round(self.oldest_s, 1)
        return {"kind": self.kind, "state": self.state, "units": self.units, "oldest_s": oldest}


#: Runs one picked unit; raises Requeue to have it run again later.
WorkHandler = Callable[[PickedWork], Awaitable[None]]
#: A periodic task: called once per tick across every worker.
Tick = Callable[[], Awaitable[None]]


class WorkQueue(Protocol):
    """The queue every worker of a database shares."""

    async def enqueue(self, items: Sequence[WorkItem]) -> int:
        """Add units (those whose dedupe key is taken are skipped); returns how many
        were added."""
        ...

    async def census(self, account: str | None = None) -> list[QueueCount]:
        """Units by kind and state (only ``account``'s when given)."""
        ...

    async def prune(self) -> None:
        """Forget the queue's history past its retention."""
        ...

    async def hurry(self, ids: Sequence[int] = (), *, keys: Sequence[str] = ()) -> list[int]:
        """Make the units ``ids`` (and those of the dedupe ``keys``), back on the queue
        due later, due now; returns those it did (one put back a moment ago may not be
        on the queue yet)."""
        ...

    async def work(
        self,
        handlers: Mapping[str, WorkHandler],
        *,
        slots: int,
        limits: Mapping[str, int],
        heartbeat_s: float,
        ticks: Mapping[str, tuple[str, Tick]],
        stop: asyncio.Event,
    ) -> None:
        """Pick units and run them until ``stop``, then let the running ones finish.

        ``slots``: units this worker runs at once; ``limits``: units of a kind running at
        once across every worker; ``heartbeat_s``: a unit whose worker fell silent this
        long is picked again by another; ``ticks``: name → (cron expression, task), each
        run once per tick across every worker."""
        ...
