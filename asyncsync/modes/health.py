"""``--mode health``: exit 0 when the mirror was synced recently, 1 otherwise.

For container health checks and monitoring: the database must answer, the last serve
cycle must not have failed (a Tiny outage, a database error: the reason is printed), and
the last successful sync or cycle must be younger than three intervals (at least an hour).
With ``--all-accounts``, every enabled account of the accounts table is judged so, a line
each, and the exit code is 1 when any of them is unhealthy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import orjson

from ..clock import utcnow
from ..errors import DatabaseError, DatabaseUnavailable
from ..options import CommonOptions, HealthOptions
from ..overview import freshness_limit, in_minutes
from ..runtime import database_of
from . import SERVE_HEALTH_KEY


async def run(common: CommonOptions, options: HealthOptions, stop: asyncio.Event) -> int:
    """Print one line (a line per account) and return the exit code."""
    quick = dataclasses.replace(common.database, reconnect_s=0.0, statement_timeout_s=10.0)
    limit = freshness_limit(options.interval_s)
    try:
        async with database_of(
            dataclasses.replace(common, database=quick),
            stop=stop,
            apply_schema=False,
            staging=False,
        ) as database:
            if options.all_accounts:
                keys = [c.key for c in await database.registry.all() if c.enabled]
            else:
                keys = [common.account]
            said = []
            for key in keys:
                metadata = database.account(key).metadata
                said.append((await metadata.last_synced(), await metadata.get(SERVE_HEALTH_KEY)))
    except DatabaseUnavailable as exc:
        print(f"unhealthy: {exc}")
        return 1
    except DatabaseError as exc:
        if exc.sqlstate != "42P01":  # undefined_table
            raise
        print("unhealthy: the database has no asyncsync schema (run --mode migrate)")
        return 1
    if not keys:
        print("unhealthy: the accounts table has no enabled account")
        return 1
    verdicts = [
        judge(key, last, serve, limit) for key, (last, serve) in zip(keys, said, strict=True)
    ]
    for key, (_, line) in zip(keys, verdicts, strict=True):
        print(f"account {key}: {line}" if options.all_accounts else line)
    return 0 if all(healthy for healthy, _ in verdicts) else 1


def judge(
    account: str, last: dt.datetime | None, serve: str | None, limit: dt.timedelta
) -> tuple[bool, str]:
    """Whether one account is healthy (its last success, what serve said of its last
    cycle), and the line that says why."""
    said = orjson.loads(serve) if serve else {}
    if said.get("ok") is False:
        return False, f"unhealthy: {said.get('problem')} (at {said.get('at')})"
    if last is None:
        return False, f"unhealthy: account {account!r} has never been synced"
    age = utcnow() - last
    healthy = age <= limit
    state = "healthy" if healthy else "unhealthy"
    return healthy, f"{state}: last sync {in_minutes(age)} ago (limit {in_minutes(limit)})"
