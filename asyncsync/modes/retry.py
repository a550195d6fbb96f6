"""``--mode retry``: import again the failures whose backoff has run out; see
:mod:`asyncsync.jobs.retry`. Exit 1 when failures wait for manual review, 5 when Tiny
answered none of the details it was asked for, else 0."""

from __future__ import annotations

import asyncio

from ..jobs.retry import retry_due
from ..options import CommonOptions, RetryOptions
from ..report import RunReport
from ..runtime import open_runtime


async def run(common: CommonOptions, options: RetryOptions, stop: asyncio.Event) -> RunReport:
    """Retry what is due, under the account's run lock."""
    async with (
        open_runtime(common, stop=stop) as rt,
        rt.store.lock("retry", wait_s=common.run.wait_lock_s, stop=stop),
    ):
        store = rt.store
        return await retry_due(
            rt.client, store.orders, store.failures, rt.context(stop), outage_if_unanswered=True
        )
