"""The token store in PostgreSQL: the newest tokens of an account, shared by processes.

Refresh tokens rotate, so whoever refreshes must hold :meth:`PgTokenStore.exclusive`
(a session advisory lock on a dedicated connection) and re-read the row first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..overview import TokenAges
from ..seams import TokenSet
from .locks import advisory_lock
from .resilience import SqlRunner


class PgTokenStore:
    """``tiny_tokens`` row of one account. Implements ``TokenStore``."""

    def __init__(self, sql: SqlRunner, account: str) -> None:
        self._sql = sql
        self._account = account

    async def load(self) -> TokenSet | None:
        row = await self._sql.fetchrow("reading tokens", "token_load", self._account)
        if row is None:
            return None
        return TokenSet(
            refresh_token=row["refresh_token"],
            access_token=row["access_token"],
            access_expires_at=row["access_expires_at"],
            access_issued_at=row["access_issued_at"],
            refresh_expires_at=row["refresh_expires_at"],
        )

    async def ages(self) -> TokenAges | None:
        """When the tokens were last refreshed and when the access token expires (no secret
        leaves the database)."""
        row = await self._sql.fetchrow("reading token ages", "token_ages", self._account)
        return None if row is None else TokenAges(row["updated_at"], row["access_expires_at"])

    async def save(self, tokens: TokenSet) -> None:
        await self._sql.execute(
            "saving tokens",
            "token_save",
            self._account,
            tokens.refresh_token,
            tokens.access_token,
            tokens.access_expires_at,
            tokens.access_issued_at,
            tokens.refresh_expires_at,
        )

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with advisory_lock(self._sql.pool, f"asyncsync.token:{self._account}", wait=True):
            yield
