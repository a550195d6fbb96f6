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
from collections.abc import Awaitable
from types import TracebackType
from typing import TypeVar

import asyncpg

from ..errors import DatabaseUnavailable, LeaseLost
from .locks import run_lock_name
from .resilience import CAUGHT, classify, within
from .sqlfiles import sql

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Without a lease silence bound, a worker's transactions this old while it holds no
#: lease are a frozen worker's (see lease_reap.sql).
REAP_AFTER_S = 10.0
#: Seconds a statement of the lease session may take (a ping, a lock taken or given
#: back: each answered in milliseconds) before the session counts as lost. A session
#: whose backend stopped answering (frozen, or its connection cut off without a reset)
#: held up every take, release and check behind it for the statement timeout and 5 s:
#: the worker ran no unit of any account for two minutes at the defaults, ready all along.
SESSION_TIMEOUT_S = 5.0


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
        # The backend of a session dropped for its silence: it keeps its locks until it is
        # ended (by the next session) or wakes up; and what the worker's readiness says
        # meanwhile.
        self._silent_pid: int | None = None
        self._ending_pid: int | None = None  # ended by the next session, perhaps not gone yet
        self.silence: str | None = None

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
            await self._end_silent(conn)
        return self._conn

    async def _end_silent(self, conn: asyncpg.Connection) -> None:
        """End the former session dropped for its silence, which holds its locks still."""
        pid, self._silent_pid = self._silent_pid, None
        if pid is None:
            return
        self._ending_pid = pid
        self.silence = (f"the lease session (backend {pid}) stopped answering and holds its "
                        "accounts' run locks until it ends")  # fmt: skip
        try:
            ended = await _ask(conn.fetchval(sql("lease_end_silent"), pid, self.name))
        except asyncpg.InsufficientPrivilegeError as exc:
            log.warning("cannot end the silent lease session %d: %s", pid, exc)
            return
        if ended:
            log.warning("ended this worker's former lease session %d, which stopped "
                        "answering: its run locks go with it (a frozen backend once it "
                        "wakes up)", pid)  # fmt: skip

    async def _still_silent(self, conn: asyncpg.Connection) -> None:
        """Clear :attr:`silence` once the silent session's backend is gone."""
        pid = self._ending_pid
        if pid is not None and await _ask(conn.fetchval(sql("lease_session_alive"), pid)):
            return
        self._ending_pid, self.silence = None, None

    async def _lost(self, exc: BaseException, what: str) -> DatabaseUnavailable:
        """The session failed: its locks are gone (or, when it fell silent, held by a
        backend that no longer answers: ended by the next session). Returns the error."""
        conn, self._conn = self._conn, None
        if isinstance(exc, _Silent) and conn is not None:
            with contextlib.suppress(asyncpg.InterfaceError):
                self._silent_pid = int(conn.get_server_pid())
        self._dropped |= self.held  # for the next check() to report, whoever noticed first
        self.held.clear()
        if conn is not None:
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
            # Given back, the pool replaces the dead connection.
            with contextlib.suppress(*CAUGHT):
                await self._pool.release(conn)
        error = classify(exc, what)
        if not isinstance(error, DatabaseUnavailable):
            error = DatabaseUnavailable(str(error))
        if isinstance(exc, _Silent):
            self.silence = str(error)
        return error

    async def take(self, account: str) -> str | None:
        """Lease ``account``; None when taken, else the name of the session that holds it
        (another worker, or a one-shot run)."""
        name = run_lock_name(account)
        async with self._lock:
            if account in self.held:
                return None
            try:
                conn = await self._session()
                if await _ask(conn.fetchval(sql("lock_try"), name)):
                    self.held.add(account)
                    # Leased again (its units that lost it have all ended, or it would not
                    # be taken anew): the old loss is not this lease's, and reported at the
                    # next check it stopped a unit of the new one.
                    self._dropped.discard(account)
                    await self._reap(conn)
                    return None
                holder = await _ask(conn.fetchval(sql("lock_holder"), name))
            except CAUGHT as exc:
                raise await self._lost(exc, f"leasing account {account}") from exc
        return str(holder or "another asyncsync process")

    async def _reap(self, conn: asyncpg.Connection) -> None:
        """End the writing transactions of workers that lost their leases (frozen: see
        lease_reap.sql), whose locks would stall the merges of the account just taken."""
        try:
            older = dt.timedelta(seconds=self._idle_timeout_s or REAP_AFTER_S)
            ended = await _ask(conn.fetchval(sql("lease_reap"), older))
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
                await _ask(self._conn.execute(sql("lock_release"), run_lock_name(account)))
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
            try:
                if self._conn is None and self._silent_pid is not None:
                    await self._session()  # a new session ends the silent one
                if self._conn is not None:
                    await _ask(self._conn.fetchval(sql("ping")))
                    await self._still_silent(self._conn)
            except CAUGHT as exc:
                await self._lost(exc, "checking the leases")
            lost, self._dropped = self._dropped, set()
        if lost:
            log.warning("the lease session is gone: %d accounts lost (%s)",
                        len(lost), ", ".join(sorted(lost)))  # fmt: skip
        return lost


class _Silent(TimeoutError):
    """A statement of the lease session got no answer within :data:`SESSION_TIMEOUT_S`."""


async def _ask(statement: Awaitable[T]) -> T:
    """``await statement`` (on the lease session), given up after SESSION_TIMEOUT_S: the
    caller drops the session (terminating its connection ends the statement)."""
    try:
        return await within(statement, SESSION_TIMEOUT_S)
    except TimeoutError:
        raise _Silent(
            f"the lease session did not answer within {SESSION_TIMEOUT_S:.0f} s"
        ) from None


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
            f"account {self.account}: this worker's lease ended (its session was cut, or "
            "silent past its heartbeat timeout); another worker may hold the account, so "
            "this merge writes nothing"
        )
