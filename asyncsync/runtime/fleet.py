"""A worker's accounts: one event loop, one HTTP session, one database pool, and one
runtime (client: limiter, breaker, token manager) per account while its lease is held.

Accounts come from the ``accounts`` table (enabled rows); when it has no row at all, the
account of the flags and environment is the only one (a single-account install runs
unchanged). A runtime is built when this process takes the account's lease and dropped
when its last unit of the account ends: the next holder, here or elsewhere, starts with
a limiter that learns the window's remaining quota from the first answer, and a token
manager that reads the newest tokens from the database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp

from ..accounts import not_served
from ..agreement import SEEN_WITHIN_S, WorkerSettings
from ..client import AccountLimiter, CircuitBreaker, Refusals
from ..errors import AccountBusy, ConfigError, DatabaseError, DatabaseUnavailable
from ..jobs.retry import DEFAULT_POLICY
from ..options import CommonOptions, Credentials, ServeOptions
from ..overview import AccountStatus
from ..store import Database, Leases
from ..work.ports import RunLog
from ..work.worker import LEASE_CHECK_S
from . import (
    Runtime,
    account_tiny,
    claim_for_the_run,
    database_of,
    make_client,
    new_breaker,
    new_limiter,
)

log = logging.getLogger(__name__)
#: The gauges of accounts another worker runs are read this often (its own, every time).
OTHERS_EVERY_S = 120.0
#: Seconds a stopping worker tries to take its row out of ``worker_settings``.
LEAVE_TIMEOUT_S = 5.0


def worker_name() -> str:
    """``asyncsync worker host:pid``: how run history and lock holders name a worker."""
    return f"asyncsync worker {socket.gethostname()}:{os.getpid()}"


@dataclass
class _Held:
    """An account this process holds: its runtime and the units using it."""

    runtime: Runtime
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    users: int = 0


@dataclass(frozen=True)
class Leased:
    """An account while this worker holds its lease (``work.ports.Leased``)."""

    runtime: Runtime
    lost: asyncio.Event


class Fleet:
    """The accounts of one worker process. Implements ``work.ports.Fleet``."""

    def __init__(
        self,
        common: CommonOptions,
        database: Database,
        session: aiohttp.ClientSession | None,
        leases: Leases,
        *,
        open_statuses: tuple[int, ...],
        pinned: Runtime | None = None,
    ) -> None:
        self._common, self._database, self._session = common, database, session
        self._leases = leases
        self._open_statuses = open_statuses
        self._pinned = pinned  # a given runtime, its account the only one (tests)
        self._held: dict[str, _Held] = {}
        self._taking = asyncio.Lock()
        self._tabled = False  # the accounts table has had rows while this worker ran
        # Each account's circuit outlives the runtime of its units: a cycle that a Tiny
        # outage ended is followed, at the cool-down's end, by one probe request, not by
        # a fresh client's burst, and /readyz's "tiny" says what the circuit says.
        self._breakers: dict[str, tuple[Hashable, CircuitBreaker]] = {}
        self._limiters: dict[str, tuple[Hashable, AccountLimiter]] = {}
        self._refusals: dict[str, tuple[Hashable, Refusals]] = {}
        # The status of accounts read lately (monotonic time of the read, the status, and
        # how many times the account's units had ended here when the read began).
        self._read: dict[str, tuple[float, AccountStatus, int]] = {}
        # How many times each account's units ended here (its lease released): a read
        # from before says what was true before they ran.
        self._ended: dict[str, int] = {}
        self.name = leases.name
        self.database = database

    async def single(self) -> bool:
        """See :meth:`asyncsync.work.ports.Fleet.single`."""
        if self._pinned is not None:
            return True
        if self._tabled:  # not the flags' account (`default`, whatever credentials it has)
            return False
        self._tabled = not await self._database.registry.none()
        return not self._tabled

    async def _legacy(self) -> str | None:
        """The account of the flags and environment, when the table has no row."""
        return self._common.account if await self.single() else None

    async def plan(self) -> list[tuple[str, dt.datetime | None]]:
        legacy = await self._legacy()
        return await self._database.registry.plan(None if legacy is None else [legacy])

    async def serves(self, account: str) -> bool:
        if self._pinned is not None:
            return account == self._pinned.account
        config = await self._database.registry.get(account)
        if config is not None:
            return config.enabled
        return account == await self._legacy()

    async def disabled(self, account: str) -> bool:
        if self._pinned is not None:
            return False
        config = await self._database.registry.get(account)
        return config is not None and not config.enabled

    async def ping(self) -> None:
        """The database answers; leases lost with their session stop their units. An
        embedded server found dead is started again (the worker owns it: nobody else
        would), and the check still fails: the next one says whether it answers."""
        try:
            await self._database.account(self._common.account).ping()
        except DatabaseError as exc:
            revived = await self._database.revive()  # DatabaseUnavailable: it could not be
            if revived is None:
                raise
            raise DatabaseUnavailable(revived) from exc
        for account in await self._leases.check():
            held = self._held.get(account)
            if held is not None:
                held.lost.set()
        if self._leases.silence is not None:
            # The server answers, not the session holding the leases: the accounts it
            # held stay locked by it until the next session ends it (or it wakes up).
            raise DatabaseUnavailable(self._leases.silence)
        await self._stop_unserved()

    async def _stop_unserved(self) -> None:
        """The units of held accounts disabled or removed meanwhile stop as a lost lease's
        do (merging what they have): a first sync of hours ran to its end otherwise, on the
        quota of an account the operator had stopped."""
        if self._pinned is not None or not self._held:
            return
        for account, why in not_served(self._held, await self._database.registry.all()).items():
            held = self._held.get(account)  # the await may have let it go meanwhile
            if held is not None and not held.lost.is_set():
                log.info("account %s was %s: its units here stop", account, why)
                held.lost.set()

    async def reinstall(self) -> None:
        # Only a database back without the schema (created anew, restored from nothing):
        # applied again each time, schema.sql waited for every merge in flight on the
        # other workers (CREATE INDEX IF NOT EXISTS takes a SHARE lock on the table), held
        # back their next writes, and its lock timeout was taken for the outage again.
        # Missing tables are applied whatever the fingerprint says (a restore may bring
        # asyncsync_schema back without the tables it speaks for).
        if not await self._database.schema_present():
            await self._database.migrate(always=True)
        await self._database.queue.install(again=True)

    async def settings(self, own: WorkerSettings) -> list[WorkerSettings]:
        await self._database.workers.say(own)
        return await self._database.workers.seen(SEEN_WITHIN_S)

    def runs(self, account: str) -> RunLog:
        return self._database.account(account).runs

    def breaker(self, account: str) -> CircuitBreaker | None:
        if self._pinned is not None:
            return self._pinned.client.breaker if account == self._pinned.account else None
        kept = self._breakers.get(account)
        return None if kept is None else kept[1]

    async def statuses(self, now: dt.datetime) -> list[AccountStatus]:
        if await self.single():
            accounts = [self._pinned.account if self._pinned else self._common.account]
        else:
            # Every account served, not only those held now: an account's units go to
            # whichever worker picks them, and a worker that held it an hour ago would
            # say what it saw then (an hour-old success, a token since authorized again).
            accounts = [key for key, _ in await self._database.registry.plan(None)]
        statuses = []
        for account in accounts:
            # Those held here are read every time, their orders counted (a first sync's
            # progress); the others once per OTHERS_EVERY_S, their orders as the last sync
            # counted them (counting costs ~60 ms an account of 100,000 orders: 12 s for
            # 200, on every worker).
            # A read from before the account's last unit here ended is read again: kept,
            # it said for two minutes what was true before that unit (a first sync's
            # "never synced", its orders uncounted) after the unit had said otherwise.
            held = account in self._held
            ended = self._ended.get(account, 0)
            read = self._read.get(account)
            if (
                read is None
                or held
                or read[2] != ended
                or time.monotonic() - read[0] >= OTHERS_EVERY_S
            ):
                store = self._database.account(account)
                census = None if held else await store.runs.census()
                status = await store.status(now, DEFAULT_POLICY, census)
                read = self._read[account] = (time.monotonic(), status, ended)
            statuses.append(read[1])
        for gone in set(self._read) - set(accounts):
            del self._read[gone]
        return statuses

    @asynccontextmanager
    async def lease(self, account: str, *, wait: bool = True) -> AsyncIterator[Leased]:
        held = await self._hold(account, wait=wait)
        try:
            async with held.turn:
                yield Leased(held.runtime, held.lost)
        finally:
            held.users -= 1
            if held.users == 0:
                del self._held[account]
                self._ended[account] = self._ended.get(account, 0) + 1
                await self._leases.release(account)

    async def _hold(self, account: str, *, wait: bool = True) -> _Held:
        async with self._taking:
            held = self._held.get(account)
            if held is not None and not wait:
                # Another unit of the account runs here: this one would wait for its turn
                # in a slot (a background slot, shared by every account and worker).
                raise AccountBusy(f"account {account!r} is running another unit here",
                                  holder=f"{self.name} (another unit)", here=True)  # fmt: skip
            if held is not None and held.lost.is_set():
                # Its units are stopping; once they are gone the next one leases again.
                raise AccountBusy(f"account {account!r} lost its lease; its units are stopping",
                                  holder="nobody (a lease lost with its session)")  # fmt: skip
            if held is None:
                holder = await self._leases.take(account)
                if holder is not None:
                    raise AccountBusy(f"account {account!r} is held by {holder}", holder=holder)
                try:
                    held = _Held(await self._runtime(account))
                except BaseException:
                    await self._leases.release(account)
                    raise
                self._held[account] = held
            held.users += 1
            return held

    async def _runtime(self, account: str) -> Runtime:
        if self._pinned is not None:
            return self._pinned
        assert self._session is not None
        config = await self._database.registry.get(account)
        common = self._common
        if config is None:  # the single-account install
            tiny, credentials = common.tiny, common.tiny.credentials()
        else:
            tiny = account_tiny(common.tiny, config)
            credentials = config.credentials(os.environ)
        store = self._database.account(
            account, open_statuses=self._open_statuses, fence=self._leases.fence(account)
        )
        await claim_for_the_run(common, store)
        # Whether Tiny is down, the quota it announced and what is left of its window
        # outlive a unit: a new limiter's first request goes out blind (a 429, when the
        # unit before spent the window). New ones when the account's row points at
        # another API, and a new limiter when its pacing settings changed.
        where = tiny.api_base_url
        breaker = _kept(self._breakers, account, where, lambda: new_breaker(account, tiny))
        shape = (where, tiny.rate_limit_per_minute, tiny.max_concurrency, tiny.quota_share)
        limiter = _kept(self._limiters, account, shape, lambda: new_limiter(account, tiny))
        # A refresh token its token endpoint refused is not presented again by each unit.
        app = (tiny.token_url, credentials.client_id)
        refusals = _kept(self._refusals, account, app, Refusals)
        client = make_client(
            self._session, account, tiny, credentials, store.tokens, common.database.rescue_dir,
            breaker, limiter, refusals,
        )  # fmt: skip
        runtime_common = CommonOptions(
            account=account, database=common.database, tiny=tiny,
            simulator=common.simulator, output=common.output, run=common.run,
        )  # fmt: skip
        return Runtime(common=runtime_common, database=self._database, store=store, client=client)


T = TypeVar("T")


def _kept(kept: dict[str, tuple[Hashable, T]], account: str, key: Hashable,
          make: Callable[[], T]) -> T:  # fmt: skip
    """``account``'s object in ``kept`` if it was made for ``key``; else a new one from
    ``make``, kept for ``key``."""
    held = kept.get(account)
    if held is None or held[0] != key:
        held = kept[account] = (key, make())
    return held[1]


@asynccontextmanager
async def open_fleet(common: CommonOptions, options: ServeOptions) -> AsyncIterator[Fleet]:
    """The database (a pool sized for ``options.slots``), one HTTP session every account
    shares, the worker's leases, and its fleet."""
    # Silent as long as a unit's heartbeat may be (the queue hands the units to another
    # worker then), the lease session ends too; the worker pings it every few seconds. A
    # transaction of its units idle that long ends as well: a worker frozen mid-merge
    # would otherwise keep the rows it wrote locked, and the worker its account went to
    # could merge none of them (nor could a worker starting apply schema.sql).
    silent_s = max(options.heartbeat_s, 2 * LEASE_CHECK_S)
    name = worker_name()  # every session of the worker says whose it is (pg_stat_activity)
    async with AsyncExitStack() as stack:
        database = await stack.enter_async_context(
            database_of(
                common, slots=options.slots, idle_in_transaction_s=silent_s, application_name=name
            )
        )
        if await database.registry.none():
            _check_legacy(common)
            await claim_for_the_run(common, database.account(common.account))
        elif common.simulator.orders:  # the rows, not the simulator, say where to go
            raise ConfigError("--simulator: the accounts table has rows, served at their "
                              "own APIs, not the simulator; demo in another database")  # fmt: skip
        connector = aiohttp.TCPConnector(
            limit=max(100, options.slots * common.tiny.max_concurrency)
        )
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=connector, raise_for_status=False)
        )
        leases = await stack.enter_async_context(database.leases(name, silent_s))
        yield Fleet(common, database, session, leases,
                    open_statuses=options.cycle.open_statuses)  # fmt: skip
        # Stopped, it no longer counts among the workers others compare their settings
        # with (a rolling restart that fixes them warned of the old ones for two minutes).
        # Best effort, briefly: a database away forgets it two minutes after its last word.
        with suppress(DatabaseError, TimeoutError):
            async with asyncio.timeout(LEAVE_TIMEOUT_S):
                await database.workers.forget(name)


@asynccontextmanager
async def pinned_fleet(rt: Runtime, options: ServeOptions) -> AsyncIterator[Fleet]:
    """A fleet whose one account is ``rt``'s, on its runtime (tests drive the worker
    this way, watching the client they built)."""
    async with rt.database.leases(worker_name()) as leases:
        yield Fleet(rt.common, rt.database, None, leases,
                    open_statuses=options.cycle.open_statuses, pinned=rt)  # fmt: skip


def _check_legacy(common: CommonOptions) -> Credentials:
    """With no account in the table, the flags and environment must name one."""
    try:
        return common.tiny.credentials()
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or add accounts: asyncsync accounts add)") from None
