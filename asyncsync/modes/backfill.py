"""``--mode backfill``: the historical load, parallel, checkpointed and resumable; see
:mod:`asyncsync.jobs.backfill`. The account's run lock keeps a backfill and a sync (or
a second backfill) from interleaving.

With ``--enqueue`` the months go on the work queue instead, one unit each (newest
first), and the serve workers run them in the background slots (``--background-slots``
across every worker), each month checkpointed like here; the orders' details are then
fetched by the account's cycles."""

from __future__ import annotations

import asyncio

from ..clock import tiny_today
from ..errors import ConfigError
from ..jobs.backfill import backfill
from ..jobs.backfill_plan import month_range, resolve_range
from ..options import BackfillOptions, CommonOptions
from ..report import RunReport
from ..runtime import database_of, open_runtime
from ..work.units import Kind, Unit
from . import show


async def enqueue(common: CommonOptions, options: BackfillOptions, stop: asyncio.Event) -> int:
    """Put the account's months on the work queue; returns the exit code."""
    first, last = resolve_range(options.date_from, options.date_to, tiny_today())
    months = list(reversed(month_range(first, last)))
    units = [Unit(Kind.BACKFILL, common.account, month) for month in months]
    async with database_of(common, stop=stop) as database:
        registry = database.registry
        if not await registry.none():
            if await registry.get(common.account) is None:
                # The workers serve the table's rows alone: they would drop every month.
                raise ConfigError(
                    f"--account {common.account!r} is not in the accounts table, whose "
                    "accounts alone the workers serve (asyncsync accounts list, or accounts "
                    "add it first)"
                )
        else:
            # No table: each worker serves its own --account, which ran here (its first
            # cycle is a full sync); a key nothing ran for, where others ran, is a typo.
            ran = await database.accounts()
            if ran and common.account not in ran:
                raise ConfigError(
                    f"--account {common.account!r}: nothing ran for it here, and the workers "
                    f"of this database (no accounts table rows) serve their own --account: "
                    f"{', '.join(sorted(ran))} (or start its worker first)"
                )
        added = await database.queue.enqueue([u.item() for u in units])
    said = (f"account {common.account}: {added} of {len(units)} months of backfill "
            f"({first:%Y-%m}..{last:%Y-%m}) enqueued for the workers")  # fmt: skip
    if added < len(units):
        said += f"; {len(units) - added} were already queued or running"
    show(said, {"account": common.account, "months": len(units), "enqueued": added}, common)
    return 0


async def run(
    common: CommonOptions, options: BackfillOptions, stop: asyncio.Event
) -> RunReport | int:
    """Backfill the account's months, under its run lock (or enqueue them)."""
    resolve_range(options.date_from, options.date_to, tiny_today())  # before connecting
    if options.enqueue:
        return await enqueue(common, options, stop)
    async with (
        open_runtime(common, stop=stop) as rt,
        rt.store.lock("backfill", wait_s=common.run.wait_lock_s, stop=stop),
    ):
        store = rt.store
        return await backfill(rt.client, store.orders, store.metadata, options, rt.context(stop))
