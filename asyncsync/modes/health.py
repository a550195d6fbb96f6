"""``--mode health``: exit 0 when the mirror was synced recently, 1 otherwise.

For container health checks and monitoring (the seed's ``--health``): the database must
answer, and the last sync or cycle must be younger than three intervals (at least an hour).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from ..config import Settings
from ..database import guarded, open_database, sql
from ..errors import DatabaseError


async def run(settings: Settings, *, args: Any = None, stop: asyncio.Event) -> int:
    """Print one line and return the exit code."""
    async with open_database(settings.database_url, settings.data_dir, apply_schema=False) as pool:
        try:
            last = await guarded(pool.fetchval(sql("health"), settings.account), "health")
        except DatabaseError as exc:
            if exc.sqlstate != "42P01":  # undefined_table
                raise
            print("unhealthy: the database has no asyncsync schema (run --mode migrate)")
            return 1
    limit = dt.timedelta(seconds=max(3 * settings.interval_s, 3600))
    if last is None:
        print(f"unhealthy: account {settings.account!r} has never been synced")
        return 1
    age = dt.datetime.now(dt.UTC) - last
    state = "healthy" if age <= limit else "unhealthy"
    print(f"{state}: last sync {int(age.total_seconds() // 60)} min ago (limit {limit})")
    return 0 if age <= limit else 1
