"""``--mode health``: exit 0 when the mirror was synced recently, 1 otherwise.

For container health checks and monitoring: the database must answer, the last serve
cycle must not have failed (a Tiny outage, a database error: the reason is printed), the
account must not wait for a person to authorize it again (its last sync refused and no
tokens stored since), and the last successful sync or cycle must be younger than three
intervals (at least an hour).
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
from ..overview import (
    RunSummary,
    awaits_authorization,
    freshness_limit,
    in_minutes,
    reauthorization_problem,
)
from ..runtime import database_of, known_account, schema_missing
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
            try:
                if options.all_accounts:
                    keys = [c.key for c in await database.registry.all() if c.enabled]
                else:
                    keys = [common.account]
                    if await known_account(database, common.account) == "disabled":
                        print(f"unhealthy: account {common.account!r} is disabled: no worker "
                              f"syncs it (asyncsync accounts enable {common.account})")  # fmt: skip
                        return 1
                said = []
                for key in keys:
                    store = database.account(key)
                    last_runs, _ = await store.runs.latest()
                    waiting = awaits_authorization(last_runs.get("sync"), await store.tokens.ages())
                    last = await store.metadata.last_synced()
                    serve = await store.metadata.get(SERVE_HEALTH_KEY)
                    said.append((last, serve, waiting, _failed(last_runs.get("sync"))))
            except DatabaseError as exc:
                if exc.sqlstate != "42P01":  # undefined_table
                    raise
                print(f"unhealthy: {await schema_missing(database)}")
                return 1
    except DatabaseUnavailable as exc:
        print(f"unhealthy: {exc}")
        return 1
    if not keys:
        print("unhealthy: the accounts table has no enabled account")
        return 1
    verdicts = [judge(key, *state, limit) for key, state in zip(keys, said, strict=True)]
    for key, (_, line) in zip(keys, verdicts, strict=True):
        print(f"account {key}: {line}" if options.all_accounts else line)
    return 0 if all(healthy for healthy, _ in verdicts) else 1


def _failed(run: RunSummary | None) -> str | None:
    """The error of ``run``, the account's latest sync, when it failed."""
    if run is None or run.outcome != "failed":
        return None
    return run.errors[0] if run.errors else "no error recorded"


def judge(
    account: str,
    last: dt.datetime | None,
    serve: str | None,
    waiting: bool,
    failed: str | None,
    limit: dt.timedelta,
) -> tuple[bool, str]:
    """Whether one account is healthy (its last success, what serve said of its last
    cycle, whether it waits for a person: :func:`~asyncsync.overview.awaits_authorization`),
    and the line that says why. A refused token a person has since authorized again is
    no longer a reason: the account waits for its next cycle, judged on freshness."""
    said = orjson.loads(serve) if serve else {}
    problem = said.get("problem") if said.get("ok") is False else None
    refused = reauthorization_problem(account)
    if problem == refused and not waiting:  # authorized since: on to its next cycle
        problem = None
    if waiting and problem != refused:  # a one-shot sync's refusal: serve said nothing
        return False, f"unhealthy: {refused}"
    if problem is not None:
        return False, f"unhealthy: {problem} (at {said.get('at')})"
    if last is None:
        # A run that failed before serve could say anything (a secret this worker cannot
        # read, a one-shot sync): its error, not "never synced" alone.
        why = f"; its last sync failed: {failed}" if failed else ""
        return False, f"unhealthy: account {account!r} has never been synced{why}"
    age = utcnow() - last
    healthy = age <= limit
    state = "healthy" if healthy else "unhealthy"
    return healthy, f"{state}: last sync {in_minutes(age)} ago (limit {in_minutes(limit)})"
