"""PostgreSQL session advisory locks: one run per account, one token refresh at a time.

A backfill and an incremental sync of the same account must never interleave their
merges (history rows would race), and a second backfill started by mistake must say
so and exit rather than queue behind the first. The lock lives on a connection held for
the duration; if that connection dies the lock is gone with it, so releasing never
raises: a broken connection is terminated instead of being handed back to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Protocol

import asyncpg

from ..errors import DatabaseError, DatabaseUnavailable, LockBusy
from .database import guarded, sql
from .resilience import CAUGHT

log = logging.getLogger(__name__)


@asynccontextmanager
async def advisory_lock(
    pool: asyncpg.Pool,
    name: str,
    *,
    wait: bool,
    purpose: str | None = None,
    busy: str = "{holder} holds it",
) -> AsyncIterator[asyncpg.Connection]:
    """Hold the advisory lock ``name`` on a pooled connection for the duration.

    With ``wait`` it queues behind the holder; without, it raises LockBusy with ``busy``
    (``{holder}`` is the holder's ``application_name``). ``purpose`` names this session
    while it holds the lock.
    """
    conn: asyncpg.Connection = await guarded(pool.acquire(), f"connecting to take {name}")
    try:
        if wait:
            await guarded(conn.execute(sql("lock_wait"), name), f"taking {name}")
        elif not await guarded(conn.fetchval(sql("lock_try"), name), f"taking {name}"):
            holder = await guarded(conn.fetchval(sql("lock_holder"), name), "naming the holder")
            raise LockBusy(busy.format(holder=holder or "another asyncsync process"))
        if purpose is not None:
            await guarded(conn.execute(sql("set_application_name"), purpose), "naming the session")
        try:
            yield conn
        finally:
            await _unlock(conn, name, renamed=purpose is not None)
    finally:
        await _release(pool, conn)


async def _unlock(conn: asyncpg.Connection, name: str, *, renamed: bool) -> None:
    if _gone(conn):  # its session ended (a restart, a cut): the lock went with it
        log.debug("%s went with its session: nothing to release", name)
        return
    try:
        await asyncio.shield(conn.execute(sql("lock_release"), name))
        if renamed:
            await asyncio.shield(conn.execute(sql("reset_application_name")))
    except CAUGHT as exc:
        # The session is gone, and its locks with it; the pool must not reuse it.
        log.warning("could not release %s cleanly (%s): dropping the connection", name, exc)
        with contextlib.suppress(asyncpg.InterfaceError):  # already taken back by the pool
            conn.terminate()


async def _release(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    try:
        await asyncio.shield(pool.release(conn))
    except CAUGHT as exc:
        log.warning("dropping a broken database connection: %s", exc)
        with contextlib.suppress(Exception):
            conn.terminate()


#: How often a run waiting for the account's lock (``--wait-lock``) tries again, seconds.
LOCK_POLL_S = 1.0


def run_lock_name(account: str) -> str:
    return f"asyncsync.run:{account}"


#: How often a run checks that the session holding its lock is still there, seconds (the
#: check also keeps that otherwise idle session from an ``idle_session_timeout``).
LOCK_CHECK_S = 5.0
#: The server ends a one-shot run's lock session once it was silent for the run's
#: statement timeout, or this long when that is shorter (seconds; two missed checks).
LOCK_SILENT_MIN_S = 2 * LOCK_CHECK_S


class AccountHold(Protocol):
    """What a write of an account checks inside its transaction, before it commits, to
    prove the account is still this process's: a worker's lease (``leases.Fence``, which
    raises LeaseLost) or a one-shot run's lock (:class:`RunLockSession`, which raises
    DatabaseUnavailable: the write waits for the lock). A process frozen past it and
    woken then writes nothing beside the one that took the account over."""

    async def check(self, conn: asyncpg.Connection) -> None:
        """Return while the account is this process's; raise (rolling back) if not."""
        ...


class RunLockSession:
    """The session holding a one-shot run's lock, which the run's merges check before
    they commit (a worker's check its lease instead: ``leases.Fence``).

    A run frozen (SIGSTOP, a Ctrl-Z in a terminal) kept its account's lock for as long as
    the freeze lasted, and every worker put the account's units back for as long. The
    server now ends the lock session once it is silent past the run's statement timeout
    (:data:`LOCK_SILENT_MIN_S` at least), so the account goes on elsewhere. Woken, the run
    finds the session gone within a check (:data:`LOCK_CHECK_S`) and takes the lock again,
    or stops if another run took it; a merge meanwhile must not land beside that run's,
    both writing the same status change into the history: it waits, as for a database
    restart, until the lock is this run's again. A merge that finds the lock gone wakes
    the watch (:attr:`lost`), which takes it again at once rather than at its next check:
    the merge lands within the run's ``--db-reconnect``."""

    def __init__(self, account: str) -> None:
        self.account = account
        self.name = run_lock_name(account)
        self.pid: int | None = None  # the backend holding the lock; None: no lock taken
        self.lost = asyncio.Event()  # set by a merge that found the lock gone: look now

    async def check(self, conn: asyncpg.Connection) -> None:
        """Return if the lock is this run's (or none was taken: a store used without
        one); else raise DatabaseUnavailable, which runs the merge again after a pause."""
        pid = self.pid
        if pid is None or await conn.fetchval(sql("lease_held"), pid, self.name):
            return
        self.lost.set()
        raise DatabaseUnavailable(
            f"account {self.account!r}: the session holding this run's lock is gone (a "
            "database restart, a cut connection, or this process frozen past its statement "
            "timeout), so a merge did not commit; merges wait for the lock to be taken "
            "again for up to --db-reconnect seconds"
        )

    async def hold(self, conn: asyncpg.Connection) -> None:
        """``conn`` now holds the lock: the session the merges check, ended by the server
        once silent (below PostgreSQL 14 it is not: a frozen run keeps it)."""
        self.pid = int(conn.get_server_pid())
        try:
            await conn.execute(sql("run_lock_idle_timeout"), int(LOCK_SILENT_MIN_S * 1000))
        except asyncpg.UndefinedObjectError:
            log.debug("this server has no idle_session_timeout")
        except CAUGHT as exc:  # the watch finds the session gone, and takes the lock again
            log.debug("could not bound the run lock session's silence: %s", exc)


@asynccontextmanager
async def account_lock(
    pool: asyncpg.Pool,
    account: str,
    purpose: str,
    *,
    wait_s: float = 0.0,
    stop: asyncio.Event | None = None,
    session: RunLockSession | None = None,
) -> AsyncIterator[None]:
    """Hold the account's run lock for the duration. When another run holds it, try again
    for up to ``wait_s`` seconds (a timer started while a serve cycle runs waits for the
    cycle to end), then raise LockBusy naming the holder. ``stop`` set while it waits
    (SIGTERM/SIGINT) ends the wait at once, as a cancellation: nothing ran to drain.

    The lock lives and dies with one session. A session lost mid-run (a database restart
    the run rides out, a cut connection, an administrator's ``pg_terminate_backend``) is
    noticed within :data:`LOCK_CHECK_S` and the lock taken again; if another run took it
    first, this one is stopped (LockBusy): two runs must never merge at once. ``session``
    learns which session holds the lock, for the run's merges to check."""
    name = run_lock_name(account)
    session = session or RunLockSession(account)
    busy = f"account {account!r} is busy: {{holder}} is already running; not starting {purpose}"
    deadline = asyncio.get_running_loop().time() + wait_s
    async with contextlib.AsyncExitStack() as stack:
        waiting = False
        while True:
            try:
                lock = advisory_lock(pool, name, wait=False, purpose=f"asyncsync {purpose}",
                                     busy=busy)  # fmt: skip
                conn = await stack.enter_async_context(lock)
                break
            except LockBusy as exc:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    if wait_s:
                        raise LockBusy(f"{exc} (waited {wait_s:.0f} s)") from None
                    raise
                if not waiting:
                    log.info("%s yet; waiting up to %.0f s for the lock", exc, left)
                    waiting = True
                if stop is None:
                    await asyncio.sleep(min(LOCK_POLL_S, left))
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(LOCK_POLL_S, left))
                if stop.is_set():
                    raise asyncio.CancelledError(f"stopped while waiting for the run lock of "
                                                 f"account {account!r}") from None  # fmt: skip
        if waiting:
            log.info("took the run lock of account %r for %s", account, purpose)
        await session.hold(conn)
        stack.callback(setattr, session, "pid", None)
        owner = asyncio.current_task()
        assert owner is not None
        lost: list[LockBusy] = []
        retake = partial(
            advisory_lock, pool, name, wait=False, purpose=f"asyncsync {purpose}",
            busy=f"account {account!r} lost its run lock mid-{purpose} to {{holder}}: "
            "stopped, so two runs never merge at once",
        )  # fmt: skip
        watch = asyncio.create_task(
            _watch(conn, stack, retake, owner, lost, session), name=f"lock-{name}"
        )
        try:
            yield
        except asyncio.CancelledError:
            if not lost:
                raise
            owner.uncancel()  # the cancellation was the watch's: it becomes the error below
        finally:
            watch.cancel()
            await asyncio.wait([watch])  # a cancellation of this task meanwhile goes on
            if not watch.cancelled() and watch.exception() is not None:
                log.warning("the run lock's watch failed: %s", watch.exception())
        if lost:
            raise lost[0]


async def _watch(
    conn: asyncpg.Connection,
    stack: contextlib.AsyncExitStack,
    retake: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]],
    owner: asyncio.Task[object],
    lost: list[LockBusy],
    session: RunLockSession,
) -> None:
    """Ping the session holding the lock; when it is gone, take the lock again on a new
    one (held by ``stack``, released with the first); when another run holds it, stop
    ``owner``. A merge that found the lock gone (``session.lost``) has it look at once."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.lost.wait(), LOCK_CHECK_S)
        session.lost.clear()
        if not _gone(conn):
            with contextlib.suppress(*CAUGHT):
                await asyncio.wait_for(conn.fetchval(sql("ping")), timeout=LOCK_CHECK_S)
            if not _gone(conn):
                continue  # answered, or slow (a frozen server still holds the lock)
        try:
            conn = await stack.enter_async_context(retake())
        except LockBusy as exc:
            log.error("%s", exc)
            lost.append(exc)
            owner.cancel()
            return
        except DatabaseError as exc:
            log.warning("the session holding the run lock is gone; taking it again: %s", exc)
            continue  # the database is still away: next time
        await session.hold(conn)
        log.warning("the session holding the run lock was lost; the lock is taken again")


def _gone(conn: asyncpg.Connection) -> bool:
    """Whether the session is closed (the pool takes a closed connection back at once)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


async def lock_holder(pool: asyncpg.Pool, account: str) -> str | None:
    """The ``application_name`` of the session holding the account's run lock, if any."""
    query = pool.fetchval(sql("lock_holder"), run_lock_name(account))
    holder = await guarded(query, "reading the run lock")
    return None if holder is None else (str(holder) or "an unnamed session")
