"""The one owner of the database: every SQL statement, the pool, COPY, merges,
checkpoints, tokens and locks live in this wing, and nothing outside it runs SQL.

* :func:`open_database` resolves the DSN (the embedded PostgreSQL when there is none),
  opens the pool and applies ``schema.sql``; it yields a :class:`Database`.
* :meth:`Database.account` gives the :class:`AccountStore` of one Tiny account: the
  objects that implement the Protocols of :mod:`asyncsync.seams` for that account.

Modules: ``database`` (connection, SQL files), ``embedded`` (the embedded server),
``postmaster`` (whether its ``postmaster.pid`` names its postmaster),
``orders`` (the mirror and its merges), ``failures`` (``import_failures``), ``integrity``
(comparisons), ``metadata`` (cursors and checkpoints), ``tokens`` (``tiny_tokens``),
``locks`` (advisory locks), ``runs`` (``sync_runs``, the run history), ``resilience``
(errors converted where they enter, statements ridden through brief outages),
``accounts`` (the ``accounts`` table), ``queue`` (the work queue, on pgqueuer),
``leases`` (the accounts a worker holds) and ``workers`` (the settings each serve
worker runs with). Queries are ``sql/<name>.sql`` files with
their parameters in a header.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from ..clock import Clock, utcnow
from ..errors import ConfigError, DatabaseError
from ..overview import AccountStatus
from ..seams import Census, Migration, RetryPolicy
from ..status import OPEN_STATUSES
from .accounts import PgAccounts
from .database import connect_pool, foreign_tables, migrate, resolve_dsn
from .embedded import EmbeddedServer
from .failures import PgFailureLog
from .integrity import PgIntegrityStore
from .leases import Fence, Leases
from .locks import RunLockSession, account_lock, lock_holder
from .metadata import PgMetadata
from .orders import PgOrderStore
from .resilience import Reconnect, SqlRunner, guarded, within
from .runs import PgRunLog
from .sqlfiles import sql
from .tokens import PgTokenStore
from .workers import PgWorkerSettings

if TYPE_CHECKING:
    from .queue import PgWorkQueue

__all__ = ["AccountStore", "Database", "Leases", "PgAccounts", "open_database"]

log = logging.getLogger(__name__)

_OPEN = tuple(int(code) for code in OPEN_STATUSES)
#: Seconds a readiness probe waits for ``SELECT 1`` before the database counts as away.
PING_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class AccountStore:
    """Everything the mirror of one account offers, each part behind a seams Protocol."""

    account: str
    orders: PgOrderStore
    failures: PgFailureLog
    integrity: PgIntegrityStore
    metadata: PgMetadata
    tokens: PgTokenStore
    runs: PgRunLog
    _sql: SqlRunner
    _session: RunLockSession | None = None  # a one-shot run's lock, which its merges check

    def lock(
        self, purpose: str, *, wait_s: float = 0.0, stop: asyncio.Event | None = None
    ) -> AbstractAsyncContextManager[None]:
        """The account's run lock (LockBusy when another run still holds it after
        ``wait_s`` seconds; ``stop`` ends the wait)."""
        return account_lock(
            self._sql.pool, self.account, purpose, wait_s=wait_s, stop=stop, session=self._session
        )

    async def ping(self) -> None:
        """Raise DatabaseError unless the database answers within :data:`PING_TIMEOUT_S`
        (no reconnecting: a probe). Not the statement timeout: against a frozen server a
        pooled query gives up only after it, and then waits as long again for the
        cancellation to be answered while the connection goes back to the pool, so
        ``/readyz`` stayed ready through any freeze shorter than about twice the
        statement timeout (plus 5 s): four minutes at the defaults."""
        await guarded(within(self._sql.pool.fetchval(sql("ping")), PING_TIMEOUT_S),
                      "reaching the database")  # fmt: skip

    async def status(
        self, now: dt.datetime, policy: RetryPolicy, census: Census | None = None
    ) -> AccountStatus:
        """What ``asyncsync status`` and the gauges say about this account; the mirror's
        counts are ``census``'s when a run that just ended counted them."""
        last_runs, last_success = await self.runs.latest()
        if census is None:
            census = Census(
                await self.orders.counts_by_status(), await self.orders.detail_backlog_size()
            )
        return AccountStatus(
            account=self.account,
            as_of=now,
            last_runs=last_runs,
            last_success=last_success,
            last_synced_at=await self.metadata.last_synced(),
            orders_by_status=census.orders_by_status,
            detail_backlog=census.detail_backlog,
            failures=await self.failures.counts(policy),
            token=await self.tokens.ages(),
            lock_holder=await lock_holder(self._sql.pool, self.account),
        )


class Database:
    """An open pool on a database that holds the asyncsync schema."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        reconnect: Reconnect | None = None,
        run_history_days: int = 0,
        *,
        embedded: EmbeddedServer | None = None,
    ) -> None:
        self._pool = pool
        self._embedded = embedded  # the server, when it is the embedded one
        self._run_history_days = run_history_days  # 0: every run is kept
        self._sql = SqlRunner(pool, reconnect or Reconnect())
        self.registry = PgAccounts(self._sql)  # the accounts table
        self.workers = PgWorkerSettings(self._sql)  # what each serve worker runs with

    @functools.cached_property
    def queue(self) -> PgWorkQueue:
        """The work queue (pgqueuer is loaded on first use)."""
        from .queue import PgWorkQueue

        return PgWorkQueue(self._sql)

    def leases(self, name: str, idle_timeout_s: float | None = None) -> Leases:
        """The leases of one worker, on a session named ``name`` (ended by the server once
        silent for ``idle_timeout_s``)."""
        return Leases(self._pool, name, idle_timeout_s)

    @property
    def pool_size(self) -> int:
        return int(self._pool.get_max_size())

    def account(
        self,
        account: str,
        *,
        open_statuses: Sequence[int] = _OPEN,
        clock: Clock = utcnow,
        fence: Fence | None = None,
    ) -> AccountStore:
        """The stores of ``account`` (cheap: they share this pool); a worker's merges check
        ``fence`` (its lease) before they commit, a one-shot run's its run lock (:meth:`lock`)."""
        session = RunLockSession(account) if fence is None else None
        orders = PgOrderStore(self._sql, account, open_statuses, clock=clock,
                              fence=fence or session)  # fmt: skip
        failures = PgFailureLog(self._sql, account, fence or session)
        return AccountStore(
            account=account,
            orders=orders,
            failures=failures,
            integrity=PgIntegrityStore(self._sql, orders),
            metadata=PgMetadata(self._sql, account),
            tokens=PgTokenStore(self._sql, account),
            runs=PgRunLog(self._sql, account, self._run_history_days),
            _sql=self._sql,
            _session=session,
        )

    async def migrate(self, *, always: bool = False) -> Migration:
        """Apply ``schema.sql`` (idempotent), unless (or even if ``always``) this very
        ``schema.sql`` is the one the database had applied last; say what it found. A
        role without the rights to apply it is a configuration error (exit 2: a supervisor does not
        restart it every 30 s for ever)."""
        try:
            return await self._sql.run(
                "applying schema.sql", lambda: migrate(self._pool, always=always)
            )
        except DatabaseError as exc:
            if exc.sqlstate != "42501":  # insufficient_privilege
                raise
            raise ConfigError(
                f"{exc}: the database role of --database-url (DATABASE_URL) may not create "
                "or alter asyncsync's tables. Grant it CREATE on the schema (PostgreSQL 15 "
                "grants none on public to other roles) or make it the database's owner; or "
                "run `asyncsync migrate` once as the owner, after which starts that find "
                "the same schema.sql applied change nothing"
            ) from None

    async def foreign_tables(self) -> list[str]:
        """Tables by asyncsync's names that asyncsync did not create (see migrate)."""
        return await self._sql.run("reading the schema", lambda: foreign_tables(self._pool))

    async def installed(self) -> bool:
        """Whether asyncsync wrote here, whatever release's schema it applied."""
        return bool(await self._sql.fetchval("reading the schema", "schema_installed"))

    async def revive(self) -> str | None:
        """The embedded server, when this database is one and its postmaster died, started
        again: what was done, in a sentence; None when there was nothing to do (a
        ``DATABASE_URL``'s server is never touched, and one that lives, however slow or
        frozen, is waited for). DatabaseUnavailable when it could not be started: why,
        and when the next start comes."""
        return None if self._embedded is None else await self._embedded.revive()

    async def schema_present(self) -> bool:
        """Whether ``schema.sql``'s tables are there (a lookup in the catalog, no lock)."""
        return bool(await self._sql.fetchval("looking for the schema", "schema_present"))

    async def accounts(self) -> list[str]:
        """Every account the database holds runs, cursors, tokens or failures of."""
        rows = await self._sql.fetch("listing accounts", "accounts")
        return [row["account"] for row in rows]


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
    idle_in_transaction_s: float | None = None,
    reconnect_s: float = 30.0,
    staging: bool = True,
    run_history_days: int = 0,
) -> AsyncIterator[Database]:
    """Resolve the DSN (embedded when None), open a pool, apply the schema. Without
    ``staging`` its connections can read and write but not merge (no staging tables)."""
    dsn = await resolve_dsn(database_url, data_dir)
    async with connect_pool(
        dsn,
        max_size=max_size,
        application_name=application_name,
        statement_timeout_s=statement_timeout_s,
        lock_timeout_s=lock_timeout_s,
        idle_in_transaction_s=idle_in_transaction_s,
        staging=staging,
    ) as pool:
        embedded = None if database_url else EmbeddedServer(data_dir, dsn)
        database = Database(
            pool, Reconnect(within_s=reconnect_s), run_history_days, embedded=embedded
        )
        if apply_schema and await database.migrate() is Migration.UPDATED:
            log.info("schema updated from an earlier release's (schema.sql applied at start)")
        yield database
