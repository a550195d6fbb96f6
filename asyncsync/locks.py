"""One run per account at a time: a PostgreSQL session advisory lock.

A backfill and an incremental sync of the same account must never interleave their
merges (history rows would race), and a second backfill started by mistake must say
so and exit rather than queue behind the first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from .database import guarded
from .errors import LockBusy


@asynccontextmanager
async def account_lock(pool: asyncpg.Pool, account: str, purpose: str) -> AsyncIterator[None]:
    """Hold the account's run lock for the duration; raise LockBusy if another run has it.

    The holder's purpose is recorded in ``application_name`` so the refusal can say who.
    """
    key = f"asyncsync.run:{account}"
    async with pool.acquire() as conn:
        got = await guarded(
            conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key), "taking the run lock"
        )
        if not got:
            holder = await conn.fetchval(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.objid::bigint = (hashtext($1)::bigint & 4294967295) "
                "AND a.pid <> pg_backend_pid() LIMIT 1",
                key,
            )
            who = holder or "another asyncsync process"
            raise LockBusy(
                f"account {account!r} is busy: {who} is already running; not starting {purpose}"
            )
        await conn.execute(
            "SELECT set_config('application_name', $1, false)", f"asyncsync {purpose}"
        )
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
            await conn.execute("RESET application_name")
