"""``--mode backfill``: the historical load, parallel, checkpointed and resumable; see
:mod:`asyncsync.jobs.backfill`. The account's run lock keeps a backfill and a sync (or
a second backfill) from interleaving."""

from __future__ import annotations

import asyncio

from ..jobs.backfill import backfill
from ..options import BackfillOptions, CommonOptions
from ..report import RunReport
from ..runtime import open_runtime


async def run(common: CommonOptions, options: BackfillOptions, stop: asyncio.Event) -> RunReport:
    """Backfill the account's months, under its run lock."""
    async with open_runtime(common) as rt, rt.store.lock("backfill", wait_s=common.run.wait_lock_s):
        store = rt.store
        return await backfill(rt.client, store.orders, store.metadata, options, rt.context(stop))
