"""``--mode migrate``: apply ``schema.sql`` and install the work queue's tables
(idempotent), then exit."""

from __future__ import annotations

import asyncio

from ..options import CommonOptions, MigrateOptions
from ..runtime import database_of


async def run(common: CommonOptions, options: MigrateOptions, stop: asyncio.Event) -> int:
    """Create or update the schema, the work queue's tables included."""
    async with database_of(common) as database:
        await database.queue.install()
    print("schema is up to date")
    return 0
