"""``--mode retry``: import again the failures whose backoff has run out (seed section 6.2)."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from .. import metrics
from ..config import Settings
from ..locks import account_lock
from ..retry import retry_due
from ..runtime import open_runtime
from .integrity import write_json


async def run(
    settings: Settings, *, args: object = None, stop: asyncio.Event, stream: TextIO = sys.stdout
) -> int:
    """Entry point of ``--mode retry``: 1 when failures wait for manual review, else 0."""
    async with open_runtime(settings) as rt, account_lock(rt.pool, settings.account, "retry"):
        report = await retry_due(rt, stop=stop)
    stream.write(report.render() + "\n")
    json_path = getattr(args, "json_path", None)
    if json_path:
        await asyncio.to_thread(write_json, json_path, report.to_json())
    metrics.RUN_SECONDS.labels("retry").observe(report.duration_s)
    return report.exit_code
