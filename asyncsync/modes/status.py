"""``asyncsync status``: what an operator asks without reading logs — per account, the last
run of each mode and how it ended, freshness, the mirror by status, the detail backlog,
failures waiting and left for a person, token ages, the quota seen, who holds the lock.

Tables on a terminal, one JSON document with ``--json`` (or JSON logs). Reads the
database only: no Tiny credentials needed. Exit 0, or 1 when an account is stale.
"""

from __future__ import annotations

import asyncio

from rich.console import Group

from ..clock import iso, utcnow
from ..jobs.retry import DEFAULT_POLICY
from ..options import CommonOptions, StatusOptions
from ..overview import render_status, status_dict
from ..runtime import database_of
from . import show


async def run(common: CommonOptions, options: StatusOptions, stop: asyncio.Event) -> int:
    """Print the status of ``--account`` (or of every account) and return the exit code."""
    now = utcnow()
    async with database_of(common, apply_schema=False) as database:
        accounts = await database.accounts() if options.all_accounts else [common.account]
        states = [
            await database.account(account).status(now, DEFAULT_POLICY) for account in accounts
        ]
    data = {
        "as_of": iso(now),
        "accounts": [status_dict(s, options.interval_s) for s in states],
    }
    show(Group(*(render_status(s, options.interval_s) for s in states)), data, common)
    return 0 if all(s.fresh(options.interval_s) for s in states) else 1
