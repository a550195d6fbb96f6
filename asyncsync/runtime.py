"""The composition root: opens the database, the HTTP session, tokens, limiter and client.

Modes receive a :class:`Runtime`; the client and the sink never see each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import asyncpg

from .client import TinyClient
from .config import Settings
from .database import open_database
from .ratelimit import AccountLimiter
from .sink import PgSink
from .tokens import TokenManager
from .tokenstore import PgTokenStore


@dataclass(frozen=True)
class Runtime:
    """Everything a mode works with, opened and closed together."""

    settings: Settings
    pool: asyncpg.Pool
    sink: PgSink
    client: TinyClient


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Open database (schema applied), HTTP session and client; close them all on exit."""
    credentials = settings.require_credentials()  # fail before starting anything
    async with (
        open_database(settings.database_url, settings.data_dir, max_size=4) as pool,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.max_concurrency * 2),
            raise_for_status=False,
        ) as session,
    ):
        tokens = TokenManager(
            session,
            settings.token_url,
            credentials,
            PgTokenStore(pool, settings.account),
            timeout_s=settings.request_timeout_s,
        )
        limiter = AccountLimiter(settings.rate_limit_per_minute, settings.max_concurrency)
        client = TinyClient(
            session,
            settings.api_base_url,
            tokens,
            limiter,
            timeout_s=settings.request_timeout_s,
            max_retries=settings.max_retries,
        )
        yield Runtime(
            settings=settings,
            pool=pool,
            sink=PgSink(pool, settings.account, settings.open_statuses),
            client=client,
        )
