"""The composition root: opens the database, the HTTP session, tokens, limiter and client.

Modes receive a :class:`Runtime` and hand its parts to the jobs as seams Protocols; the
client and the store never see each other.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager as AsyncContextManager
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TextIO

import aiohttp

from .client import AccountLimiter, CircuitBreaker, TinyClient, TokenManager
from .client.authorize import Authorization
from .clock import Clock, utcnow
from .jobs import RunContext
from .options import AuthorizeOptions, CommonOptions, Credentials, TinyOptions
from .seams import TokenStore
from .store import AccountStore, Database, open_database


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
) -> TinyClient:
    """The Tiny client of one account: its own limiter and token manager, a shared session."""
    manager = TokenManager(
        session,
        tiny.token_url,
        credentials,
        tokens,
        timeout_s=tiny.request_timeout_s,
        account=account,
    )
    limiter = AccountLimiter(
        tiny.rate_limit_per_minute, tiny.max_concurrency, share=tiny.quota_share, account=account
    )
    breaker = CircuitBreaker(tiny.breaker_failures, tiny.breaker_cooldown_s, account=account)
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


def database_of(
    common: CommonOptions, *, apply_schema: bool = True
) -> AsyncContextManager[Database]:
    """The database of ``common``, its timeouts and reconnects applied (alone: for the
    modes that need no Tiny account, health and migrate)."""
    db = common.database
    return open_database(
        db.database_url,
        db.data_dir,
        apply_schema=apply_schema,
        statement_timeout_s=db.statement_timeout_s,
        lock_timeout_s=db.lock_timeout_s,
        reconnect_s=db.reconnect_s,
    )


@asynccontextmanager
async def open_authorization(
    common: CommonOptions, options: AuthorizeOptions
) -> AsyncIterator[tuple[Authorization, RunContext]]:
    """The database and an Authorization for the account's first tokens (only the app's
    client id and secret are needed)."""
    tiny = common.tiny
    credentials = tiny.credentials()
    async with (
        database_of(common) as database,
        aiohttp.ClientSession() as session,
    ):
        store = database.account(common.account)
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
        yield authorization, RunContext(account=common.account)


@asynccontextmanager
async def open_runtime(
    common: CommonOptions, *, open_statuses: tuple[int, ...] | None = None
) -> AsyncIterator[Runtime]:
    """Open database (schema applied), HTTP session and client; close them all on exit."""
    credentials = common.tiny.credentials()  # fail before starting anything
    async with (
        database_of(common) as database,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=common.tiny.max_concurrency * 2),
            raise_for_status=False,
        ) as session,
    ):
        store = (
            database.account(common.account, open_statuses=open_statuses)
            if open_statuses is not None
            else database.account(common.account)
        )
        client = make_client(session, common.account, common.tiny, credentials, store.tokens)
        yield Runtime(common=common, database=database, store=store, client=client)
