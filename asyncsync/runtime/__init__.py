"""The composition root: opens the database, the HTTP session, tokens, limiter and client.

Modes receive a :class:`Runtime` and hand its parts to the jobs as seams Protocols; the
client and the store never see each other. An account is reached as its row of the
``accounts`` table says (:func:`account_tiny`), or, when it has none, as the flags and the
environment say (the single-account install). A worker's many accounts are in
:mod:`.fleet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager as AsyncContextManager
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import aiohttp

from ..accounts import AccountConfig, not_served
from ..client import AccountLimiter, CircuitBreaker, Refusals, TinyClient, TokenManager
from ..client.authorize import Authorization
from ..clock import Clock, utcnow
from ..errors import ConfigError, DatabaseError
from ..jobs import RunContext
from ..options import AuthorizeOptions, CommonOptions, Credentials, TinyOptions
from ..report import carry_spent
from ..seams import TokenStore, WorkQueue
from ..store import AccountStore, Database, open_database
from ..tasks import until_stopped

#: The sync_metadata key that marks an account as a ``--simulator`` demo's.
DEMO_KEY = "simulator_demo"


async def claim_for_the_run(common: CommonOptions, store: AccountStore) -> None:
    """A demo (``--simulator``) writes only into an account that is a demo's, or new:
    with DATABASE_URL still exported after a real account's setup, it replaced the
    account's refresh token (only a person can authorize again) and flagged its open
    orders, absent from the simulated world, possibly deleted. A run against Tiny takes
    the mark off: the refresh token stored from then on is a real one."""
    if not common.simulator.orders:
        await store.metadata.delete(DEMO_KEY)
        return
    if await store.metadata.get(DEMO_KEY) is not None:
        return
    if await store.tokens.load() is not None:
        where = "DATABASE_URL" if common.database.database_url else "the embedded database"
        raise ConfigError(
            f"--simulator: account {common.account!r} of {where} is a real Tiny account's "
            "(it holds a refresh token no demo stored), and the demo would write into its "
            "mirror and replace the token; unset DATABASE_URL (the embedded database), point "
            "it at a scratch database, or give another --account"
        )
    await store.metadata.set(DEMO_KEY, "true")


@dataclass(frozen=True)
class Runtime:
    """Everything a mode works with for one account, opened and closed together."""

    common: CommonOptions
    database: Database
    store: AccountStore
    client: TinyClient

    @property
    def account(self) -> str:
        return self.common.account

    def context(
        self, stop: asyncio.Event, *, progress: TextIO | None = None, clock: Clock = utcnow
    ) -> RunContext:
        """What a job of this account runs with."""
        return RunContext(
            account=self.account,
            stop=stop,
            clock=clock,
            progress=progress or sys.stderr,
            # Enough requests waiting at the limiter to keep every slot busy.
            concurrency=self.common.tiny.max_concurrency * 2,
        )


def make_client(
    session: aiohttp.ClientSession,
    account: str,
    tiny: TinyOptions,
    credentials: Credentials,
    tokens: TokenStore,
    rescue_dir: Path | None = None,
    breaker: CircuitBreaker | None = None,
    limiter: AccountLimiter | None = None,
    refusals: Refusals | None = None,
) -> TinyClient:
    """The Tiny client of one account: its own limiter and token manager, a shared session.
    ``rescue_dir`` keeps tokens the database could not take (see TokenManager); ``breaker``
    and ``limiter`` the account's circuit and pace as an earlier client left them (a
    worker's next unit), ``refusals`` what its token endpoint refused."""
    manager = TokenManager(
        session,
        tiny.token_url,
        credentials,
        tokens,
        timeout_s=tiny.request_timeout_s,
        account=account,
        rescue_dir=rescue_dir,
        refusals=refusals,
    )
    limiter = limiter or new_limiter(account, tiny)
    breaker = breaker or new_breaker(account, tiny)
    return TinyClient(
        session,
        tiny.api_base_url,
        manager,
        limiter,
        timeout_s=tiny.request_timeout_s,
        max_retries=tiny.max_retries,
        account=account,
        breaker=breaker,
        max_answer_bytes=int(tiny.max_answer_mb * 1024 * 1024),
    )


def new_limiter(account: str, tiny: TinyOptions) -> AccountLimiter:
    """A pace for ``account``'s requests that knows nothing of its quota yet."""
    return AccountLimiter(
        tiny.rate_limit_per_minute, tiny.max_concurrency, share=tiny.quota_share, account=account
    )


def new_breaker(account: str, tiny: TinyOptions) -> CircuitBreaker:
    """A closed circuit for ``account``'s requests."""
    return CircuitBreaker(tiny.breaker_failures, tiny.breaker_cooldown_s, account=account)


#: Seconds a database being opened when the run is stopped may still take: one that
#: answers by then is opened, and the run records itself interrupted; one that does not
#: is left (a hanging connection held the run for the drain deadline and more).
STOP_GRACE_S = 2.0


def database_of(
    common: CommonOptions,
    *,
    stop: asyncio.Event | None = None,
    apply_schema: bool = True,
    slots: int | None = None,
    staging: bool = True,
    idle_in_transaction_s: float | None = None,
    application_name: str = "asyncsync",
) -> AsyncContextManager[Database]:
    """The database of ``common``, its timeouts and reconnects applied (alone: for the
    modes that need no Tiny account, health and migrate); a worker running ``slots``
    units at once gets a pool sized for them; without ``staging``, one that merges
    nothing (``status`` and ``health``, which a standby can answer). A transaction idle
    for ``idle_in_transaction_s`` (default: the statement timeout) is a frozen process's:
    the server ends it. ``stop`` set while the database is being opened ends the wait
    once :data:`STOP_GRACE_S` has passed (:class:`~asyncsync.tasks.Stopped`): a first
    connection that hangs held the command for the connect timeout."""
    db = common.database
    opening = open_database(
        db.database_url,
        db.data_dir,
        apply_schema=apply_schema,
        staging=staging,
        max_size=db.pool_for(slots),
        statement_timeout_s=db.statement_timeout_s,
        lock_timeout_s=db.lock_timeout_s,
        idle_in_transaction_s=idle_in_transaction_s,
        application_name=application_name,
        reconnect_s=db.reconnect_s,
        run_history_days=db.run_history_days,
    )
    return opening if stop is None else _opened_unless_stopped(opening, stop)


async def known_account(database: Database, account: str) -> str | None:
    """Why ``account`` is not served (``disabled``, ``removed``; None: it is), or a
    ConfigError when it is in neither the accounts table (which has rows) nor the
    database's history: a mistyped ``--account``."""
    why = not_served([account], await database.registry.all()).get(account)
    if why == "removed" and account not in await database.accounts():  # never here
        raise ConfigError(
            f"--account {account!r} is not in the accounts table and nothing ran for it "
            "here (asyncsync accounts list shows its keys)"
        )
    return why


async def schema_missing(database: Database) -> str:
    """What status and health, which read only and found a table missing, say: an empty
    database, or an older release's install that no `asyncsync migrate` brought up to date
    (its run history, say, came later)."""
    foreign = await database.foreign_tables()
    if foreign:
        return (f"the database holds {', '.join(foreign)}, which asyncsync did not create: "
                "`asyncsync migrate` says what to do")  # fmt: skip
    if await database.installed():
        return ("the database's asyncsync schema is an older release's: `asyncsync migrate` "
                "brings it up to date (every mode that writes does too)")  # fmt: skip
    return ("the database has no asyncsync schema yet: nothing has run here "
            "(asyncsync migrate creates it; every mode that writes does too)")  # fmt: skip


@asynccontextmanager
async def _opened_unless_stopped(
    opening: AsyncContextManager[Database], stop: asyncio.Event
) -> AsyncIterator[Database]:
    async with contextlib.AsyncExitStack() as stack:
        yield await until_stopped(stack.enter_async_context(opening), stop, STOP_GRACE_S)


def account_tiny(tiny: TinyOptions, config: AccountConfig) -> TinyOptions:
    """``tiny`` (the pacing, retries and timeouts every account shares) reaching the
    account of ``config``."""
    return dataclasses.replace(
        tiny, api_base_url=config.api_base_url, token_url=config.token_url,
        client_id=config.client_id, client_secret=None, refresh_token=None, token_file=None,
        quota_share=config.quota_share,
    )  # fmt: skip


async def resolve_account(
    database: Database, common: CommonOptions, legacy: Credentials | ConfigError
) -> tuple[TinyOptions, Credentials]:
    """How to reach ``common.account``: its row of ``accounts`` when it has one, else the
    flags and environment (``legacy``: their credentials, or why there are none)."""
    config = await database.registry.get(common.account)
    if config is not None:
        if common.simulator.orders:  # its row, not the simulator, said where to go
            raise ConfigError(
                f"--simulator: account {common.account!r} is one of the accounts table, "
                f"reached at its own API ({config.api_base_url}), not the simulator; give "
                "another --account"
            )
        if not config.enabled:
            raise ConfigError(f"account {common.account!r} is disabled (asyncsync accounts "
                              "enable)")  # fmt: skip
        return account_tiny(common.tiny, config), config.credentials(os.environ)
    if not await database.registry.none() and common.account not in await database.accounts():
        # A key mistyped, more likely than not: the flags' account beside the table is one
        # that ran here. With credentials in the environment the typo ran, was recorded,
        # and stayed in status for good (or asked a person to authorize it, exit 4).
        raise ConfigError(
            f"--account {common.account!r} is not in the accounts table (asyncsync accounts "
            "list shows its keys) and nothing ran for it here"
            + (
                f"; the flags and environment give no account of their own either ({legacy})"
                if isinstance(legacy, ConfigError)
                else ": an account beside the table's is added to it (asyncsync accounts add)"
            )
        )
    if isinstance(legacy, ConfigError):
        raise legacy
    return common.tiny, legacy


def _legacy_credentials(common: CommonOptions) -> Credentials | ConfigError:
    try:
        return common.tiny.credentials()
    except ConfigError as exc:
        return exc


@asynccontextmanager
async def _database_for_account(
    common: CommonOptions, stop: asyncio.Event | None = None
) -> AsyncIterator[tuple[Database, TinyOptions, Credentials]]:
    """The database, and how to reach the account. When the flags and the environment
    hold no credentials and the database cannot be reached either, the missing
    credentials are what is reported (exit 2): they are the first thing to fix. ``stop``
    set while the database is being opened ends the wait (:class:`~asyncsync.tasks.Stopped`)."""
    legacy = _legacy_credentials(common)
    async with contextlib.AsyncExitStack() as stack:
        try:
            database = await stack.enter_async_context(database_of(common, stop=stop))
        except DatabaseError:
            if isinstance(legacy, ConfigError):
                raise ConfigError(f"{legacy} (the database, whose accounts table may name "
                                  "them, is unreachable too)") from None  # fmt: skip
            raise
        tiny, credentials = await resolve_account(database, common, legacy)
        yield database, tiny, credentials


@asynccontextmanager
async def open_authorization(
    common: CommonOptions, options: AuthorizeOptions, stop: asyncio.Event | None = None
) -> AsyncIterator[tuple[Authorization, RunContext, WorkQueue]]:
    """The database and an Authorization for the account's first tokens (only the app's
    client id and secret are needed), and the work queue its units wait on; ``stop`` as
    for :func:`database_of`."""
    async with (
        _database_for_account(common, stop) as (database, tiny, credentials),
        aiohttp.ClientSession() as session,
    ):
        store = database.account(common.account)
        await claim_for_the_run(common, store)
        manager = TokenManager(
            session, tiny.token_url, credentials, store.tokens,
            timeout_s=tiny.request_timeout_s, account=common.account,
        )  # fmt: skip
        authorization = Authorization(
            manager,
            auth_url=options.authorization_url(tiny.token_url),
            client_id=credentials.client_id,
            redirect_uri=options.redirect_uri,
        )
        yield authorization, RunContext(account=common.account), database.queue


@asynccontextmanager
async def open_runtime(
    common: CommonOptions,
    *,
    open_statuses: tuple[int, ...] | None = None,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[Runtime]:
    """Open database (schema applied), HTTP session and client; close them all on exit.
    ``stop`` (SIGTERM) while the database does not answer yet: :class:`~asyncsync.tasks.Stopped`
    at once, nothing having run (it waited out the drain deadline, then as long again to
    record a run that never began)."""
    async with (
        _database_for_account(common, stop) as (database, tiny, credentials),
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=tiny.max_concurrency * 2),
            raise_for_status=False,
        ) as session,
    ):
        store = (
            database.account(common.account, open_statuses=open_statuses)
            if open_statuses is not None
            else database.account(common.account)
        )
        await claim_for_the_run(common, store)
        client = make_client(
            session, common.account, tiny, credentials, store.tokens, common.database.rescue_dir
        )
        common = dataclasses.replace(common, tiny=tiny)
        try:
            yield Runtime(common=common, database=database, store=store, client=client)
        except BaseException as exc:  # the run's row counts what it sent before it failed
            carry_spent(exc, client.api_stats())
            raise
