"""The planner: every account to work for has its periodic units on the queue.

A periodic unit re-arms itself when it ends, so the planner only fills gaps: an account
just added or enabled, a unit a second SIGTERM cancelled, one that failed and was held
for inspection. Its dedupe keys make it idempotent (a unit already queued or running is
not added twice), so every worker runs it at start and the queue's schedule runs it
once a minute across all of them.
"""

from __future__ import annotations

import datetime as dt
import logging

from ..clock import utcnow
from ..errors import DatabaseError
from ..options import ServeOptions
from ..seams import WorkQueue
from . import handlers
from .ports import Fleet
from .units import Kind, Unit

log = logging.getLogger(__name__)

#: The planner's tick, as a cron expression.
PLAN_EVERY = "* * * * *"


async def plan(
    fleet: Fleet, queue: WorkQueue, options: ServeOptions, now: dt.datetime | None = None
) -> int:
    """Add the periodic units every account lacks; returns how many were added."""
    now = now or utcnow()
    items = []
    for account, last_integrity in await fleet.plan():
        items.append(Unit(Kind.CYCLE, account).item())
        items.append(Unit(Kind.KEEPALIVE, account).item(handlers.KEEP_ALIVE_EVERY_S))
        every = options.integrity_interval_s
        if every > 0:
            due = (
                every
                if last_integrity is None
                else (last_integrity + dt.timedelta(seconds=every) - now).total_seconds()
            )
            items.append(Unit(Kind.INTEGRITY, account).item(due))
    added = await queue.enqueue(items)
    if added:
        log.info("planned %d units for %d accounts", added, len(items) // 3 or 1,
                 extra={"fields": {"event": "planned", "units": added}})  # fmt: skip
    await queue.prune()
    return added


async def cycle_due_now(queue: WorkQueue, account: str) -> bool:
    """The account's cycle due at once, when it waits on the queue for its next interval:
    a person has just authorized the account again, and a cycle its refused token failed
    went back to the queue for an interval (or a worker's backoff). Whether one was made
    due; never an error (the tokens are stored: the cycle comes at its time anyway)."""
    try:
        return bool(await queue.hurry(keys=[Unit(Kind.CYCLE, account).dedupe_key]))
    except DatabaseError as exc:
        if exc.sqlstate != "42P01":  # undefined_table: no worker installed the queue yet
            log.warning("account %s's next cycle stays due at its time: %s", account, exc)
        return False
