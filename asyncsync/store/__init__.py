"""The one owner of the database: every SQL statement, the pool, COPY, merges,
checkpoints, tokens and locks live in this wing, and nothing outside it runs SQL.

* :func:`open_database` resolves the DSN (the embedded PostgreSQL when there is none),
  opens the pool and applies ``schema.sql``; it yields a :class:`Database`.
* :meth:`Database.account` gives the :class:`AccountStore` of one Tiny account: the
  objects that implement the Protocols of :mod:`asyncsync.seams` for that account.

Modules: ``database`` (connection, embedded server, SQL files), ``orders`` (the mirror
and its merges), ``failures`` (``import_failures``), ``integrity`` (comparisons),
``metadata`` (cursors and checkpoints), ``tokens`` (``tiny_tokens``), ``locks``
(advisory locks). Queries are ``sql/<name>.sql`` files with their parameters in a header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from ..clock import Clock, utcnow
from ..status import OPEN_STATUSES
from .database import connect_pool, migrate, resolve_dsn
from .failures import PgFailureLog
from .integrity import PgIntegrityStore
from .locks import account_lock
from .metadata import PgMetadata
from .orders import PgOrderStore
from .resilience import Reconnect, SqlRunner
from .tokens import PgTokenStore

__all__ = ["AccountStore", "Database", "open_database"]

_OPEN = tuple(int(code) for code in OPEN_STATUSES)


@dataclass(frozen=True)
class AccountStore:
    """Everything the mirror of one account offers, each part behind a seams Protocol."""

    account: str
    orders: PgOrderStore
    failures: PgFailureLog
    integrity: PgIntegrityStore
    metadata: PgMetadata
    tokens: PgTokenStore
    _pool: asyncpg.Pool

    def lock(self, purpose: str) -> AbstractAsyncContextManager[None]:
        """The account's run lock (LockBusy when another run holds it)."""
        return account_lock(self._pool, self.account, purpose)


class Database:
    """An open pool on a database that holds the asyncsync schema."""

    def __init__(self, pool: asyncpg.Pool, reconnect: Reconnect | None = None) -> None:
        self._pool = pool
        self._sql = SqlRunner(pool, reconnect or Reconnect())

    def account(
        self,
        account: str,
        *,
        open_statuses: Sequence[int] = _OPEN,
        clock: Clock = utcnow,
    ) -> AccountStore:
        """The stores of ``account`` (cheap: they share this pool)."""
        orders = PgOrderStore(self._sql, account, open_statuses, clock=clock)
        return AccountStore(
            account=account,
            orders=orders,
            failures=PgFailureLog(self._sql, account),
            integrity=PgIntegrityStore(self._sql, orders),
            metadata=PgMetadata(self._sql, account),
            tokens=PgTokenStore(self._sql, account),
            _pool=self._pool,
        )

    async def migrate(self) -> None:
        """Apply ``schema.sql`` (idempotent)."""
        await self._sql.run("applying schema.sql", lambda: migrate(self._pool))


@asynccontextmanager
async def open_database(
    database_url: str | None,
    data_dir: Path,
    *,
    apply_schema: bool = True,
    max_size: int = 4,
    application_name: str = "asyncsync",
    statement_timeout_s: float = 120.0,
    lock_timeout_s: float = 30.0,
    reconnect_s: float = 30.0,
) -> AsyncIterator[Database]:
    """Resolve the DSN (embedded when None), open a pool, apply the schema."""
    dsn = await resolve_dsn(database_url, data_dir)
    async with connect_pool(
        dsn,
        max_size=max_size,
        application_name=application_name,
        statement_timeout_s=statement_timeout_s,
        lock_timeout_s=lock_timeout_s,
    ) as pool:
        database = Database(pool, Reconnect(within_s=reconnect_s))
        if apply_schema:
            await database.migrate()
        yield database
