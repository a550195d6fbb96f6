"""One run per account at a time: a PostgreSQL session advisory lock.

A backfill and an incremental sync of the same account must never interleave their
merges (history rows would race), and a second backfill started by mistake must say
so and exit rather than queue behind the first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from .database import guarded, sql
from .errors import LockBusy


@asynccontextmanager
async def account_lock(pool: asyncpg.Pool, account: str, purpose: str) -> AsyncIterator[None]:
    """Hold the account's run lock for the duration; raise LockBusy if another run has it.

    The holder's purpose is recorded in ``application_name`` so the refusal can say who.
    """
    key = f"asyncsync.run:{account}"
    async with pool.acquire() as conn:
        if not await guarded(conn.fetchval(sql("lock_try"), key), "taking the run lock"):
            holder = await conn.fetchval(sql("lock_holder"), key)
            who = holder or "another asyncsync process"
            raise LockBusy(
                f"account {account!r} is busy: {who} is already running; not starting {purpose}"
            )
        await conn.execute(sql("set_application_name"), f"asyncsync {purpose}")
        try:
            yield
        finally:
            await conn.execute(sql("lock_release"), key)
            await conn.execute(sql("reset_application_name"))
