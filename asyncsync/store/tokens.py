"""The token store in PostgreSQL: the newest tokens of an account, shared by processes.

Refresh tokens rotate, so whoever refreshes must hold :meth:`PgTokenStore.exclusive`
(a session advisory lock on a dedicated connection) and re-read the row first.

Inside that section the row is read and written on the locked connection itself: a
refresh holds one connection, never waits for a second. A worker refreshing the tokens of
many accounts at once would otherwise fill its pool with lock holders, each waiting for a
connection to read its row: a deadlock.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from ..overview import TokenAges
from ..seams import TokenSet
from .locks import advisory_lock
from .resilience import SqlRunner, guarded
from .sqlfiles import sql

#: The connection holding the token lock, in the task (and its shielded children) that
#: holds it; other tasks of the account use the pool.
_LOCKED: contextvars.ContextVar[asyncpg.Connection | None] = contextvars.ContextVar(
    "asyncsync_token_lock", default=None
)


class PgTokenStore:
    """``tiny_tokens`` row of one account. Implements ``TokenStore``."""

    def __init__(self, sql: SqlRunner, account: str) -> None:
        self._sql = sql
        self._account = account

    async def load(self) -> TokenSet | None:
        locked = _LOCKED.get()
        if locked is not None:
            row: Any = await guarded(_call(locked.fetchrow, sql("token_load"), self._account),
                                     "reading tokens")  # fmt: skip
        else:
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
        args = (
            self._account,
            tokens.refresh_token,
            tokens.access_token,
            tokens.access_expires_at,
            tokens.access_issued_at,
            tokens.refresh_expires_at,
        )
        locked = _LOCKED.get()
        if locked is not None:
            await guarded(_call(locked.execute, sql("token_save"), *args), "saving tokens")
        else:
            await self._sql.execute("saving tokens", "token_save", *args)

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        name = f"asyncsync.token:{self._account}"
        async with advisory_lock(self._sql.pool, name, wait=True) as conn:
            reset = _LOCKED.set(conn)
            try:
                yield
            finally:
                _LOCKED.reset(reset)


async def _call(method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``await method(*args)``, the call itself inside the await: a connection released
    meanwhile raises when called, and :func:`guarded` must see that error too."""
    return await method(*args)
