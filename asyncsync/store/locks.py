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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from ..errors import LockBusy
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


@asynccontextmanager
async def account_lock(
    pool: asyncpg.Pool, account: str, purpose: str, *, wait_s: float = 0.0
) -> AsyncIterator[None]:
    """Hold the account's run lock for the duration. When another run holds it, try again
    for up to ``wait_s`` seconds (a timer started while a serve cycle runs waits for the
    cycle to end), then raise LockBusy naming the holder."""
    name = run_lock_name(account)
    busy = f"account {account!r} is busy: {{holder}} is already running; not starting {purpose}"
    deadline = asyncio.get_running_loop().time() + wait_s
    async with contextlib.AsyncExitStack() as stack:
        waiting = False
        while True:
            try:
                lock = advisory_lock(pool, name, wait=False, purpose=f"asyncsync {purpose}",
                                     busy=busy)  # fmt: skip
                await stack.enter_async_context(lock)
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
                await asyncio.sleep(min(LOCK_POLL_S, left))
        if waiting:
            log.info("took the run lock of account %r for %s", account, purpose)
        yield


async def lock_holder(pool: asyncpg.Pool, account: str) -> str | None:
    """The ``application_name`` of the session holding the account's run lock, if any."""
    query = pool.fetchval(sql("lock_holder"), run_lock_name(account))
    holder = await guarded(query, "reading the run lock")
    return None if holder is None else (str(holder) or "an unnamed session")
