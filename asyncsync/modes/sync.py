"""``--mode sync``: a full sync the first time (or with ``--full``), an incremental cycle
after; see :mod:`asyncsync.jobs.sync`."""

from __future__ import annotations

import asyncio

from ..jobs.sync import sync_once
from ..options import CommonOptions, SyncOptions
from ..report import RunReport
from ..runtime import open_runtime


async def run(common: CommonOptions, options: SyncOptions, stop: asyncio.Event) -> RunReport:
    """Sync the account once, under its run lock."""
    cycle = options.cycle
    async with (
        open_runtime(common, open_statuses=cycle.open_statuses, stop=stop) as rt,
        rt.store.lock("sync", wait_s=common.run.wait_lock_s, stop=stop),
    ):
        store = rt.store
        return await sync_once(
            rt.client, store.orders, store.metadata, cycle, rt.context(stop), full=options.full
        )
