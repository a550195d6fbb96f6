"""``--mode health``: exit 0 when the mirror was synced recently, 1 otherwise.

For container health checks and monitoring: the database must answer, the last serve
cycle must not have failed (a Tiny outage, a database error: the reason is printed), and
the last successful sync or cycle must be younger than three intervals (at least an hour).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import orjson

from ..clock import utcnow
from ..errors import DatabaseError, DatabaseUnavailable
from ..options import CommonOptions, HealthOptions
from ..runtime import database_of
from . import SERVE_HEALTH_KEY


async def run(common: CommonOptions, options: HealthOptions, stop: asyncio.Event) -> int:
    """Print one line and return the exit code."""
    quick = dataclasses.replace(common.database, reconnect_s=0.0, statement_timeout_s=10.0)
    try:
        async with database_of(
            dataclasses.replace(common, database=quick), apply_schema=False
        ) as database:
            metadata = database.account(common.account).metadata
            last = await metadata.last_synced()
            serve = await metadata.get(SERVE_HEALTH_KEY)
    except DatabaseUnavailable as exc:
        print(f"unhealthy: {exc}")
        return 1
    except DatabaseError as exc:
        if exc.sqlstate != "42P01":  # undefined_table
            raise
        print("unhealthy: the database has no asyncsync schema (run --mode migrate)")
        return 1
    said = orjson.loads(serve) if serve else {}
    if said.get("ok") is False:
        print(f"unhealthy: {said.get('problem')} (at {said.get('at')})")
        return 1
    limit = dt.timedelta(seconds=max(3 * options.interval_s, 3600))
    if last is None:
        print(f"unhealthy: account {common.account!r} has never been synced")
        return 1
    age = utcnow() - last
    state = "healthy" if age <= limit else "unhealthy"
    print(f"{state}: last sync {int(age.total_seconds() // 60)} min ago (limit {limit})")
    return 0 if age <= limit else 1
