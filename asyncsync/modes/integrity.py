"""``--mode integrity``: compare the mirror with the API and fix it; see
:mod:`asyncsync.jobs.integrity`. Exit 0 when consistent or fixed, 1 when something could
not be fixed."""

from __future__ import annotations

import asyncio

from ..jobs.integrity import check_integrity
from ..options import CommonOptions, IntegrityOptions
from ..report import RunReport
from ..runtime import open_runtime


async def run(common: CommonOptions, options: IntegrityOptions, stop: asyncio.Event) -> RunReport:
    """Check the account's mirror, under its run lock."""
    async with (
        open_runtime(common, stop=stop) as rt,
        rt.store.lock("integrity", wait_s=common.run.wait_lock_s, stop=stop),
    ):
        store = rt.store
        return await check_integrity(
            rt.client, store.orders, store.integrity, store.failures, rt.context(stop),
            deep=options.deep, page_size=options.page_size,
        )  # fmt: skip
