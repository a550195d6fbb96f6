"""A worker's leases: the accounts it is working for, each one's run lock held on one
dedicated session.

An account's units run in one process at a time, so one limiter paces its quota and one
token manager spends its refresh tokens. The lease is the account's run lock
(``asyncsync.run:<account>``, :mod:`.locks`): a one-shot ``sync`` or ``backfill`` of the
account and a worker exclude each other exactly as they did with ``serve``, and
``asyncsync status`` names the worker that holds it. A worker may lease hundreds of
accounts, so every lock sits on the same connection instead of one each; when that
session dies the locks die with it, which :meth:`Leases.check` reports as the accounts
lost. A worker frozen rather than dead (SIGSTOP, a paused container, an event loop stuck)
keeps its session open, so the session ends once it has been silent for
``idle_timeout_s`` (a live worker pings it every few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from types import TracebackType

import asyncpg

from ..errors import DatabaseUnavailable, LeaseLost
from .locks import run_lock_name
from .resilience import CAUGHT, classify
from .sqlfiles import sql

log = logging.getLogger(__name__)

#: Without a lease silence bound, a worker's transactions this old while it holds no
#: lease are a frozen worker's (see lease_reap.sql).
REAP_AFTER_S = 10.0


class Leases:
    """The run locks one worker holds, on one session named after the worker."""

    def __init__(self, pool: asyncpg.Pool, name: str, idle_timeout_s: float | None = None) -> None:
        self._pool = pool
        self.name = name  # the session's application_name: who holds the account
        self._idle_timeout_s = idle_timeout_s
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the session
        self.held: set[str] = set()
        self._dropped: set[str] = set()  # lost with a dead session, not yet reported

    async def __aenter__(self) -> Leases:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            self.held.clear()
            if conn is not None:
                # The pool resets a connection it takes back, unlocking every lock on it.
                try:
                    await asyncio.shield(self._pool.release(conn))
                except CAUGHT:
                    conn.terminate()

    async def _session(self) -> asyncpg.Connection:
        if self._conn is None:
            conn = await self._pool.acquire()
            try:
                await conn.execute(sql("set_application_name"), self.name)
                if self._idle_timeout_s:
                    try:
                        await conn.execute(sql("set_idle_session_timeout"),
                                           f"{int(self._idle_timeout_s * 1000)}ms")  # fmt: skip
                    except asyncpg.UndefinedObjectError:  # before PostgreSQL 14
                        log.debug("this server has no idle_session_timeout")
            except BaseException:
                # Not the session yet: back to the pool, or each failed set-up kept one
                # connection for good and the worker ran out of them.
                try:
                    await asyncio.shield(self._pool.release(conn))
                except CAUGHT:
                    conn.terminate()
                raise
            self._conn = conn
        return self._conn

    async def _lost(self, exc: BaseException, what: str) -> DatabaseUnavailable:
        """The session failed: its locks are gone. Returns the error to raise."""
        conn, self._conn = self._conn, None
        self._dropped |= self.held  # for the next check() to report, whoever noticed first
        self.held.clear()
        if conn is not None:
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
            # Given back, the pool replaces the dead connection.
            with contextlib.suppress(*CAUGHT):
                await self._pool.release(conn)
        error = classify(exc, what)
        return error if isinstance(error, DatabaseUnavailable) else DatabaseUnavailable(str(error))

    async def take(self, account: str) -> str | None:
        """Lease ``account``; None when taken, else the name of the session that holds it
        (another worker, or a one-shot run)."""
        name = run_lock_name(account)
        async with self._lock:
            if account in self.held:
                return None
            try:
                conn = await self._session()
                if await conn.fetchval(sql("lock_try"), name):
                    self.held.add(account)
                    # Leased again (its units that lost it have all ended, or it would not
                    # be taken anew): the old loss is not this lease's, and reported at the
                    # next check it stopped a unit of the new one.
                    self._dropped.discard(account)
                    await self._reap(conn)
                    return None
                holder = await conn.fetchval(sql("lock_holder"), name)
            except CAUGHT as exc:
                raise await self._lost(exc, f"leasing account {account}") from exc
        return str(holder or "another asyncsync process")

    async def _reap(self, conn: asyncpg.Connection) -> None:
        """End the writing transactions of workers that lost their leases (frozen: see
        lease_reap.sql), whose locks would stall the merges of the account just taken."""
        try:
            older = dt.timedelta(seconds=self._idle_timeout_s or REAP_AFTER_S)
            ended = await conn.fetchval(sql("lease_reap"), older)
        except asyncpg.InsufficientPrivilegeError as exc:  # workers running as other roles
            log.debug("cannot end another worker's transactions: %s", exc)
            return
        if ended:
            log.warning("ended %d transactions of workers that lost their leases (frozen?): "
                        "their locks would stall this worker's merges", ended)  # fmt: skip

    async def release(self, account: str) -> None:
        """Give ``account`` back (nothing to do if the session is gone: so is the lock)."""
        async with self._lock:
            if account not in self.held or self._conn is None:
                return
            self.held.discard(account)
            try:
                await asyncio.shield(
                    self._conn.execute(sql("lock_release"), run_lock_name(account))
                )
            except CAUGHT as exc:
                log.warning("lost the lease session while releasing %s: %s", account, exc)
                await self._lost(exc, "releasing a lease")

    def session_pid(self, account: str) -> int | None:
        """The backend pid of the session holding ``account``'s lease, if one does."""
        conn = self._conn
        if account not in self.held or conn is None:
            return None
        try:
            return None if conn.is_closed() else int(conn.get_server_pid())
        except asyncpg.InterfaceError:  # the pool took a dead session back
            return None

    def fence(self, account: str) -> Fence:
        """What a merge of ``account`` checks inside its transaction: that this session
        still holds the lease (see :class:`Fence`)."""
        return Fence(self, account)

    async def check(self) -> set[str]:
        """Ping the session; returns the accounts whose lease was lost with it since the
        last check (also when a take or a release met the dead session first)."""
        async with self._lock:
            # Also with nothing held: silent for ``idle_timeout_s``, the session would end.
            if self._conn is not None:
                try:
                    await self._conn.fetchval(sql("ping"))
                except CAUGHT as exc:
                    await self._lost(exc, "checking the leases")
            lost, self._dropped = self._dropped, set()
        if lost:
            log.warning("the lease session is gone: %d accounts lost (%s)",
                        len(lost), ", ".join(sorted(lost)))  # fmt: skip
        return lost


class Fence:
    """Checked by every merge of an account inside its transaction: the lease session of
    the worker still holds the account's run lock. A worker frozen (SIGSTOP, a paused
    container) past its heartbeat timeout loses its lease session, its open transaction,
    and its units to another worker; woken, it would go on merging the pages it had
    fetched for up to a lease check (5 s) beside the worker that took over — each writing
    the same status change into the history, read from a mirror neither had committed.
    Its first merge now finds the lock gone, and writes nothing."""

    def __init__(self, leases: Leases, account: str) -> None:
        self._leases = leases
        self._name = run_lock_name(account)
        self.account = account

    async def check(self, conn: asyncpg.Connection) -> None:
        """Raise :class:`LeaseLost` unless the lease session holds the account's lock."""
        pid = self._leases.session_pid(self.account)
        if pid is not None and await conn.fetchval(sql("lease_held"), pid, self._name):
            return
        raise LeaseLost(
            f"account {self.account}: this worker's lease ended (silent past its heartbeat "
            "timeout); another worker may hold the account, so this merge writes nothing"
        )
