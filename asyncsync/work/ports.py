"""What the work layer is given: the Protocols the composition root implements.

A handler works with one account at a time, through an :class:`AccountRuntime` (its
client and its store, each behind the seams Protocols the jobs take), obtained from the
worker's :class:`Fleet` while the account's lease is held.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TextIO

from ..agreement import WorkerSettings
from ..clock import Clock
from ..jobs import RunContext
from ..overview import AccountStatus
from ..report import RunReport
from ..seams import FailureLog, IntegrityStore, Metadata, OrderSink, OrderSource, RetryPolicy


class Breaker(Protocol):
    """The state of an account's circuit breaker."""

    @property
    def retry_at(self) -> float: ...  # monotonic time requests may go again; 0: they may

    @property
    def reason(self) -> str: ...

    @property
    def cooldown_s(self) -> float: ...  # how long it stays open once Tiny is taken for down


class TinySide(OrderSource, Protocol):
    """An account's Tiny client, as a unit sees it."""

    async def keep_alive(self) -> bool: ...

    @property
    def breaker(self) -> Breaker: ...


class RunLog(Protocol):
    """The run history of an account."""

    async def record(self, report: RunReport, *, invoked_as: str) -> int: ...


class StoreSide(Protocol):
    """An account's part of the database, as a unit sees it."""

    @property
    def orders(self) -> OrderSink: ...

    @property
    def metadata(self) -> Metadata: ...

    @property
    def failures(self) -> FailureLog: ...

    @property
    def integrity(self) -> IntegrityStore: ...

    @property
    def runs(self) -> RunLog: ...

    async def ping(self) -> None: ...

    async def status(self, now: dt.datetime, policy: RetryPolicy) -> AccountStatus: ...


class AccountRuntime(Protocol):
    """One account's client and store (``runtime.Runtime``)."""

    @property
    def account(self) -> str: ...

    @property
    def client(self) -> TinySide: ...

    @property
    def store(self) -> StoreSide: ...

    def context(
        self, stop: asyncio.Event, *, progress: TextIO | None = None, clock: Clock = ...
    ) -> RunContext: ...


class Leased(Protocol):
    """An account while this worker holds its lease."""

    @property
    def runtime(self) -> AccountRuntime: ...

    @property
    def lost(self) -> asyncio.Event: ...  # set when the lease was lost: drain and stop


class Fleet(Protocol):
    """The accounts of one worker process."""

    @property
    def name(self) -> str: ...  # the worker, as run history and lock holders name it

    def lease(self, account: str, *, wait: bool = True) -> AbstractAsyncContextManager[Leased]:
        """Hold ``account``'s lease (AccountBusy when another process holds it); units of
        one account in this process take turns, on one shared runtime (without ``wait``,
        AccountBusy instead of waiting for the turn)."""
        ...

    async def serves(self, account: str) -> bool:
        """Whether ``account`` is still one to work for (enabled, not removed)."""
        ...

    async def disabled(self, account: str) -> bool:
        """Whether ``account`` is in the accounts table, disabled (it may come back)."""
        ...

    async def plan(self) -> list[tuple[str, dt.datetime | None]]:
        """Every account to work for, with the start of its last finished integrity check."""
        ...

    async def single(self) -> bool:
        """A single-account install (no accounts table row since this worker started;
        once the table has had one, an emptied table is no such install: nothing is
        served): a refused authorization stops the worker, as it stopped serve."""
        ...

    async def ping(self) -> None: ...

    def breaker(self, account: str) -> Breaker | None:
        """``account``'s circuit as this worker keeps it between units (``None``: no unit
        of the account ran here yet)."""
        ...

    def runs(self, account: str) -> RunLog:
        """``account``'s run history, for a unit that could not start here (no runtime:
        a secret this worker cannot read)."""
        ...

    async def reinstall(self) -> None:
        """Apply the schema and the work queue's tables again (idempotent): a database
        that was away may come back restored, or created again empty."""
        ...

    async def statuses(self, now: dt.datetime) -> list[AccountStatus]:
        """What the gauges show of the accounts this worker serves (the one account of a
        single-account install, else every enabled account: the database's word, the
        same on every worker, whichever of them ran the account last)."""
        ...

    async def settings(self, own: WorkerSettings) -> list[WorkerSettings]:
        """Record ``own`` (this worker's settings that every worker must share) as seen
        now, and return those of every worker seen lately (``agreement.SEEN_WITHIN_S``)."""
        ...
