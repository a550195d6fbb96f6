"""``asyncsync status``: what an operator asks without reading logs — per account, the last
run of each mode and how it ended, freshness, the mirror by status, the detail backlog,
failures waiting and left for a person, token ages, the quota seen, who holds the lock
(a worker, while it runs the account's units) — and the work queue: units queued, due
later and running, by kind — and the serve workers seen lately, with each setting every
worker must share that they do not (``workers_disagree``).

Tables on a terminal (``--all-accounts``: a line an account, each one's tables with
``--full``), one JSON document with ``--json`` (or JSON logs), whole whatever the flags.
Reads the database only: no Tiny credentials needed. Exit 0, or 1 when an account is
stale (one disabled or removed, that no worker keeps fresh, is shown as such and not
counted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from rich.console import Group, RenderableType
from rich.text import Text

from ..accounts import not_served
from ..agreement import SEEN_WITHIN_S, Split, WorkerSettings, splits
from ..clock import iso, utcnow
from ..errors import DatabaseError
from ..jobs.retry import DEFAULT_POLICY
from ..options import CommonOptions, StatusOptions
from ..overview import render_status, render_summary, status_dict
from ..runtime import database_of, known_account, schema_missing
from ..seams import QueueCount
from ..tables import table
from . import show

T = TypeVar("T")


async def run(common: CommonOptions, options: StatusOptions, stop: asyncio.Event) -> int:
    """Print the status of ``--account`` (or of every account) and return the exit code."""
    now = utcnow()
    async with database_of(common, stop=stop, apply_schema=False, staging=False) as database:
        try:
            accounts = await database.accounts() if options.all_accounts else [common.account]
            states = [
                await database.account(account).status(now, DEFAULT_POLICY) for account in accounts
            ]
            # A stale one no worker keeps fresh is no reason to exit 1.
            unserved = not_served(accounts, await database.registry.all())
            if not options.all_accounts:
                await known_account(database, common.account)
        except DatabaseError as exc:
            if exc.sqlstate != "42P01":  # undefined_table
                raise
            # Said where a status goes (--json PATH, JSON logs), as a document without
            # accounts: never an earlier healthy one left in its place.
            said = await schema_missing(database)
            show(said, {"as_of": iso(now), "error": said}, common)
            return 1
        whose = None if options.all_accounts else common.account
        queue = await _unless_missing(database.queue.census(whose))
        workers = await _unless_missing(database.workers.seen(SEEN_WITHIN_S))
    split = splits(workers)
    data = {
        "as_of": iso(now),
        "accounts": [status_dict(s, options.interval_s, unserved.get(s.account)) for s in states],
        "queue": [c.as_dict() for c in queue],
        "workers": [vars(w) for w in workers],
        "workers_disagree": [s.as_dict() for s in split],
    }
    parts: list[RenderableType] = (
        [render_summary(states, options.interval_s, unserved)]
        if options.all_accounts and not options.full
        else [render_status(s, options.interval_s, unserved.get(s.account)) for s in states]
    )
    parts.append(render_queue(queue, "every account" if options.all_accounts else common.account))
    if workers:
        parts.append(render_workers(workers, split))
    show(Group(*parts), data, common)
    served = [s for s in states if s.account not in unserved]
    return 0 if all(s.fresh(options.interval_s) for s in served) else 1


async def _unless_missing(read: Awaitable[list[T]]) -> list[T]:
    """What ``read`` reads; nothing when its table is not there yet (the queue's before
    migrate creates them, ``worker_settings`` in a database whose schema predates it)."""
    try:
        return await read
    except DatabaseError as exc:
        if exc.sqlstate == "42P01":  # undefined_table
            return []
        raise


def render_workers(workers: list[WorkerSettings], split: list[Split]) -> RenderableType:
    """How many serve workers run, and each setting they do not share."""
    ran = f"serve workers seen in the last {SEEN_WITHIN_S:.0f} s: {len(workers)}"
    if not split:
        return Text(ran + (", their settings agree" if len(workers) > 1 else ""))
    lines = [Text(ran)] + [Text(f"  {s.sentence()}", style="bold red") for s in split]
    return Group(*lines)


def render_queue(counts: list[QueueCount], whose: str) -> RenderableType:
    """The work queue as a table: units by kind and state, and the oldest one's age."""
    if not counts:
        return Text(f"work queue ({whose}): empty")
    rows = [[c.kind.removeprefix("asyncsync."), c.state, c.units,
             "-" if c.oldest_s is None else f"{c.oldest_s:,.0f} s"] for c in counts]  # fmt: skip
    return table(["unit", "state", "units", "oldest"], rows, title=f"work queue ({whose})")
