"""The token store in PostgreSQL: the newest tokens of an account, shared by processes.

Refresh tokens rotate, so whoever refreshes must hold :meth:`PgTokenStore.exclusive`
(a session advisory lock on a dedicated connection) and re-read the row first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from ..overview import TokenAges
from ..seams import TokenSet
from .database import guarded, sql
from .locks import advisory_lock


class PgTokenStore:
    """``tiny_tokens`` row of one account. Implements ``TokenStore``."""

    def __init__(self, pool: asyncpg.Pool, account: str) -> None:
        self._pool = pool
        self._account = account

    async def load(self) -> TokenSet | None:
        row = await guarded(self._pool.fetchrow(sql("token_load"), self._account), "reading tokens")
        if row is None:
            return None
        return TokenSet(
            refresh_token=row["refresh_token"],
            access_token=row["access_token"],
            access_expires_at=row["access_expires_at"],
        )

    async def ages(self) -> TokenAges | None:
        """When the tokens were last refreshed and when the access token expires (no secret
        leaves the database)."""
        query = self._pool.fetchrow(sql("token_ages"), self._account)
        row = await guarded(query, "reading token ages")
        return None if row is None else TokenAges(row["updated_at"], row["access_expires_at"])

    async def save(self, tokens: TokenSet) -> None:
        query = self._pool.execute(
            sql("token_save"),
            self._account,
            tokens.refresh_token,
            tokens.access_token,
            tokens.access_expires_at,
        )
        await guarded(query, "saving tokens")

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with advisory_lock(self._pool, f"asyncsync.token:{self._account}", wait=True):
            yield
